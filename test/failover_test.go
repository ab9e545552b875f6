package test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clusterip/clusterip/internal/lab"
)

// newFailoverCluster is newCluster with heartbeats: every daemon joins the
// others with a shared gossip key. extra is added to every `new`.
func newFailoverCluster(t *testing.T, nodes int, mode string, extra ...string) *cluster {
	t.Helper()
	return newFailoverClusterWith(t, nodes, mode, nil, extra...)
}

// newFailoverClusterWith is newFailoverCluster with daemonArgs added to
// every daemon's command line.
func newFailoverClusterWith(t *testing.T, nodes int, mode string, daemonArgs []string, extra ...string) *cluster {
	t.Helper()
	return newFailoverClusterAt(t, lab.VIP, nodes, mode, daemonArgs, extra...)
}

// newFailoverClusterAt is newFailoverClusterWith for vip.
func newFailoverClusterAt(t *testing.T, vip netip.Addr, nodes int, mode string, daemonArgs []string, extra ...string) *cluster {
	t.Helper()
	c := &cluster{Lab: newLab(t, nodes, false), t: t, vip: vip, client: clientOf(vip), mode: mode, daemons: map[string]*lab.Proc{}, daemonArgs: daemonArgs}
	key := filepath.Join(c.Dir, "gossip.key")
	if out, err := exec.Command(clusterctl, "genkey", key).CombinedOutput(); err != nil {
		t.Fatalf("genkey: %v %s", err, out)
	}
	for i, h := range c.Nodes {
		if _, err := c.StartServer(h, "--tcp", ":80", "--udp", ":7", "--health-file", c.healthFile(h)); err != nil {
			t.Fatal(err)
		}
		c.startFailoverDaemon(h, key, i+1, extra...)
	}
	for _, h := range c.Nodes {
		if err := c.WaitListening(h, 7); err != nil {
			t.Fatal(err)
		}
	}
	c.waitHome()
	return c
}

func (c *cluster) peers() string {
	var p []string
	for _, h := range c.Nodes {
		p = append(p, h.Addr.String())
	}
	return strings.Join(p, ",")
}

func (c *cluster) healthFile(h *lab.Host) string { return filepath.Join(c.Dir, "down-"+h.Name) }

// startFailoverDaemon starts h's daemon with membership and creates the
// cluster with home number k, through a config file as a node would at boot.
func (c *cluster) startFailoverDaemon(h *lab.Host, key string, k int, extra ...string) {
	c.t.Helper()
	conf := filepath.Join(c.Dir, h.Name+".conf")
	line := fmt.Sprintf("new --vip %s --interface eth0 --hashmode %s --total-nodes %d --local-node %d %s\n",
		c.vip, c.mode, len(c.Nodes), k, strings.Join(extra, " "))
	if err := os.WriteFile(conf, []byte(line), 0o600); err != nil {
		c.t.Fatal(err)
	}
	p, err := c.StartDaemon(h, append([]string{"--config", conf, "--peers", c.peers(), "--gossip-key", key, "--node-name", h.Name}, c.daemonArgs...)...)
	if err != nil {
		c.t.Fatal(err)
	}
	c.daemons[h.Name] = p
}

func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).Output()
	return string(out), err
}

// serving reads h's control file: the numbers it answers for now.
func (c *cluster) serving(h *lab.Host) string {
	b, err := os.ReadFile(c.ControlFileOf(h, c.vip))
	if err != nil {
		return "error: " + err.Error()
	}
	return strings.TrimSpace(string(b))
}

func (c *cluster) servingAll() string {
	var s []string
	for _, h := range c.Nodes {
		s = append(s, h.Name+"="+c.serving(h))
	}
	return strings.Join(s, " ")
}

// waitFor polls until the nodes serve exactly want (e.g. "n1=1 n2=2 n3=3").
func (c *cluster) waitFor(timeout time.Duration, want string) {
	c.t.Helper()
	eventually(c.t, timeout, "serving "+want, func() (bool, string) {
		got := c.servingAll()
		return got == want, got
	})
}

