package daemon

import (
	"encoding/json"
	"os"
	"regexp"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"
)

// metricNames are the names metricsCollector describes.
func metricNames(t *testing.T) map[string]bool {
	ch := make(chan *prometheus.Desc, 64)
	metricsCollector{}.Describe(ch)
	close(ch)
	names := map[string]bool{}
	fq := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	for d := range ch {
		m := fq.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("cannot read %s", d)
		}
		names[m[1]] = true
	}
	return names
}

// The shipped dashboard and alert rules use only metrics the daemon
// serves, and the dashboard is JSON Grafana can import.
func TestMonitoringExamplesUseServedMetrics(t *testing.T) {
	names := metricNames(t)
	for _, want := range []string{"clusterip_build_info", "clusterip_cluster_info", "clusterip_node_served", "clusterip_packets_total",
		"clusterip_flows_tracked", "clusterip_member_up", "clusterip_handoffs_total", "clusterip_health_check_up"} {
		if !names[want] {
			t.Errorf("the daemon does not serve %s", want)
		}
	}
	dash, err := os.ReadFile("../../dist/monitoring/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(dash, &d); err != nil || len(d.Panels) == 0 {
		t.Fatalf("dashboard: %v, %d panels", err, len(d.Panels))
	}
	alerts, err := os.ReadFile("../../dist/monitoring/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	used := regexp.MustCompile(`clusterip_[a-z_]+`)
	for _, text := range []string{string(dash), string(alerts)} {
		for _, n := range used.FindAllString(text, -1) {
			if !names[n] && n != "clusterip_" {
				t.Errorf("monitoring example uses %s, which the daemon does not serve", n)
			}
		}
	}
	var rules struct {
		Groups []struct {
			Name  string
			Rules []struct {
				Alert, Expr, For string
				Labels           map[string]string
				Annotations      map[string]string
			}
		}
	}
	if err := yaml.Unmarshal(alerts, &rules); err != nil || len(rules.Groups) != 1 || len(rules.Groups[0].Rules) < 5 {
		t.Fatalf("alerts.yml: %v, %+v", err, rules)
	}
	for _, r := range rules.Groups[0].Rules {
		if r.Alert == "" || r.Expr == "" || r.For == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
			t.Errorf("alert rule %+v lacks a field", r)
		}
	}
}
