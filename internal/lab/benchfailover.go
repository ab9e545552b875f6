package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Failover benchmark timing: the event comes eventAt into each run.
const (
	benchRun     = 9 * time.Second
	benchEventAt = 2 * time.Second
	benchGrace   = 3 * time.Second // the stopping service's own grace period
)

type failoverLab struct {
	*Lab
	key      string
	datapath string // the daemons' --datapath
	daemons  map[string]*Proc
	servers  map[string]*Proc
}

// BenchFailover runs a lab of 3 nodes under load and measures, for a
// daemon killed with SIGKILL, a drain then resume, a service stopping behind
// a health check, and a crashed node restarting: how long new connections
// failed, how many long-lived connections broke, and how many flows two
// nodes answered. datapath is the daemons' --datapath.
//
// clusterctl is the daemon's binary; this program must be the lab tool.
func BenchFailover(ctx context.Context, w io.Writer, clusterctl, datapath string) (err error) {
	tool, err := os.Executable()
	if err != nil {
		return err
	}
	l, err := New(Options{Prefix: "cipbench", Nodes: 3, Exe: clusterctl, Tool: tool})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := l.Close(); err == nil {
			err = cerr
		}
	}()
	f := &failoverLab{Lab: l, key: filepath.Join(l.Dir, "gossip.key"), datapath: datapath, daemons: map[string]*Proc{}, servers: map[string]*Proc{}}
	if err := f.setup(); err != nil {
		return err
	}
	fmt.Fprintf(w, "Lab: 3 nodes, sourceip-sourceport, health check http /health every 200ms (fall 2, rise 2).\n")
	fmt.Fprintf(w, "Load: a new HTTP connection every 10ms, 24 long-lived TCP connections exchanging a line every 100ms.\n")
	fmt.Fprintf(w, "Each run lasts %s; the event comes %s in.\n\n", benchRun, benchEventAt)

	type scenario struct {
		name  string
		event func() error
		after func() error
		down  bool // starts with n3 down, as (a) left it
	}
	n1, n2, n3 := l.Nodes[0], l.Nodes[1], l.Nodes[2]
	scenarios := []scenario{
		{"(a) kill -9 of n3's daemon", func() error { return f.daemons["n3"].Stop(syscall.SIGKILL, 5*time.Second) }, nil, false},
		{"(d) n3's daemon restarts", func() error { return f.startDaemon(n3, 3) }, nil, true},
		{"(b) drain n1, resume 3s later", func() error {
			if _, err := l.Clusterctl(n1, "drain", VIP.String()); err != nil {
				return err
			}
			time.Sleep(3 * time.Second)
			_, err := l.Clusterctl(n1, "resume", VIP.String())
			return err
		}, nil, false},
		{"(c) n2's service stops (health check)", func() error { return f.servers["n2"].Cmd.Process.Signal(syscall.SIGTERM) },
			func() error {
				// It exits once the load's connections to it have closed.
				if err := f.servers["n2"].Stop(syscall.SIGTERM, 10*time.Second); err != nil {
					return err
				}
				return f.startServer(n2)
			}, false},
	}
	fmt.Fprintf(w, "%-40s %9s %7s %8s %12s %15s %12s\n", "scenario", "new conns", "failed", "delayed", "fail window", "long-lived broke", "served twice")
	for _, sc := range scenarios {
		ready := f.waitHome
		if sc.down {
			ready = f.WaitServing
		}
		if err := ready(ctx); err != nil {
			return fmt.Errorf("%s: %w", sc.name, err)
		}
		rep, eventTime, err := f.run(ctx, sc.event)
		if err != nil {
			return fmt.Errorf("%s: %w", sc.name, err)
		}
		fmt.Fprintln(w, summarize(sc.name, rep, eventTime))
		if sc.after != nil {
			if err := sc.after(); err != nil {
				return err
			}
		}
	}
	if os.Getenv("CIP_BENCH_DEBUG") != "" {
		for _, h := range l.Nodes {
			fmt.Fprintf(os.Stderr, "=== %s\n%s", h.Name, l.Log("daemon-"+h.Name))
		}
	}
	fmt.Fprintf(w, "\nfailed: connect or request error (3 s timeout); delayed: succeeded after more than 500 ms (a lost SYN,\n")
	fmt.Fprintf(w, "retransmitted after 1 s); fail window: from the first to the last failed or delayed connection's start;\n")
	fmt.Fprintf(w, "long-lived broke: reset, stalled over 1 s or moved to another node (those served by a killed node are\n")
	fmt.Fprintf(w, "counted apart); served twice: connections whose SYN two nodes answered (SYN-ACKs from two MACs).\n")
	return nil
}

