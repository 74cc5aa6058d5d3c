// dashboard-check decodes Grafana dashboard JSON files strictly into the dashboard type of
// Grafana's own Go SDK (github.com/grafana/grafana-foundation-sdk/go, generated from Grafana's
// dashboard schema): a field the schema does not have, or a value of the wrong type, anywhere in
// the dashboard, its panels (rows' nested panels included), their Prometheus queries, their
// plugin options and field configs, fails the file.
//
// Usage: dashboard-check FILE...   (exit 0: every file decodes; 1: a file does not; 2: usage)
//
// The files are Grafana's export format for import: the import envelope (`__inputs`,
// `__requires`, `__elements`) is not part of the dashboard model and is checked on its own here.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// envelopeKeys are the keys of each entry of the import envelope's lists (Grafana's export
// format), matched exactly.
var envelopeKeys = map[string]map[string]bool{
	"__inputs":   {"name": true, "label": true, "description": true, "type": true, "pluginId": true, "pluginName": true},
	"__requires": {"type": true, "id": true, "name": true, "version": true},
}

// checkEnvelope checks the import envelope: lists of objects with known string fields, and
// `__elements` (library panels) an object.
func checkEnvelope(top map[string]json.RawMessage) []string {
	var found []string
	for list, keys := range envelopeKeys {
		raw, ok := top[list]
		if !ok {
			continue
		}
		var entries []map[string]json.RawMessage
		if err := json.Unmarshal(raw, &entries); err != nil {
			found = append(found, list+": "+err.Error())
			continue
		}
		for i, e := range entries {
			for k, v := range e {
				var text string
				if !keys[k] {
					found = append(found, fmt.Sprintf("%s[%d]: unexpected field '%s'", list, i, k))
				} else if err := json.Unmarshal(v, &text); err != nil {
					found = append(found, fmt.Sprintf("%s[%d].%s: %v", list, i, k, err))
				}
			}
		}
	}
	if raw, ok := top["__elements"]; ok {
		var elements map[string]json.RawMessage
		if err := json.Unmarshal(raw, &elements); err != nil {
			found = append(found, "__elements: "+err.Error())
		}
	}
	return found
}

// problems lists the errors of a strict decode. (The SDK's decoders return their error list
// even when it is empty: an empty list is no error.)
func problems(prefix string, err error) []string {
	var list cog.BuildErrors
	if errors.As(err, &list) {
		out := make([]string, 0, len(list))
		for _, e := range list {
			out = append(out, prefix+e.Error())
		}
		return out
	}
	if err != nil {
		return []string{prefix + err.Error()}
	}
	return nil
}

// check returns every problem of one dashboard file's contents.
func check(raw []byte) []string {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return []string{err.Error()}
	}
	found := checkEnvelope(top)
	for _, k := range []string{"__inputs", "__requires", "__elements"} {
		delete(top, k)
	}
	model, _ := json.Marshal(top)
	var d dashboard.Dashboard
	found = append(found, problems("", d.UnmarshalJSONStrict(model))...)
	// The SDK decodes a panel's fieldConfig leniently apart from its plugin's `custom` part:
	// decode each one strictly on its own.
	var panels struct {
		Panels []json.RawMessage `json:"panels"`
	}
	_ = json.Unmarshal(model, &panels)
	return append(found, fieldConfigs("panels", panels.Panels)...)
}

func fieldConfigs(path string, panels []json.RawMessage) []string {
	var found []string
	for i, raw := range panels {
		var p struct {
			Type        string            `json:"type"`
			FieldConfig json.RawMessage   `json:"fieldConfig"`
			Panels      []json.RawMessage `json:"panels"`
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			continue // reported by the dashboard's decode
		}
		here := fmt.Sprintf("%s[%d]", path, i)
		if len(p.FieldConfig) > 0 && string(p.FieldConfig) != "null" {
			var fc dashboard.FieldConfigSource
			found = append(found, problems(here+".fieldConfig.", fc.UnmarshalJSONStrict(p.FieldConfig))...)
		}
		found = append(found, fieldConfigs(here+".panels", p.Panels)...)
	}
	return found
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dashboard-check FILE...")
		os.Exit(2)
	}
	// the panel (timeseries, stat, …) and data source (prometheus, …) types, so that options,
	// custom field configs and queries are decoded strictly too
	plugins.RegisterDefaultPlugins()
	failed := false
	for _, path := range os.Args[1:] {
		raw, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			failed = true
			continue
		}
		if found := check(raw); len(found) > 0 {
			failed = true
			fmt.Printf("%s: not a valid Grafana dashboard:\n  %s\n", path, strings.Join(found, "\n  "))
		} else {
			fmt.Printf("%s: ok\n", path)
		}
	}
	if failed {
		os.Exit(1)
	}
}
