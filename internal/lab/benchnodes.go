package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/internal/daemon"
	"github.com/clusterip/clusterip/internal/membership"
	"github.com/clusterip/clusterip/nodeset"
)

// nodeScaleResult is what BenchNodes measures of one cluster size.
type nodeScaleResult struct {
	nodes       int
	converge    time.Duration // from the last daemon started to every number served at home, once
	gossipBps   float64       // gossip bytes a second through one node, both ways, at rest
	gossipPps   float64
	cpu         float64 // a daemon's CPU at rest, on average (seconds a second)
	rssMB       float64 // the largest daemon's
	takeover    time.Duration
	takeoverErr string
	drain       string // the drain's summary line
	failed      string // why the measurement of this size stopped
}

// BenchNodes runs a cluster of n nodes for each of sizes, one VIP with n
// numbers, every node a daemon with --peers (three seeds) and the test
// service, and measures: how long until every number is served at home
// exactly once, the gossip traffic through one node and each daemon's CPU
// at rest, how long after a kill -9 the dead node's number is served again
// (the control files of the survivors), and a drain and resume under load.
func BenchNodes(ctx context.Context, w io.Writer, clusterctl string, sizes []int) error {
	if len(sizes) == 0 {
		return nil
	}
	tool, err := os.Executable()
	if err != nil {
		return err
	}
	var results []nodeScaleResult
	for _, n := range sizes {
		r, err := benchNodesOne(ctx, clusterctl, tool, n)
		if err != nil {
			// The other sizes' figures still stand: say what failed.
			r = nodeScaleResult{nodes: n, failed: err.Error()}
		}
		results = append(results, r)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	fmt.Fprintf(w, "Many nodes: one VIP, sourceip-sourceport, total = nodes, every node a daemon with --peers (3 seeds)\n")
	fmt.Fprintf(w, "%-6s %10s %14s %12s %12s %9s %12s\n", "nodes", "converge", "gossip B/s", "gossip pkt/s", "CPU/daemon", "RSS MiB", "kill -9 →")
	for _, r := range results {
		if r.failed != "" {
			fmt.Fprintf(w, "%-6d failed: %s\n", r.nodes, r.failed)
			continue
		}
		take := r.takeover.Round(time.Millisecond).String()
		if r.takeoverErr != "" {
			take = r.takeoverErr
		}
		fmt.Fprintf(w, "%-6d %10s %14.0f %12.0f %11.4fs %9.1f %12s\n", r.nodes, r.converge.Round(time.Millisecond), r.gossipBps, r.gossipPps, r.cpu, r.rssMB, take)
	}
	fmt.Fprintf(w, "\nDrain of n1 and resume 3 s later, under a new connection every 10 ms and 24 long-lived ones:\n")
	fmt.Fprintf(w, "%-6s %9s %7s %8s %12s %15s %12s\n", "nodes", "new conns", "failed", "delayed", "fail window", "long-lived broke", "served twice")
	for _, r := range results {
		if r.failed == "" {
			fmt.Fprintf(w, "%-6d %s\n", r.nodes, strings.TrimSpace(r.drain[40:]))
		}
	}
	fmt.Fprintf(w, "\nkill -9 →: from the kill until a survivor answers a datagram (sent every 10 ms) of the dead node's number.\n")
	fmt.Fprintf(w, "gossip: UDP and TCP of port %d in and out of n1's namespace (nft counters), over 10 s.\n", membership.DefaultPort)
	return nil
}

func benchNodesOne(ctx context.Context, clusterctl, tool string, n int) (r nodeScaleResult, err error) {
	r.nodes = n
	l, err := New(Options{Prefix: "cipnodes", Nodes: n, Exe: clusterctl, Tool: tool})
	if err != nil {
		return r, err
	}
	defer func() {
		if cerr := l.Close(); err == nil {
			err = cerr
		}
	}()
	// Up to 64 daemons share this machine's few cores: one Go scheduler
	// thread each keeps them from spinning against one another.
	l.DaemonEnv = []string{"GOMAXPROCS=1"}
	f := &failoverLab{Lab: l, key: filepath.Join(l.Dir, "gossip.key"), datapath: "auto", daemons: map[string]*Proc{}, servers: map[string]*Proc{}}
	if _, err := l.Run(l.Client, l.Exe, "genkey", f.key); err != nil {
		return r, err
	}
	var seeds []string
	for _, h := range l.Nodes[:min(3, n)] {
		seeds = append(seeds, h.Addr.String())
	}
	start := func(h *Host, k int) error {
		conf := filepath.Join(l.Dir, h.Name+".conf")
		line := fmt.Sprintf("new --vip %s --interface eth0 --hashmode sourceip-sourceport --total-nodes %d --local-node %d\n", VIP, n, k)
		if err := os.WriteFile(conf, []byte(line), 0o600); err != nil {
			return err
		}
		p, err := l.StartDaemon(h, "--config", conf, "--peers", strings.Join(seeds, ","), "--gossip-key", f.key)
		f.daemons[h.Name] = p
		return err
	}
	for _, h := range l.Nodes {
		if err := f.startServer(h); err != nil {
			return r, err
		}
	}
	// The daemons start in waves of 8, each once the first node and the
	// last started see every node started so far alive: 64 daemons and
	// their services starting at once on two cores (TAPs, eBPF programs,
	// sysctls, joins and state transfers in the same second) starve one
	// another, and a node that cannot answer its probes is declared dead.
	const wave = 8
	for i, h := range l.Nodes {
		if err := start(h, i+1); err != nil {
			return r, err
		}
		if (i+1)%wave == 0 && i+1 < n {
			if err := waitMembers(ctx, l, VIP, []*Host{l.Nodes[0], h}, i+1, time.Minute); err != nil {
				return r, err
			}
		}
	}
	started := time.Now()
	if err := waitNumbers(ctx, l, VIP, l.Nodes, func(i int) string { return strconv.Itoa(i + 1) }, 2*time.Minute); err != nil {
		return r, fmt.Errorf("converge: %w", err)
	}
	r.converge = time.Since(started)
	for _, h := range l.Nodes {
		if err := l.WaitListening(h, 7); err != nil {
			return r, err
		}
	}

	// At rest.
	time.Sleep(3 * time.Second)
	n1 := l.Nodes[0]
	rules := fmt.Sprintf(`table inet cipbench {
  chain in { type filter hook input priority 0; meta l4proto { tcp, udp } th dport %[1]d counter; meta l4proto { tcp, udp } th sport %[1]d counter; }
  chain out { type filter hook output priority 0; meta l4proto { tcp, udp } th dport %[1]d counter; meta l4proto { tcp, udp } th sport %[1]d counter; }
}`, membership.DefaultPort)
	cmd := l.Command(n1, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return r, fmt.Errorf("nft: %v: %s", err, out)
	}
	cpu0 := map[string]float64{}
	for name, p := range f.daemons {
		cpu0[name] = procCPU(p.Cmd.Process.Pid)
	}
	b0, p0, err := nftCounters(l, n1)
	if err != nil {
		return r, err
	}
	const rest = 10 * time.Second
	time.Sleep(rest)
	b1, p1, err := nftCounters(l, n1)
	if err != nil {
		return r, err
	}
	r.gossipBps, r.gossipPps = float64(b1-b0)/rest.Seconds(), float64(p1-p0)/rest.Seconds()
	for name, p := range f.daemons {
		r.cpu += (procCPU(p.Cmd.Process.Pid) - cpu0[name]) / rest.Seconds() / float64(n)
		r.rssMB = max(r.rssMB, procRSSMB(p.Cmd.Process.Pid))
	}

	// kill -9 of the last node: the client sends a datagram every 10 ms
	// from a port whose number is the last node's, and the time is until
	// a survivor answers one.
	last := l.Nodes[n-1]
	cfg := hash.Config{Mode: hash.SourceIPSourcePort, TotalNodes: uint32(n)}
	sport := uint16(0)
	for p := uint16(30000); sport == 0; p++ {
		if node, _ := cfg.NodeForPorts(ClientAddr, p, 7); node == n {
			sport = p
		}
	}
	r.takeover, err = l.timeTakeover(ctx, sport, last.Name, func() error {
		return f.daemons[last.Name].Stop(syscall.SIGKILL, 5*time.Second)
	})
	if err != nil {
		r.takeoverErr = err.Error()
	}
	if err := l.WaitServing(ctx); err != nil {
		return r, err
	}
	// It comes back; everything goes home again.
	if err := start(last, n); err != nil {
		return r, err
	}
	if err := waitNumbers(ctx, l, VIP, l.Nodes, func(i int) string { return strconv.Itoa(i + 1) }, 2*time.Minute); err != nil {
		return r, fmt.Errorf("after the restart: %w", err)
	}

	// Drain n1 under load, resume 3 s later.
	rep, at, err := f.run(ctx, func() error {
		if _, err := l.Clusterctl(n1, "drain", VIP.String()); err != nil {
			return err
		}
		time.Sleep(3 * time.Second)
		_, err := l.Clusterctl(n1, "resume", VIP.String())
		return err
	})
	if err != nil {
		return r, fmt.Errorf("drain: %w", err)
	}
	r.drain = summarize("drain", rep, at)
	return r, nil
}

// waitMembers waits until each of nodes sees want members alive in
// vip's cluster.
func waitMembers(ctx context.Context, l *Lab, vip netip.Addr, nodes []*Host, want int, timeout time.Duration) error {
	return waitStatus(ctx, l, nodes, timeout, 200*time.Millisecond, func(_ int, st daemon.Status) string {
		c, ok := clusterOf(st, vip.String())
		if !ok {
			return "no cluster " + vip.String()
		}
		alive := 0
		for _, m := range c.Members {
			if m.State == "alive" {
				alive++
			}
		}
		if alive != want {
			return fmt.Sprintf("%d members alive, want %d", alive, want)
		}
		return ""
	})
}

// waitNumbers waits until the control file for vip of each node i holds exactly
// want(i), which also makes every number served exactly once.
func waitNumbers(ctx context.Context, l *Lab, vip netip.Addr, nodes []*Host, want func(int) string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		bad := ""
		for i, h := range nodes {
			b, err := os.ReadFile(l.ControlFileOf(h, vip))
			if got := strings.TrimSpace(string(b)); err != nil || got != want(i) {
				bad = fmt.Sprintf("%s holds %q, want %q", h.Name, got, want(i))
				break
			}
		}
		if bad == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not in %s: %s", timeout, bad)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond) // each look is a read of every node's control file
	}
}