func (c *cluster) waitHome() {
	c.t.Helper()
	var want []string
	for i, h := range c.Nodes {
		want = append(want, fmt.Sprintf("%s=%d", h.Name, i+1))
	}
	c.waitFor(10*time.Second, strings.Join(want, " "))
}

// longConn is a long-lived TCP connection from the client to the VIP's echo
// service.
type longConn struct {
	conn   net.Conn
	r      *bufio.Reader
	port   int
	server string // who answered first
}

func (c *cluster) dialLong(port int) (*longConn, error) {
	var conn net.Conn
	err := inNetns(c.Client.NS, func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: c.client.AsSlice(), Port: port}, Timeout: 2 * time.Second}
		var err error
		conn, err = d.Dial("tcp", net.JoinHostPort(c.vip.String(), "7"))
		return err
	})
	if err != nil {
		return nil, err
	}
	l := &longConn{conn: conn, r: bufio.NewReader(conn), port: port}
	c.t.Cleanup(func() { conn.Close() })
	l.server, err = l.exchange("hello")
	return l, err
}

// exchange sends a line and returns the name of the node that echoed it.
func (l *longConn) exchange(msg string) (string, error) {
	l.conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintln(l.conn, msg); err != nil {
		return "", err
	}
	line, err := l.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	name, got, _ := strings.Cut(strings.TrimSpace(line), " ")
	if got != msg {
		return "", fmt.Errorf("echo %q for %q", got, msg)
	}
	return name, nil
}

// openLong opens count long-lived connections from ports hashing to node k.
func (c *cluster) openLong(k, count, base int) []*longConn {
	c.t.Helper()
	var out []*longConn
	for port := base; len(out) < count && port < base+2000; port++ {
		if predict(c.t, c.mode, len(c.Nodes), c.client.String(), port, 7) != k {
			continue
		}
		l, err := c.dialLong(port)
		if err != nil {
			c.t.Fatalf("long-lived connection from port %d: %v", port, err)
		}
		out = append(out, l)
	}
	return out
}

// checkLong exchanges a line on each connection; each must still be served
// by the node that served it first.
func checkLong(t *testing.T, what string, conns []*longConn) {
	t.Helper()
	for _, l := range conns {
		got, err := l.exchange("still there?")
		if err != nil {
			t.Errorf("%s: connection from port %d (served by %s) broke: %v", what, l.port, l.server, err)
		} else if got != l.server {
			t.Errorf("%s: connection from port %d moved from %s to %s", what, l.port, l.server, got)
		}
	}
}

// probeOK opens connections and checks each is served by the node whose
// control file holds its number.
func (c *cluster) probeOK(what string, count int) map[string]int {
	c.t.Helper()
	res, err := c.ProbeAt(context.Background(), c.Client, c.vip, count, 2*time.Second)
	if err != nil {
		c.t.Fatal(err)
	}
	holder := map[int]string{}
	for _, h := range c.Nodes {
		for _, n := range strings.Split(c.serving(h), ",") {
			if k, err := strconv.Atoi(n); err == nil {
				holder[k] = h.Name
			}
		}
	}
	served := map[string]int{}
	for _, r := range res {
		if r.Err != nil {
			c.t.Errorf("%s: connection from port %d failed: %v", what, r.LocalPort, r.Err)
			continue
		}
		k := predict(c.t, c.mode, len(c.Nodes), c.client.String(), r.LocalPort, 80)
		if r.Node != holder[k] {
			c.t.Errorf("%s: connection from port %d (node %d) served by %s; the control files say %q", what, r.LocalPort, k, r.Node, holder[k])
		}
		served[r.Node]++
	}
	return served
}

