// yaml2json reads a stream of YAML documents (helm template's output) on stdin and writes them as
// one JSON array on stdout, converted the way the Kubernetes API machinery converts manifests
// (sigs.k8s.io/yaml). Empty documents are dropped. The chart's property tests
// (helm/tests/test_chart.py) read this, so they need no YAML library.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

func main() {
	r := utilyaml.NewYAMLReader(bufio.NewReader(os.Stdin))
	docs := []json.RawMessage{}
	for {
		doc, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "yaml2json:", err)
			os.Exit(1)
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			fmt.Fprintln(os.Stderr, "yaml2json:", err)
			os.Exit(1)
		}
		if t := bytes.TrimSpace(js); len(t) == 0 || string(t) == "null" {
			continue
		}
		docs = append(docs, js)
	}
	out, err := json.Marshal(docs)
	if err != nil {
		fmt.Fprintln(os.Stderr, "yaml2json:", err)
		os.Exit(1)
	}
	os.Stdout.Write(append(out, '\n'))
}