// timeTakeover sends a datagram to the VIP's echo port from the client's
// port sport every 10 ms, checks that from answers it, runs event, and
// returns how long after it another node answered.
func (l *Lab) timeTakeover(ctx context.Context, sport uint16, from string, event func() error) (time.Duration, error) {
	var took time.Duration
	err := InNetns(l.Client.NS, func() error {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: ClientAddr.AsSlice(), Port: int(sport)})
		if err != nil {
			return err
		}
		defer c.Close()
		to := &net.UDPAddr{IP: VIP.AsSlice(), Port: 7}
		buf := make([]byte, 256)
		ask := func() string {
			c.WriteTo([]byte("ping"), to)
			c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return ""
			}
			return strings.Fields(string(buf[:n]))[0]
		}
		for i := 0; ask() != from; i++ {
			if i > 300 {
				return fmt.Errorf("port %d not answered by %s", sport, from)
			}
		}
		at := time.Now()
		if err := event(); err != nil {
			return err
		}
		for {
			if who := ask(); who != "" && who != from {
				took = time.Since(at)
				return nil
			}
			if time.Since(at) > 30*time.Second || ctx.Err() != nil {
				return fmt.Errorf("not served again in 30 s")
			}
		}
	})
	return took, err
}

// nftCounters sums the bench table's counters in h: bytes and packets.
func nftCounters(l *Lab, h *Host) (bytes, packets uint64, err error) {
	out, err := l.Run(h, "nft", "-j", "list", "table", "inet", "cipbench")
	if err != nil {
		return 0, 0, err
	}
	var doc struct {
		Nftables []struct {
			Rule *struct {
				Expr []struct {
					Counter *struct {
						Packets uint64 `json:"packets"`
						Bytes   uint64 `json:"bytes"`
					} `json:"counter"`
				} `json:"expr"`
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return 0, 0, fmt.Errorf("nft counters: %w", err)
	}
	for _, e := range doc.Nftables {
		if e.Rule == nil {
			continue
		}
		for _, x := range e.Rule.Expr {
			if x.Counter != nil {
				bytes += x.Counter.Bytes
				packets += x.Counter.Packets
			}
		}
	}
	return bytes, packets, nil
}

// GossipScale starts members on loopback addresses, each publishing clusters cluster
// states, and reports how long until every member holds every other's
// states, and how long one changed cluster takes to reach them all.
func GossipScale(w io.Writer, members, clusters int) error {
	if members < 2 || clusters < 1 {
		return nil
	}
	s, err := membership.GenerateKey()
	if err != nil {
		return err
	}
	key, err := membership.ParseKey(s)
	if err != nil {
		return err
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var ms []*membership.Membership
	defer func() {
		for _, m := range ms {
			m.Leave()
		}
	}()
	states := func(home int, drain int) []membership.ClusterState {
		out := make([]membership.ClusterState, clusters)
		for i := range out {
			set := nodeset.NodeSet(1) << (home - 1)
			out[i] = membership.ClusterState{VIP: scaleVIP(i + 1), Home: set, Serving: set, Draining: i == drain}
		}
		return out
	}
	start := time.Now()
	var seed string
	for i := range members {
		// An address each, as on a LAN: the transport caps the streams
		// it takes from one address.
		bind := netip.AddrFrom4([4]byte{127, 0, byte((i + 1) >> 8), byte(i + 1)})
		cfg := membership.Config{Name: fmt.Sprintf("m%d", i+1), Bind: bind, Key: key, Log: quiet}
		if seed != "" {
			cfg.Peers = []string{seed}
		}
		m, err := membership.Start(cfg)
		if err != nil {
			return err
		}
		ms = append(ms, m)
		if seed == "" {
			for _, mem := range m.Members() {
				seed = mem.Addr // its own entry, the only one yet
			}
		}
		if err := m.Publish(states(i%64+1, -1)); err != nil {
			return err
		}
	}
	converged := func(check func(membership.Member) bool) bool {
		for _, m := range ms {
			members := m.Members()
			if len(members) != len(ms) {
				return false
			}
			for _, mem := range members {
				if mem.Pending || len(mem.Clusters) != clusters || !check(mem) {
					return false
				}
			}
		}
		return true
	}
	for !converged(func(membership.Member) bool { return true }) {
		if time.Since(start) > 5*time.Minute {
			return fmt.Errorf("%d members × %d clusters did not converge in 5 minutes", members, clusters)
		}
		time.Sleep(50 * time.Millisecond)
	}
	all := time.Since(start)
	changed := time.Now()
	if err := ms[0].Publish(states(1, clusters/2)); err != nil {
		return err
	}
	vip := scaleVIP(clusters/2 + 1)
	for !converged(func(mem membership.Member) bool {
		st, _ := mem.Cluster(vip)
		return mem.Name != "m1" || st.Draining
	}) {
		if time.Since(changed) > time.Minute {
			return fmt.Errorf("a change did not spread in a minute")
		}
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Fprintf(w, "Gossip alone: %d members on loopback, %d clusters each: all states everywhere %s after the first start; one changed cluster everywhere in %s\n",
		members, clusters, all.Round(time.Millisecond), time.Since(changed).Round(time.Millisecond))
	return nil
}