// kill -9 of a daemon: the survivors take its number at once; clients of
// the dead node are reset at their next packet; when it comes back its
// number goes home, and connections the survivors opened meanwhile stay.
func TestFailoverKillAndReturn(t *testing.T) {
	c := newFailoverCluster(t, 3, "sourceip-sourceport")
	onN3 := c.openLong(3, 3, 44000)
	if err := c.daemons["n3"].Stop(syscall.SIGKILL, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "survivors take node 3", func() (bool, string) {
		s := c.serving(c.Nodes[0]) + "," + c.serving(c.Nodes[1])
		return strings.Count(s, "3") == 1 && strings.Contains(s, "1") && strings.Contains(s, "2"), c.servingAll()
	})
	for _, l := range onN3 {
		if _, err := l.exchange("after the crash"); err == nil || !strings.Contains(err.Error(), "reset") {
			t.Errorf("connection from port %d to the dead node: %v, want a reset", l.port, err)
		}
	}
	if served := c.probeOK("after takeover", 30); served["n3"] != 0 {
		t.Errorf("dead n3 served %d connections", served["n3"])
	}
	during := c.openLong(3, 3, 45000)
	for _, l := range during {
		if l.server == "n3" {
			t.Fatalf("connection during the outage served by dead n3")
		}
	}

	c.startFailoverDaemon(c.Nodes[2], filepath.Join(c.Dir, "gossip.key"), 3)
	c.waitHome()
	checkLong(t, "after n3 returned", during)
	after := c.openLong(3, 2, 46000)
	for _, l := range after {
		if l.server != "n3" {
			t.Errorf("new connection for node 3 after return served by %s, want n3", l.server)
		}
	}
	out := c.ctl(c.Nodes[0], "status")
	if !strings.Contains(out, "n3") || !strings.Contains(out, "alive") {
		t.Errorf("status does not show n3 alive:\n%s", out)
	}
}

// Drain hands the numbers away for new connections while the node keeps
// serving the ones it has; resume takes them back, and connections the
// others opened meanwhile stay with them. The connections opened before are
// served by the kernel path and idle through the handoff: the flow table
// learns them from the socket table.
func TestDrainAndResumeKeepConnections(t *testing.T) {
	c := newFailoverCluster(t, 3, "sourceip-sourceport")
	n1 := c.Nodes[0]
	before := c.openLong(1, 4, 47000)
	if st := status(t, c, n1)[0]; !st.KernelPath || fmt.Sprint(st.InKernel) != fmt.Sprint(st.Serving) || st.Packets.KernelAnswered == 0 {
		t.Errorf("settled n1: kernel path %v for %v (serving %v), %d packets through it", st.KernelPath, st.InKernel, st.Serving, st.Packets.KernelAnswered)
	}
	c.ctl(n1, "drain", lab.VIP.String())
	eventually(t, 5*time.Second, "n1 drained", func() (bool, string) {
		return c.serving(n1) == "", c.servingAll()
	})
	checkLong(t, "during drain", before)
	if out := c.ctl(n1, "status"); !strings.Contains(out, "draining") {
		t.Errorf("status does not show n1 draining:\n%s", out)
	}
	during := c.openLong(1, 3, 48000)
	for _, l := range during {
		if l.server == "n1" {
			t.Errorf("new connection during drain served by draining n1")
		}
	}
	if served := c.probeOK("during drain", 30); served["n1"] != 0 {
		t.Errorf("draining n1 took %d new connections", served["n1"])
	}
	c.ctl(n1, "resume", lab.VIP.String())
	c.waitHome()
	checkLong(t, "after resume (opened before drain)", before)
	checkLong(t, "after resume (opened during drain)", during)
	c.probeOK("after resume", 30)
}

// A failing health check makes the node hand its numbers away; recovery
// brings them back.
func TestHealthCheckMovesNumbers(t *testing.T) {
	c := newFailoverCluster(t, 3, "sourceip-sourceport",
		"--check", "http://127.0.0.1/health", "--check-interval", "100ms", "--check-fall", "2", "--check-rise", "2")
	n2 := c.Nodes[1]
	kept := c.openLong(2, 2, 49000)
	if err := os.WriteFile(c.healthFile(n2), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "sick n2 gives up node 2", func() (bool, string) {
		return c.serving(n2) == "", c.servingAll()
	})
	if out := c.ctl(n2, "status"); !strings.Contains(out, "unhealthy") {
		t.Errorf("status does not show n2 unhealthy:\n%s", out)
	}
	checkLong(t, "while n2 is unhealthy", kept)
	c.probeOK("while n2 is unhealthy", 20)
	os.Remove(c.healthFile(n2))
	c.waitHome()
}

