package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/internal/daemon"
)

// benchMAC is the cluster MAC in the benchmark: the daemon's default for VIP.
var benchMAC = daemon.DefaultClusterMAC(VIP)

// benchSetup is one way to serve the VIP from the lab's nodes.
type benchSetup struct {
	name string
	up   func() error
	down func() error
}

type benchResult struct {
	connRate    float64 // new connections per second (wrk, one request each)
	p50, p99    float64 // ms, at a fixed moderate rate of new connections
	tcp1, tcp4  float64 // Gbit/s
	udpPPS      float64 // 64-byte datagrams received per second
	cpuPerMpkt  map[string]float64
	ownerShare  string
	daemonRSSMB float64
}

// BenchDatapath serves one VIP four ways in the same lab, one after the
// other, and measures each with the same clients: (1) direct, the VIP as a
// plain address on one node; (2) kernel, the nftables cluster recipe on all
// nodes; (3) daemon, this project's daemon on all nodes; (4) user, the
// daemon with --datapath user, every packet through user space. It does so
// for an IPv4 VIP, then for an IPv6 one, and prints a table for each.
//
// clusterctl is the daemon's binary; this program must be the lab tool.
func BenchDatapath(ctx context.Context, w io.Writer, clusterctl string, dur time.Duration, workers int) (err error) {
	for _, tool := range []string{"wrk", "iperf3", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("bench needs %s (apt-get install wrk iperf3 nftables)", tool)
		}
	}
	tool, err := os.Executable()
	if err != nil {
		return err
	}
	l, err := New(Options{Prefix: "cipperf", Nodes: 3, Exe: clusterctl, Tool: tool})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := l.Close(); err == nil {
			err = cerr
		}
	}()
	families := []benchFamily{
		{name: "IPv4", vip: VIP, mac: benchMAC, iperfPort: "5201"},
		{name: "IPv6", vip: VIP6, mac: daemon.DefaultClusterMAC(VIP6), iperfPort: "5202"},
	}
	// wrk opens and closes about a million connections over the run, and
	// the client closes first: without reusing TIME-WAIT ports, connect's
	// port search slows down about tenfold after a quarter million of
	// them, and every setup measured after that one would look slow.
	if _, err := l.Run(l.Client, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65535"); err != nil {
		return err
	}
	for _, h := range l.Nodes {
		if _, err := l.StartServer(h); err != nil {
			return err
		}
		// UDP replies must come from the VIP, so iperf3 binds it, before
		// any setup has put it on the node.
		if _, err := l.Run(h, "sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1", "net.ipv6.ip_nonlocal_bind=1"); err != nil {
			return err
		}
		for _, f := range families {
			if _, err := l.Start(h, "iperf3-"+f.name+"-"+h.Name, "iperf3", "-s", "-B", f.vip.String(), "-p", f.iperfPort); err != nil {
				return err
			}
		}
	}
	for _, h := range l.Nodes {
		if err := l.WaitListening(h, 7); err != nil {
			return err
		}
	}
	for _, f := range families {
		results := map[string]*benchResult{}
		if err := l.benchFamily(ctx, w, f, dur, workers, results); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
		printBench(w, f.name, results)
	}
	return nil
}

// benchFamily is what the benchmark needs to serve and reach one VIP.
type benchFamily struct {
	name      string
	vip       netip.Addr
	mac       net.HardwareAddr // the cluster MAC
	iperfPort string           // the nodes' iperf3 server bound to vip
}

