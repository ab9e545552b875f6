package daemon

import (
	"errors"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"time"

	"github.com/clusterip/clusterip/internal/buildinfo"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultMetricsPort is the port the README documents for
// --metrics-address.
const DefaultMetricsPort = 9787

// Metric descriptions. Every value comes from the same status snapshot a
// `clusterctl status` would show, taken at scrape time; counters add the
// counts of earlier incarnations of a VIP (a reload that recreated it), so
// they never go back while the daemon runs.
var (
	descBuildInfo = prometheus.NewDesc("clusterip_build_info",
		"The daemon's build: always 1.", []string{"version", "goversion"}, nil)
	descClusterInfo = prometheus.NewDesc("clusterip_cluster_info",
		"A cluster this daemon runs: always 1.", []string{"vip", "interface", "mode", "hash_compat", "clustermac", "total_nodes"}, nil)
	descNodeServed = prometheus.NewDesc("clusterip_node_served",
		"1 when this node answers new connections for node number node of the VIP, else 0.", []string{"vip", "node"}, nil)
	descNodesServed = prometheus.NewDesc("clusterip_nodes_served",
		"How many node numbers of the VIP this node answers for.", []string{"vip"}, nil)
	descPackets = prometheus.NewDesc("clusterip_packets_total",
		"Packets to the VIP by the path that judged them (kernel: the eBPF kernel path; user: user space) and the verdict. "+
			"Frames the socket filter leaves out in the kernel (other nodes' numbers) are not counted.",
		[]string{"vip", "path", "verdict"}, nil)
	descFlowsTracked = prometheus.NewDesc("clusterip_flows_tracked",
		"Connections in the flow table (automatic failover).", []string{"vip"}, nil)
	descFlowsKept = prometheus.NewDesc("clusterip_flows_kept",
		"This node's connections of numbers another node serves now.", []string{"vip"}, nil)
	descFlowsEvicted = prometheus.NewDesc("clusterip_flows_evicted_total",
		"Flows seen only in packets that gave way to others in a full flow table.", []string{"vip"}, nil)
	descFlowsUntracked = prometheus.NewDesc("clusterip_flows_untracked_total",
		"Connections served without being tracked (full flow table): a move of their number cuts them.", []string{"vip"}, nil)
	descHandoffs = prometheus.NewDesc("clusterip_handoffs_total",
		"Node numbers this node handed to another node, or took from one, through a release.", []string{"vip"}, nil)
	descHealth = prometheus.NewDesc("clusterip_health_check_up",
		"1 while the cluster's health check passes, else 0 (only for clusters with a check).", []string{"vip", "check"}, nil)
	descKernelPath = prometheus.NewDesc("clusterip_kernel_path_attached",
		"1 while the eBPF kernel path is attached for the VIP.", []string{"vip"}, nil)
	descProblems = prometheus.NewDesc("clusterip_problems",
		"Problems that keep this node from serving the VIP now (interface gone or down, name conflict); 0 when all is well.", []string{"vip"}, nil)
	descFloodingOK = prometheus.NewDesc("clusterip_flooding_ok",
		"1 while the flood check finds that frames to the cluster MAC reach every node it knows of (this one, and with --peers the others), 0 when they do not, or when it cannot tell (see clusterip_flooding_state).", []string{"vip"}, nil)
	descFloodingState = prometheus.NewDesc("clusterip_flooding_state",
		"The flood check's verdict: 1 for the current state (ok, broken or unknown), 0 for the others.", []string{"vip", "state"}, nil)
	descMemberUp = prometheus.NewDesc("clusterip_member_up",
		"1 while a member is alive (or suspect) as this node sees it, 0 once it is dead or gone.", []string{"member", "addr"}, nil)
)

// metricsCollector reads the daemon's state at each scrape.
type metricsCollector struct{ d *Daemon }

func (m metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBuildInfo, descClusterInfo, descNodeServed, descNodesServed, descPackets,
		descFlowsTracked, descFlowsKept, descFlowsEvicted, descFlowsUntracked, descHandoffs, descHealth, descKernelPath,
		descProblems, descFloodingOK, descFloodingState, descMemberUp} {
		ch <- d
	}
}

func (m metricsCollector) Collect(ch chan<- prometheus.Metric) {
	d := m.d
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	counter := func(desc *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v), labels...)
	}
	gauge(descBuildInfo, 1, buildinfo.Version(), runtime.Version())
	st := d.status()
	handoffs := d.handoffCounts()
	for _, c := range st.Clusters {
		vip := c.VIP
		gauge(descClusterInfo, 1, vip, c.Interface, c.HashMode, c.HashCompat, c.ClusterMAC, strconv.Itoa(c.TotalNodes))
		served := map[int]bool{}
		for _, n := range c.Serving {
			served[n] = true
		}
		for n := 1; n <= c.TotalNodes; n++ {
			v := 0.0
			if served[n] {
				v = 1
			}
			gauge(descNodeServed, v, vip, strconv.Itoa(n))
		}
		gauge(descNodesServed, float64(len(c.Serving)), vip)
		p := c.Packets
		counter(descPackets, p.KernelAnswered, vip, "kernel", "owned")
		counter(descPackets, p.UserAnswered, vip, "user", "owned")
		counter(descPackets, p.UserNotAnswered, vip, "user", "not_owned")
		counter(descPackets, p.Malformed, vip, "user", "malformed")
		gauge(descFlowsTracked, float64(c.Flows.Tracked), vip)
		gauge(descFlowsKept, float64(c.Flows.Kept), vip)
		counter(descFlowsEvicted, c.Flows.Evicted, vip)
		counter(descFlowsUntracked, c.Flows.Untracked, vip)
		counter(descHandoffs, handoffs[vip], vip)
		if c.Check != nil {
			v := 0.0
			if c.Check.Healthy {
				v = 1
			}
			gauge(descHealth, v, vip, c.Check.Check)
		}
		v := 0.0
		if c.KernelPath {
			v = 1
		}
		gauge(descKernelPath, v, vip)
		gauge(descProblems, float64(len(c.Problems)), vip)
		for _, s := range []string{"ok", "broken", "unknown"} {
			v := 0.0
			if c.Flooding.State == s {
				v = 1
			}
			if s == "ok" {
				gauge(descFloodingOK, v, vip)
			}
			gauge(descFloodingState, v, vip, s)
		}
	}
	if d.ms != nil {
		for _, mem := range d.ms.Members() {
			v := 0.0
			if mem.Live() {
				v = 1
			}
			gauge(descMemberUp, v, mem.Name, mem.Addr)
		}
	}
}

// handoffCounts are the handoffs of each VIP, with those of its earlier
// incarnations.
func (d *Daemon) handoffCounts() map[string]uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]uint64{}
	for vip, c := range d.clusters {
		out[vip.String()] = c.handoffs.Load() + d.retired[vip].handoffs
	}
	return out
}

// serveMetrics serves /metrics on ln: the daemon's metrics and the Go
// runtime's and process's, in Prometheus's text format.
func (d *Daemon) serveMetrics(ln net.Listener) *http.Server {
	reg := prometheus.NewRegistry()
	reg.MustRegister(metricsCollector{d}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slogPrinter{d}}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "clusterip metrics are at /metrics", http.StatusNotFound)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics server stopped", "err", err)
		}
	}()
	return srv
}

// slogPrinter passes promhttp's errors to the daemon's log.
type slogPrinter struct{ d *Daemon }

func (p slogPrinter) Println(v ...any) { p.d.log.Warn("metrics", "err", v) }