// A node with the wrong gossip key can neither join nor move a number: it
// serves nothing, and the others serve its number.
func TestWrongGossipKeyKeptOut(t *testing.T) {
	c := &cluster{Lab: newLab(t, 3, false), t: t, vip: lab.VIP, client: lab.ClientAddr, mode: "sourceip", daemons: map[string]*lab.Proc{}}
	good, bad := filepath.Join(c.Dir, "good.key"), filepath.Join(c.Dir, "bad.key")
	for _, f := range []string{good, bad} {
		if out, err := exec.Command(clusterctl, "genkey", f).CombinedOutput(); err != nil {
			t.Fatalf("genkey: %v %s", err, out)
		}
	}
	for i, h := range c.Nodes {
		key := good
		if h.Name == "n3" {
			key = bad
		}
		c.StartServer(h)
		c.startFailoverDaemon(h, key, i+1)
	}
	eventually(t, 10*time.Second, "n1 and n2 serve everything", func() (bool, string) {
		s := c.servingAll()
		return (s == "n1=1,3 n2=2 n3=" || s == "n1=1 n2=2,3 n3="), s
	})
	// An absence cannot be polled for: watch for a while that the outsider,
	// past every timeout it has, still changes nothing.
	time.Sleep(2 * time.Second)
	if s := c.servingAll(); s != "n1=1,3 n2=2 n3=" && s != "n1=1 n2=2,3 n3=" {
		t.Errorf("with a wrong key on n3: %s", s)
	}
	out := c.ctl(c.Nodes[0], "status")
	if strings.Contains(out, "n3 ") {
		t.Errorf("n3 with a wrong key is a member:\n%s", out)
	}
}

// During a partition each side serves every number it can see is orphaned,
// so no number goes unserved; when the partition heals the duplicates end
// and numbers go home.
func TestPartitionHeals(t *testing.T) {
	c := newFailoverCluster(t, 3, "sourceip-sourceport")
	n3 := c.Nodes[2]
	cut := func(op string) {
		for _, pair := range [][2]*lab.Host{{n3, c.Nodes[0]}, {n3, c.Nodes[1]}, {c.Nodes[0], n3}, {c.Nodes[1], n3}} {
			if _, err := c.Run(pair[0], "ip", "route", op, "blackhole", pair[1].Addr.String()+"/32"); err != nil {
				t.Fatal(err)
			}
		}
	}
	cut("add")
	eventually(t, 5*time.Second, "both sides serve every number", func() (bool, string) {
		a := map[string]bool{}
		for _, h := range c.Nodes[:2] {
			for _, n := range strings.Split(c.serving(h), ",") {
				a[n] = true
			}
		}
		return c.serving(n3) == "1,2,3" && a["1"] && a["2"] && a["3"] && len(a) == 3, c.servingAll()
	})
	cut("del")
	c.waitFor(15*time.Second, "n1=1 n2=2 n3=3")
}