// benchFamily measures the four setups for one VIP into results.
func (l *Lab) benchFamily(ctx context.Context, w io.Writer, f benchFamily, dur time.Duration, workers int, results map[string]*benchResult) error {
	host := netip.PrefixFrom(f.vip, f.vip.BitLen()).String()
	daemons := map[string]*Proc{}
	key := filepath.Join(l.Dir, "gossip.key")
	if _, err := os.Stat(key); err != nil {
		if _, err := l.Run(l.Client, l.Exe, "genkey", key); err != nil {
			return err
		}
	}
	var addrs []string
	for _, h := range l.Nodes {
		addrs = append(addrs, h.Addr.String())
	}
	peers := strings.Join(addrs, ",")
	daemonSetup := func(name, datapath string, extra ...string) benchSetup {
		return benchSetup{name, func() error {
			for i, h := range l.Nodes {
				if dir := os.Getenv("CIP_BENCH_PROFILE"); dir != "" {
					l.DaemonEnv = []string{"CLUSTERIP_CPUPROFILE=" + dir + "/cip-" + f.name + "-" + name + "-" + h.Name + ".prof"}
				}
				p, err := l.StartDaemon(h, append([]string{"--workers", strconv.Itoa(workers), "--datapath", datapath}, extra...)...)
				if err != nil {
					return err
				}
				daemons[h.Name] = p
				if _, err := l.Clusterctl(h, "new", "--vip", f.vip.String(), "--interface", "eth0", "--hashmode", "sourceip",
					"--total-nodes", "3", "--local-node", strconv.Itoa(i+1)); err != nil {
					return err
				}
			}
			if len(extra) == 0 {
				return nil
			}
			// With --peers the numbers come from the failover loop, and
			// reach the kernel path once settled: the handoffs of the
			// start leave a number to user space while the node that
			// had it keeps flows of it (30 s for an idle UDP flow).
			if err := waitNumbers(ctx, l, f.vip, l.Nodes, func(i int) string { return strconv.Itoa(i + 1) }, 30*time.Second); err != nil {
				return err
			}
			return waitInKernel(ctx, l, f.vip, time.Minute)
		}, func() error {
			for _, p := range daemons {
				p.Stop(syscall.SIGTERM, 5*time.Second)
			}
			return nil
		}}
	}
	setups := []benchSetup{
		{"direct", func() error {
			return l.runAll([][]string{append([]string{"ip", "-n", l.Nodes[0].NS, "addr", "add", host, "dev", "eth0"}, nodad(f.vip)...)})
		}, func() error {
			return l.runAll([][]string{{"ip", "-n", l.Nodes[0].NS, "addr", "del", host, "dev", "eth0"}})
		}},
		{"kernel", func() error {
			for i, h := range l.Nodes {
				if err := l.NFTablesNode(h, f.vip, f.mac, benchHash, i+1); err != nil {
					return err
				}
			}
			if f.vip.Is6() {
				// Nothing advertises the cluster MAC for an IPv6 VIP the
				// nftables way (see NFTablesRecipe): the client is told.
				return l.runAll([][]string{{"ip", "-n", l.Client.NS, "-6", "neigh", "replace", f.vip.String(), "lladdr", f.mac.String(), "dev", "eth0", "nud", "permanent"}})
			}
			return nil
		}, func() error {
			for _, h := range l.Nodes {
				l.UndoNFTablesNode(h, f.vip, f.mac)
			}
			if f.vip.Is6() {
				l.runAll([][]string{{"ip", "-n", l.Client.NS, "-6", "neigh", "del", f.vip.String(), "dev", "eth0"}})
			}
			return nil
		}},
		daemonSetup("daemon", "auto"),
		daemonSetup("user", "user"),
		// Automatic failover: flows tracked, UDP in the kernel all the same.
		daemonSetup("peers", "auto", "--peers", peers, "--gossip-key", key),
	}
	for _, s := range setups {
		fmt.Fprintf(w, "measuring %s %s...\n", f.name, s.name)
		if err := s.up(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		l.Run(l.Client, "ip", "neigh", "flush", "dev", "eth0")
		l.Run(l.Client, "ip", "-6", "neigh", "flush", "dev", "eth0", "nud", "reachable", "nud", "stale", "nud", "delay", "nud", "probe")
		if err := l.WaitServingAt(ctx, f.vip); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		r, err := l.measure(ctx, dur, daemons, f)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		results[s.name] = r
		if err := s.down(); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		daemons = map[string]*Proc{}
	}
	return nil
}

// benchHash is the nftables recipe's hash in the benchmark.
var benchHash = hash.Config{Mode: hash.SourceIP, TotalNodes: 3, Compat: hash.NFTables}

func (l *Lab) runAll(cmds [][]string) error {
	for _, c := range cmds {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(c, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

var wrkRate = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)

func (l *Lab) measure(ctx context.Context, dur time.Duration, daemons map[string]*Proc, f benchFamily) (*benchResult, error) {
	url := "http://" + netip.AddrPortFrom(f.vip, 80).String() + "/"
	r := &benchResult{cpuPerMpkt: map[string]float64{}}
	secs := fmt.Sprintf("%ds", int(dur.Seconds()))
	cpu := func() map[string]float64 {
		m := map[string]float64{}
		for name, p := range daemons {
			m[name] = procCPU(p.Cmd.Process.Pid)
		}
		return m
	}
	tx := func() float64 {
		// Read through the client's namespace: this process's /proc/net is the host's.
		out, err := l.Run(l.Client, "cat", "/proc/net/dev")
		if err != nil {
			return 0
		}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(strings.Replace(line, ":", " ", 1)); len(f) > 10 && f[0] == "eth0" {
				v, _ := strconv.ParseFloat(f[10], 64) // transmit packets
				return v
			}
		}
		return 0
	}
	track := func(name string, fn func() error) error {
		if !benchSelected(name) {
			return nil
		}
		c0, t0 := cpu(), tx()
		if err := fn(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		c1, t1 := cpu(), tx()
		if len(daemons) > 0 && t1 > t0 {
			total, owner, ownerName := 0.0, 0.0, ""
			for n := range c1 {
				d := c1[n] - c0[n]
				total += d
				if d > owner {
					owner, ownerName = d, n
				}
			}
			r.cpuPerMpkt[name] = total / (t1 - t0) * 1e6
			if name == "tcp4" {
				r.ownerShare = fmt.Sprintf("%s %.2fs, others %.2fs", ownerName, owner, total-owner)
			}
		}
		return nil
	}
	err := track("conn", func() error {
		out, err := l.Run(l.Client, "wrk", "-t2", "-c32", "-d"+secs, "-H", "Connection: close", url)
		if err != nil {
			return err
		}
		m := wrkRate.FindStringSubmatch(out)
		if m == nil {
			return fmt.Errorf("wrk printed no rate: %s", out)
		}
		r.connRate, _ = strconv.ParseFloat(m[1], 64)
		return nil
	})
	if err == nil {
		err = track("latency", func() error {
			out, err := l.Run(l.Client, l.Tool, "latency", "--addr", netip.AddrPortFrom(f.vip, 80).String(), "--rate", "500", "--duration", dur.String())
			if err != nil {
				return err
			}
			_, err = fmt.Sscanf(strings.TrimSpace(out), "%f %f", &r.p50, &r.p99)
			return err
		})
	}
	iperf := func(name string, args ...string) error {
		return track(name, func() error {
			var out string
			var err error
			// iperf3 3.12's server sometimes refuses a test that follows
			// another too closely ("unable to read from stream socket").
			for try := 0; try < 3; try++ {
				time.Sleep(time.Second)
				out, err = l.Run(l.Client, "iperf3", append([]string{"-c", f.vip.String(), "-p", f.iperfPort, "-t", strconv.Itoa(int(dur.Seconds())), "-J"}, args...)...)
				if err == nil && !strings.Contains(out, `"error":`) {
					break
				}
			}
			if err != nil {
				return err
			}
			var rep struct {
				Error string `json:"error"`
				End   struct {
					SumReceived struct {
						BitsPerSecond float64 `json:"bits_per_second"`
					} `json:"sum_received"`
					Sum struct {
						Packets     float64 `json:"packets"`
						LostPackets float64 `json:"lost_packets"`
						Seconds     float64 `json:"seconds"`
					} `json:"sum"`
				} `json:"end"`
			}
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				return fmt.Errorf("iperf3 output: %w", err)
			}
			if rep.Error != "" {
				return fmt.Errorf("iperf3 %s: %s", name, rep.Error)
			}
			switch name {
			case "tcp1":
				r.tcp1 = rep.End.SumReceived.BitsPerSecond / 1e9
			case "tcp4":
				r.tcp4 = rep.End.SumReceived.BitsPerSecond / 1e9
			case "udp":
				if rep.End.Sum.Seconds > 0 {
					r.udpPPS = (rep.End.Sum.Packets - rep.End.Sum.LostPackets) / rep.End.Sum.Seconds
				}
			}
			return nil
		})
	}
	if err == nil {
		err = iperf("tcp1")
	}
	if err == nil {
		err = iperf("tcp4", "-P", "4")
	}
	if err == nil {
		err = iperf("udp", "-u", "-b", "100M", "-l", "64")
	}
	for _, p := range daemons {
		r.daemonRSSMB = max(r.daemonRSSMB, procRSSMB(p.Cmd.Process.Pid))
	}
	return r, err
}

// waitInKernel waits until every node's kernel path answers all the numbers
// it serves for vip.
func waitInKernel(ctx context.Context, l *Lab, vip netip.Addr, timeout time.Duration) error {
	return waitStatus(ctx, l, l.Nodes, timeout, 250*time.Millisecond, func(_ int, st daemon.Status) string {
		c, _ := clusterOf(st, vip.String())
		if len(c.Serving) == 0 || !slices.Equal(c.InKernel, c.Serving) {
			return fmt.Sprintf("the kernel path serves %v of %v (%s)", c.InKernel, c.Serving, vip)
		}
		return ""
	})
}

// benchSelected tells whether measurement name (conn, latency, tcp1, tcp4,
// udp) is to run: all of them, unless CIP_BENCH_ONLY lists some, for
// looking at one row closely (with perf, say) without the others' minutes.
func benchSelected(name string) bool {
	only := os.Getenv("CIP_BENCH_ONLY")
	return only == "" || slices.Contains(strings.Split(only, ","), name)
}

// procCPU is a process's user+system CPU time in seconds.
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

func procRSSMB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

func printBench(w io.Writer, family string, r map[string]*benchResult) {
	d, k, x, u, pe := r["direct"], r["kernel"], r["daemon"], r["user"], r["peers"]
	row := func(name string, get func(*benchResult) float64, format string, lowerBetter bool) {
		ratio := func(a, b float64) string {
			if a == 0 || b == 0 {
				return "-"
			}
			if lowerBetter {
				return fmt.Sprintf("%.2f", b/a) // as a speed ratio: above 1 is better
			}
			return fmt.Sprintf("%.2f", a/b)
		}
		fmt.Fprintf(w, "%-38s %9s %9s %9s %9s %9s %14s %14s %12s %13s\n", name,
			fmt.Sprintf(format, get(d)), fmt.Sprintf(format, get(k)), fmt.Sprintf(format, get(x)), fmt.Sprintf(format, get(u)), fmt.Sprintf(format, get(pe)),
			ratio(get(x), get(k)), ratio(get(x), get(d)), ratio(get(u), get(k)), ratio(get(pe), get(k)))
	}
	fmt.Fprintf(w, "\n%-38s %9s %9s %9s %9s %9s %14s %14s %12s %13s\n", family, "direct", "kernel", "daemon", "user", "peers", "daemon/kernel", "daemon/direct", "user/kernel", "peers/kernel")
	row("new connections/s (wrk, close)", func(r *benchResult) float64 { return r.connRate }, "%.0f", false)
	row("latency p50 ms (500 conn/s)", func(r *benchResult) float64 { return r.p50 }, "%.3f", true)
	row("latency p99 ms (500 conn/s)", func(r *benchResult) float64 { return r.p99 }, "%.3f", true)
	row("TCP 1 stream Gbit/s (iperf3)", func(r *benchResult) float64 { return r.tcp1 }, "%.2f", false)
	row("TCP 4 streams Gbit/s (iperf3 -P4)", func(r *benchResult) float64 { return r.tcp4 }, "%.2f", false)
	row("UDP 64B datagrams/s recv (195k/s sent)", func(r *benchResult) float64 { return r.udpPPS }, "%.0f", false)
	fmt.Fprintf(w, "(daemon: --datapath auto, the default; user: --datapath user; peers: the default with --peers,\n")
	fmt.Fprintf(w, "automatic failover and its flow tracking. Latency ratios are kernel/daemon,\n")
	fmt.Fprintf(w, "so for every ratio above 1 means the daemon is faster)\n")
	for _, v := range []struct {
		name string
		r    *benchResult
	}{{"daemon", x}, {"user", u}, {"peers", pe}} {
		fmt.Fprintln(w)
		keys := make([]string, 0, len(v.r.cpuPerMpkt))
		for k := range v.r.cpuPerMpkt {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "%s %s: daemon CPU s per million client packets, %-8s %.2f (all 3 nodes; a GSO super-frame counts once)\n", family, v.name, k+":", v.r.cpuPerMpkt[k])
		}
		fmt.Fprintf(w, "%s %s: daemon CPU during TCP 4 streams: owner %s\n", family, v.name, v.r.ownerShare)
		fmt.Fprintf(w, "%s %s: daemon memory (largest RSS): %.1f MiB\n", family, v.name, v.r.daemonRSSMB)
	}
}
