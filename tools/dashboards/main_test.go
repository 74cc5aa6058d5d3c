package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
)

// A small dashboard in the shape of observability/dashboards/*.json: an import envelope, a row,
// a timeseries and a stat panel with Prometheus queries.
const base = `{
  "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "description": "", "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}],
  "__elements": {},
  "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"}],
  "annotations": {"list": []},
  "editable": true,
  "links": [{"asDropdown": true, "includeVars": false, "keepTime": true, "tags": ["switchboard"], "targetBlank": false, "title": "Switchboard", "type": "dashboards", "icon": "external link", "tooltip": ""}],
  "panels": [
    {"type": "row", "title": "Row", "id": 1, "collapsed": false, "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0}, "panels": []},
    {
      "type": "timeseries", "title": "Lag", "description": "", "id": 2,
      "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"},
      "gridPos": {"h": 8, "w": 12, "x": 0, "y": 1},
      "targets": [{"datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, "refId": "A", "expr": "max by (shard) (sb_mariadb_replica_lag_seconds)", "legendFormat": "shard {{shard}}", "range": true, "instant": false}],
      "fieldConfig": {"defaults": {"unit": "s", "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never", "spanNulls": false}}, "overrides": []},
      "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": true, "calcs": []}, "tooltip": {"mode": "multi", "sort": "none"}}
    },
    {
      "type": "stat", "title": "Up", "id": 3,
      "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"},
      "gridPos": {"h": 4, "w": 6, "x": 12, "y": 1},
      "targets": [{"datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, "refId": "A", "expr": "sum(up)", "instant": true, "range": false}],
      "fieldConfig": {"defaults": {"unit": "none"}, "overrides": []},
      "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": false}, "colorMode": "value", "graphMode": "area", "textMode": "auto", "justifyMode": "auto", "orientation": "auto", "wideLayout": true, "showPercentChange": false, "percentChangeColorMode": "standard"}
    }
  ],
  "refresh": "30s",
  "schemaVersion": 39,
  "tags": ["switchboard"],
  "templating": {"list": []},
  "time": {"from": "now-1h", "to": "now"},
  "timepicker": {},
  "timezone": "",
  "title": "Test",
  "uid": "sb-test",
  "version": 1
}`

func init() { plugins.RegisterDefaultPlugins() }

// broken is base with `edit` applied to its decoded form.
func broken(t *testing.T, edit func(d map[string]any)) []byte {
	t.Helper()
	var d map[string]any
	if err := json.Unmarshal([]byte(base), &d); err != nil {
		t.Fatal(err)
	}
	edit(d)
	raw, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func panel(d map[string]any, i int) map[string]any {
	return d["panels"].([]any)[i].(map[string]any)
}

func sub(m map[string]any, keys ...string) map[string]any {
	for _, k := range keys {
		m = m[k].(map[string]any)
	}
	return m
}

func TestTheBaseDashboardDecodes(t *testing.T) {
	if found := check([]byte(base)); len(found) > 0 {
		t.Fatalf("%v", found)
	}
}

func TestEveryDefectFailsTheDecode(t *testing.T) {
	cases := []struct {
		name string
		edit func(d map[string]any)
		want string
	}{
		{"unknown dashboard field", func(d map[string]any) { d["refreshRate"] = "5s" }, "unexpected field 'refreshRate'"},
		{"wrong dashboard type", func(d map[string]any) { d["schemaVersion"] = "39" }, "schemaVersion"},
		{"unknown panel field", func(d map[string]any) { panel(d, 1)["gridpos"] = map[string]any{} }, "unexpected field 'gridpos'"},
		{"wrong gridPos type", func(d map[string]any) { sub(panel(d, 1), "gridPos")["h"] = "8" }, "gridPos"},
		{"unknown query field", func(d map[string]any) {
			q := panel(d, 1)["targets"].([]any)[0].(map[string]any)
			q["exprr"] = q["expr"]
		}, "exprr"},
		{"wrong query type", func(d map[string]any) {
			panel(d, 2)["targets"].([]any)[0].(map[string]any)["instant"] = "yes"
		}, "instant"},
		{"unknown legend option", func(d map[string]any) { sub(panel(d, 1), "options", "legend")["placment"] = "right" }, "placment"},
		{"unknown stat option", func(d map[string]any) { sub(panel(d, 2), "options")["colourMode"] = "value" }, "colourMode"},
		{"unknown field config key", func(d map[string]any) { sub(panel(d, 1), "fieldConfig", "defaults")["unti"] = "s" }, "unti"},
		{"wrong custom field config type", func(d map[string]any) {
			sub(panel(d, 1), "fieldConfig", "defaults", "custom")["lineWidth"] = "1"
		}, "lineWidth"},
		{"unknown field in a row's panel", func(d map[string]any) {
			inner := map[string]any{}
			for k, v := range panel(d, 2) {
				inner[k] = v
			}
			inner["titel"] = "x"
			panel(d, 0)["panels"] = []any{inner}
		}, "titel"},
		{"unknown import input field", func(d map[string]any) {
			d["__inputs"].([]any)[0].(map[string]any)["plugin_id"] = "prometheus"
		}, "plugin_id"},
		{"an import input field in other case", func(d map[string]any) {
			in := d["__inputs"].([]any)[0].(map[string]any)
			in["pluginid"] = in["pluginId"]
			delete(in, "pluginId")
		}, "pluginid"},
		{"unknown data source key", func(d map[string]any) { sub(panel(d, 1), "datasource")["name"] = "x" }, "'name'"},
		{"unknown gridPos key", func(d map[string]any) { sub(panel(d, 1), "gridPos")["z"] = 1 }, "'z'"},
		{"unknown time key", func(d map[string]any) { sub(d, "time")["zone"] = "utc" }, "'zone'"},
		{"unknown override key", func(d map[string]any) {
			sub(panel(d, 1), "fieldConfig")["overrides"] = []any{map[string]any{"matcher": map[string]any{"id": "byName", "options": "x"}, "properties": []any{}, "extra": 1}}
		}, "'extra'"},
		{"a required field missing", func(d map[string]any) { delete(sub(panel(d, 1), "options", "legend"), "calcs") }, "calcs"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			found := check(broken(t, c.edit))
			if len(found) == 0 {
				t.Fatalf("accepted")
			}
			if all := strings.Join(found, "\n"); !strings.Contains(all, c.want) {
				t.Fatalf("want %q in:\n%s", c.want, all)
			}
		})
	}
	if found := check([]byte("{not json")); len(found) == 0 {
		t.Fatal("accepted bad JSON")
	}
}

// The repository's dashboards decode (what `./sb test` runs the binary on, here as a test too).
func TestTheRepositoryDashboardsDecode(t *testing.T) {
	files, _ := filepath.Glob("../../observability/dashboards/*.json")
	if len(files) == 0 {
		t.Fatal("no dashboards found")
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if found := check(raw); len(found) > 0 {
			t.Errorf("%s: %v", f, found)
		}
	}
}