// Under automatic failover the control file still shows exactly what the
// node answers, status agrees with it, and writes are overrides: -N takes a
// number away from the node, +N makes it the node's own.
func TestControlFileUnderFailover(t *testing.T) {
	c := newFailoverCluster(t, 3, "sourceip-sourceport")
	n1, n2 := c.Nodes[0], c.Nodes[1]
	write := func(h *lab.Host, cmd string) {
		t.Helper()
		if out, err := c.Run(h, "bash", "-c", "echo "+cmd+" > "+c.ControlFile(h)); err != nil {
			t.Fatalf("echo %s on %s: %v %s", cmd, h.Name, err, out)
		}
	}
	write(n1, "-1")
	eventually(t, 5*time.Second, "n1 gives up 1", func() (bool, string) {
		s := c.servingAll()
		return c.serving(n1) == "" && (s == "n1= n2=1,2 n3=3" || s == "n1= n2=2 n3=1,3"), s
	})
	c.probeOK("after -1 on n1", 30)
	if out, err := c.Run(n1, "bash", "-c", "echo -1 > "+c.ControlFile(n1)); err == nil || !strings.Contains(out, "No such file") {
		t.Errorf("second -1: %v %q, want ENOENT", err, out)
	}
	write(n1, "+1")
	c.waitHome()
	write(n1, "+2") // n1 claims 2 too; of two homes the first name wins
	c.waitFor(5*time.Second, "n1=1,2 n2= n3=3")
	c.probeOK("after +2 on n1", 30)
	for _, h := range c.Nodes {
		st := status(t, c, h)
		if got := strings.Trim(strings.ReplaceAll(fmt.Sprint(st[0].Serving), " ", ","), "[]"); got != c.serving(h) {
			t.Errorf("%s: status says serving %q, control file %q", h.Name, got, c.serving(h))
		}
		if h == n2 && len(st[0].Members) != 3 {
			t.Errorf("status on n2 lists %d members, want 3: %+v", len(st[0].Members), st[0].Members)
		}
	}
	write(n1, "-2")
	c.waitHome()
	if out, err := c.Run(n2, "bash", "-c", "echo +2 > "+c.ControlFile(n2)); err == nil || !strings.Contains(out, "Cannot allocate memory") {
		t.Errorf("+2 on n2, whose home 2 is: %v %q, want ENOMEM", err, out)
	}
}

// drain --timeout: connections the drained node still has when the timeout
// passes are dropped there, and the number's new owner resets them.
func TestDrainTimeoutEndsKeptConnections(t *testing.T) {
	c := newFailoverCluster(t, 3, "sourceip-sourceport")
	n1 := c.Nodes[0]
	kept := c.openLong(1, 2, 50000)
	c.ctl(n1, "drain", lab.VIP.String(), "--timeout", "4s")
	eventually(t, 5*time.Second, "n1 drained", func() (bool, string) {
		return c.serving(n1) == "", c.servingAll()
	})
	checkLong(t, "before the drain timeout", kept)
	eventually(t, 8*time.Second, "kept connections reset after the timeout", func() (bool, string) {
		reset := 0
		for _, l := range kept {
			if _, err := l.exchange("still there?"); err != nil {
				reset++
			}
		}
		return reset == len(kept), fmt.Sprintf("%d of %d reset", reset, len(kept))
	})
	if st := status(t, c, n1)[0]; st.Flows.Kept != 0 {
		t.Errorf("n1 still keeps %d flows after the drain timeout", st.Flows.Kept)
	}
}

// udpFlows are connectionless flows from the client to the VIP's echo
// port, one socket (one source port) each, kept open for the test.
type udpFlows struct {
	t     *testing.T
	socks []*net.UDPConn
	vip   *net.UDPAddr
}