func (f *failoverLab) setup() error {
	if _, err := f.Run(f.Client, f.Exe, "genkey", f.key); err != nil {
		return err
	}
	for i, h := range f.Nodes {
		if err := f.startServer(h); err != nil {
			return err
		}
		if err := f.startDaemon(h, i+1); err != nil {
			return err
		}
	}
	for _, h := range f.Nodes {
		if err := f.WaitListening(h, 7); err != nil {
			return err
		}
	}
	return nil
}

func (f *failoverLab) startServer(h *Host) error {
	p, err := f.StartServer(h, "--grace", benchGrace.String())
	f.servers[h.Name] = p
	return err
}

func (f *failoverLab) startDaemon(h *Host, k int) error {
	conf := filepath.Join(f.Dir, h.Name+".conf")
	line := fmt.Sprintf("new --vip %s --interface eth0 --hashmode sourceip-sourceport --total-nodes 3 --local-node %d "+
		"--check http://127.0.0.1/health --check-interval 200ms --check-fall 2 --check-rise 2\n", VIP, k)
	if err := os.WriteFile(conf, []byte(line), 0o600); err != nil {
		return err
	}
	var peers []string
	for _, n := range f.Nodes {
		peers = append(peers, n.Addr.String())
	}
	p, err := f.StartDaemon(h, "--config", conf, "--peers", strings.Join(peers, ","), "--gossip-key", f.key, "--node-name", h.Name,
		"--datapath", f.datapath)
	f.daemons[h.Name] = p
	return err
}

// waitHome waits until every node serves its own number and nothing else.
func (f *failoverLab) waitHome(ctx context.Context) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok := true
		for i, h := range f.Nodes {
			b, err := os.ReadFile(f.ControlFile(h))
			if err != nil || strings.TrimSpace(string(b)) != fmt.Sprint(i+1) {
				ok = false
			}
		}
		if ok {
			return f.WaitServing(ctx)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("nodes did not return to their home numbers")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (f *failoverLab) run(ctx context.Context, event func() error) (*LoadReport, time.Time, error) {
	cmd := f.ToolCommand(f.Client, "load", "--duration", benchRun.String())
	var out strings.Builder
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		return nil, time.Time{}, err
	}
	time.Sleep(benchEventAt)
	at := time.Now()
	eventErr := event()
	waitErr := cmd.Wait()
	if eventErr != nil {
		return nil, at, eventErr
	}
	if waitErr != nil {
		return nil, at, fmt.Errorf("load: %v: %s", waitErr, out.String())
	}
	var rep LoadReport
	if err := json.Unmarshal([]byte(out.String()), &rep); err != nil {
		return nil, at, fmt.Errorf("load report: %w", err)
	}
	return &rep, at, nil
}

func summarize(name string, rep *LoadReport, event time.Time) string {
	failed, delayed := 0, 0
	var first, last time.Time
	for _, c := range rep.New {
		bad := c.Err != ""
		if bad {
			failed++
		} else if c.Latency > 500*time.Millisecond {
			delayed++
			bad = true
		}
		if bad {
			if first.IsZero() || c.Start.Before(first) {
				first = c.Start
			}
			if c.Start.After(last) {
				last = c.Start
			}
		}
	}
	if os.Getenv("CIP_BENCH_DEBUG") != "" {
		for _, c := range rep.New {
			if c.Err != "" || c.Latency > 500*time.Millisecond {
				fmt.Fprintf(os.Stderr, "  %s +%.3fs port %d node %q latency %s err %s\n", name, c.Start.Sub(event).Seconds(), c.Port, c.Node, c.Latency, c.Err)
			}
		}
		fmt.Fprintf(os.Stderr, "  %s twice: %v\n", name, rep.Twice)
	}
	window := "0"
	if !first.IsZero() {
		window = fmt.Sprintf("%.2fs", last.Sub(first).Seconds()+0.01)
	}
	broke, onDead := 0, 0
	for _, l := range rep.Long {
		if l.Broken == "" {
			continue
		}
		if strings.HasPrefix(name, "(a)") && l.Node == "n3" {
			onDead++
		} else {
			broke++
		}
	}
	brokeText := fmt.Sprint(broke)
	if onDead > 0 {
		brokeText = fmt.Sprintf("%d (+%d of n3)", broke, onDead)
	}
	return fmt.Sprintf("%-40s %9d %7d %8d %12s %15s %12d", name, len(rep.New), failed, delayed, window, brokeText, len(rep.Twice))
}
