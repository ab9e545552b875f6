package lab

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/clusterip/clusterip/hash"
)

const demoPort = 80

// demoHash is the demo's cluster: ports in the hash, so one client spreads
// over all nodes.
var demoHash = hash.Config{Mode: hash.SourceIPSourcePort, TotalNodes: 3}

// Demo builds a lab of one client and three nodes, runs a daemon and a
// server on each node, and shows which node serves each connection against
// what the hash predicts; then stops a node, moves its number to a survivor
// through the control file and shows the survivor serving that share.
func Demo(ctx context.Context, w io.Writer, conns int) (err error) {
	say := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	ctx, cancel := context.WithCancel(ctx) // ends the servers this process runs in the lab
	defer cancel()
	say("Building the lab: a bridge, a client (%s) and 3 nodes in network namespaces...", ClientAddr)
	l, err := New(Options{Prefix: "cipdemo", Nodes: 3})
	if err != nil {
		return err
	}
	defer func() {
		say("Removing the lab...")
		if cerr := l.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()

	daemons := map[string]*Proc{}
	for i, n := range l.Nodes {
		if daemons[n.Name], err = l.StartDaemon(n); err != nil {
			return err
		}
		args := []string{"new", "--vip", VIP.String(), "--interface", "eth0", "--hashmode", demoHash.Mode.String(),
			"--total-nodes", strconv.Itoa(int(demoHash.TotalNodes)), "--local-node", strconv.Itoa(i + 1)}
		say("  %s$ clusterctl %s", n.Name, strings.Join(args, " "))
		if _, err := l.Clusterctl(n, args...); err != nil {
			return err
		}
		if err := l.ServeIn(ctx, n, fmt.Sprintf(":%d", demoPort), ":7"); err != nil {
			return err
		}
	}
	for _, n := range l.Nodes {
		if err := l.WaitListening(n, 7); err != nil {
			return err
		}
	}
	if err := l.WaitServing(ctx); err != nil {
		return err
	}

	say("\nRound 1: the client opens %d connections to http://%s/", conns, VIP)
	if err := l.demoRound(ctx, w, conns); err != nil {
		return err
	}

	say("\nStopping n3's daemon (SIGTERM): its TAP, VIP and multicast membership go with it.")
	if err := daemons["n3"].Stop(syscall.SIGTERM, 10*time.Second); err != nil {
		return err
	}
	ctl := l.ControlFile(l.Nodes[0])
	say("n1 takes over node 3 through its control file:")
	say("  n1$ echo +3 > %s", ctl)
	if _, err := l.Run(l.Nodes[0], "sh", "-c", "echo +3 > "+ctl); err != nil {
		return err
	}
	held, err := os.ReadFile(ctl)
	if err != nil {
		return err
	}
	say("  n1$ cat %s\n  %s", ctl, strings.TrimSpace(string(held)))

	say("\nRound 2: %d more connections", conns)
	return l.demoRound(ctx, w, conns)
}

// WaitServing waits until the cluster answers the client.
func (l *Lab) WaitServing(ctx context.Context) error { return l.WaitServingAt(ctx, VIP) }

// WaitServingAt waits until the cluster at vip answers the client.
func (l *Lab) WaitServingAt(ctx context.Context, vip netip.Addr) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := l.ProbeAt(ctx, l.Client, vip, 1, time.Second)
		if err == nil && res[0].Err == nil {
			return nil
		}
		if err == nil {
			err = res[0].Err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cluster at %s does not answer: %v", vip, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ProbeFrom opens count connections from h to the VIP's HTTP port, one
// after the other, from this process.
func (l *Lab) ProbeFrom(ctx context.Context, h *Host, count int, timeout time.Duration) ([]ProbeResult, error) {
	return l.ProbeAt(ctx, h, VIP, count, timeout)
}

// ProbeAt is ProbeFrom for the cluster at vip.
func (l *Lab) ProbeAt(ctx context.Context, h *Host, vip netip.Addr, count int, timeout time.Duration) ([]ProbeResult, error) {
	var res []ProbeResult
	err := InNetns(h.NS, func() error {
		res = Probe(ctx, netip.AddrPortFrom(vip, demoPort).String(), count, timeout)
		return nil
	})
	return res, err
}

func (l *Lab) demoRound(ctx context.Context, w io.Writer, conns int) error {
	res, err := l.ProbeFrom(ctx, l.Client, conns, 2*time.Second)
	if err != nil {
		return err
	}
	holder := l.holders()
	served := map[string]int{}
	predicted := map[int]int{}
	wrong, failed := 0, 0
	for _, r := range res {
		if r.Err != nil {
			failed++
			continue
		}
		node, err := demoHash.NodeForPorts(ClientAddr, uint16(r.LocalPort), demoPort)
		if err != nil {
			return err
		}
		predicted[node]++
		served[r.Node]++
		if r.Node != holder[node] {
			wrong++
		}
	}
	fmt.Fprintf(w, "  %-6s %-9s %s\n", "node", "served", "hash predicts (node numbers it holds)")
	names := make([]string, 0, len(served))
	for name := range served {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		want := 0
		for node, c := range predicted {
			if holder[node] == name {
				want += c
			}
		}
		fmt.Fprintf(w, "  %-6s %-9d %d\n", name, served[name], want)
	}
	fmt.Fprintf(w, "  %d connections, %d failed, %d served by a node the hash did not name\n", len(res), failed, wrong)
	if failed > 0 || wrong > 0 {
		return fmt.Errorf("demo: %d connections failed, %d went to the wrong node", failed, wrong)
	}
	return nil
}

// holders maps each node number to the host that holds it, from the
// control files: exactly what each daemon answers for right now.
func (l *Lab) holders() map[int]string {
	h := map[int]string{}
	for _, n := range l.Nodes {
		b, err := os.ReadFile(l.ControlFile(n))
		if err != nil {
			continue
		}
		for _, f := range strings.Split(strings.TrimSpace(string(b)), ",") {
			if k, err := strconv.Atoi(f); err == nil {
				h[k] = n.Name
			}
		}
	}
	return h
}