func openUDPFlows(t *testing.T, c *cluster, base, count int) *udpFlows {
	t.Helper()
	f := &udpFlows{t: t, socks: make([]*net.UDPConn, count), vip: &net.UDPAddr{IP: c.vip.AsSlice(), Port: 7}}
	t.Cleanup(func() {
		for _, s := range f.socks {
			if s != nil {
				s.Close()
			}
		}
	})
	err := inNetns(c.Client.NS, func() error {
		for i := range f.socks {
			s, err := net.ListenUDP("udp", &net.UDPAddr{IP: c.client.AsSlice(), Port: base + i})
			if err != nil {
				return err
			}
			f.socks[i] = s
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// exchange sends one datagram on each flow in which and returns, per flow,
// the names of the nodes that answered it. The flows are read side by side,
// so that one exchange takes about 150 ms, not 150 ms per flow: a caller
// that keeps flows active through a handoff (about a second) must send on
// them several times within it.
func (f *udpFlows) exchange(which []int) map[int][]string {
	f.t.Helper()
	for _, i := range which {
		if _, err := f.socks[i].WriteTo([]byte("ping"), f.vip); err != nil {
			f.t.Fatal(err)
		}
	}
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		out = map[int][]string{}
	)
	for _, i := range which {
		wg.Add(1)
		go func(s *net.UDPConn) {
			defer wg.Done()
			buf := make([]byte, 256)
			s.SetReadDeadline(time.Now().Add(2 * time.Second))
			for {
				n, _, err := s.ReadFrom(buf)
				if err != nil {
					return
				}
				mu.Lock()
				out[i] = append(out[i], strings.Fields(string(buf[:n]))[0])
				mu.Unlock()
				s.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
			}
		}(f.socks[i])
	}
	wg.Wait()
	return out
}

// TestUDPFlowsInKernelPathSurviveDrain: with --peers, a settled number's
// UDP is answered in the kernel, and a drain and resume break no flow:
// every datagram is answered exactly once, by the node that had its flow,
// a flow quiet through the whole handoff included (the kernel path's flow
// map remembers it, and the release lists it).
func TestUDPFlowsInKernelPathSurviveDrain(t *testing.T) {
	c := newFailoverCluster(t, 3, "sourceip-sourceport")
	n1 := c.Nodes[0]
	flows := openUDPFlows(t, c, 46000, 24)
	all, active, quiet := []int{}, []int{}, []int{}
	for i := range 24 {
		all = append(all, i)
		if i%4 == 3 {
			quiet = append(quiet, i)
		} else {
			active = append(active, i)
		}
	}
	before := status(t, c, n1)[0].Packets
	owner := map[int]string{}
	for i, names := range flows.exchange(all) {
		if len(names) != 1 {
			t.Fatalf("flow %d answered by %v before the drain", i, names)
		}
		owner[i] = names[0]
	}
	if len(owner) != len(all) {
		t.Fatalf("%d of %d flows answered", len(owner), len(all))
	}
	ofN1, quietOfN1 := 0, 0
	for i, n := range owner {
		if n == "n1" {
			ofN1++
			if slices.Contains(quiet, i) {
				quietOfN1++
			}
		}
	}
	if quietOfN1 == 0 {
		t.Fatal("none of n1's flows is a quiet one: the test proves nothing (change the ports)")
	}
	if after := status(t, c, n1)[0].Packets; ofN1 == 0 || after.KernelAnswered-before.KernelAnswered < uint64(ofN1) || after.UserAnswered != before.UserAnswered {
		t.Errorf("n1's %d UDP flows: %d datagrams through the kernel path, %d through user space; want all in the kernel",
			ofN1, after.KernelAnswered-before.KernelAnswered, after.UserAnswered-before.UserAnswered)
	}
	check := func(when string, got map[int][]string, which []int, same bool) {
		t.Helper()
		for _, i := range which {
			switch names := got[i]; {
			case len(names) != 1:
				t.Errorf("%s: flow %d (of %s) answered by %v, want exactly once", when, i, owner[i], names)
			case same && names[0] != owner[i]:
				t.Errorf("%s: flow %d moved from %s to %s", when, i, owner[i], names[0])
			}
		}
	}
	c.ctl(n1, "drain", lab.VIP.String())
	deadline := time.Now().Add(10 * time.Second)
	for c.serving(n1) != "" {
		check("during the drain", flows.exchange(active), active, true)
		if time.Now().After(deadline) {
			t.Fatalf("n1 not drained: %s", c.servingAll())
		}
		time.Sleep(100 * time.Millisecond)
	}
	check("drained", flows.exchange(active), active, true)
	if t.Failed() {
		for _, h := range c.Nodes {
			st := status(t, c, h)[0]
			t.Logf("%s: serving %v, in the kernel %v, packets %+v, flows %+v, members %+v", h.Name, st.Serving, st.InKernel, st.Packets, st.Flows, st.Members)
		}
	}
	check("drained, quiet flows", flows.exchange(quiet), quiet, true)
	c.ctl(n1, "resume", lab.VIP.String())
	c.waitHome()
	check("resumed", flows.exchange(all), all, true)
}
