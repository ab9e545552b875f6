package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clusterip/clusterip/internal/lab"
)

// agent is the OCF resource agent under test.
var agent, _ = filepath.Abs("../dist/ocf/ClusterIP")

// OCF exit codes.
const (
	ocfSuccess    = 0
	ocfNotRunning = 7
)

// ocfAgent runs the agent's action on h for clone instance clone (0-based)
// of max, against h's daemon, as Pacemaker would; it returns the exit code
// and the output.
func ocfAgent(t *testing.T, c *cluster, h *lab.Host, action string, clone, max int) (int, string) {
	t.Helper()
	cmd := exec.Command("nsenter", "--net=/run/netns/"+h.NS, "--", agent, action)
	cmd.Env = append(os.Environ(),
		"OCF_ROOT=/usr/lib/ocf",
		"OCF_RESOURCE_INSTANCE=cip:"+strconv.Itoa(clone),
		"OCF_RESKEY_ip="+lab.VIP.String(),
		"OCF_RESKEY_clusterctl="+clusterctl,
		"OCF_RESKEY_socket="+c.Socket(h),
		"OCF_RESKEY_control_dir="+c.ControlDir(h),
		"OCF_RESKEY_CRM_meta_clone="+strconv.Itoa(clone),
		"OCF_RESKEY_CRM_meta_clone_max="+strconv.Itoa(max),
		"OCF_RESKEY_CRM_meta_interval=10000",
	)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	} else if err != nil {
		t.Fatalf("%s: %v", action, err)
	}
	return 0, string(out)
}

// newDaemonsOnly is a lab of nodes whose daemons run with no cluster: the
// agent makes them.
func newDaemonsOnly(t *testing.T, nodes int) *cluster {
	t.Helper()
	c := &cluster{Lab: newLab(t, nodes, false), t: t, vip: lab.VIP, client: lab.ClientAddr, mode: "sourceip-sourceport", daemons: map[string]*lab.Proc{}}
	for _, h := range c.Nodes {
		p, err := c.StartDaemon(h)
		if err != nil {
			t.Fatal(err)
		}
		c.daemons[h.Name] = p
		if _, err := c.StartServer(h, "--tcp", ":80", "--udp", ":7"); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// Debian's ocf-tester, from resource-agents, passes the agent against a
// real daemon: meta-data, validate-all, probes, start and stop twice each.
func TestOCFTester(t *testing.T) {
	if _, err := exec.LookPath("ocf-tester"); err != nil {
		t.Skip("ocf-tester not installed (apt-get install resource-agents)")
	}
	c := newDaemonsOnly(t, 1)
	h := c.Nodes[0]
	out, err := c.Run(h, "ocf-tester", "-v", "-n", "cip", "-o", "ip="+lab.VIP.String(), "-o", "clusterctl="+clusterctl,
		"-o", "socket="+c.Socket(h), "-o", "control_dir="+c.ControlDir(h), agent)
	if err != nil || !strings.Contains(out, "passed all tests") {
		t.Fatalf("ocf-tester: %v\n%s", err, out)
	}
	if st := status(t, c, h); len(st) != 0 {
		t.Errorf("after ocf-tester's last stop the daemon still has %d clusters", len(st))
	}
}

// The clone lifecycle, as Pacemaker drives IPaddr2's: two nodes of a
// 3-instance clone; node 1 runs instances 1 and 3 (clone-node-max 2, after
// a failure), node 2 instance 2. Every connection is served by the node
// holding its number; stopping one instance leaves the other, stopping all
// removes the cluster; instances started at once on one node serialise.
func TestOCFAgentLifecycle(t *testing.T) {
	c := newDaemonsOnly(t, 2)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	want := func(h *lab.Host, action string, clone, code int) string {
		t.Helper()
		got, out := ocfAgent(t, c, h, action, clone, 3)
		if got != code {
			t.Fatalf("%s %s instance %d: exit %d, want %d\n%s", h.Name, action, clone, got, code, out)
		}
		return out
	}
	want(n1, "monitor", 0, ocfNotRunning) // a probe before anything
	want(n1, "validate-all", 0, ocfSuccess)
	if code, out := ocfAgent(t, c, n1, "meta-data", 0, 3); code != 0 || !strings.Contains(out, `<resource-agent name="ClusterIP"`) {
		t.Fatalf("meta-data: %d\n%s", code, out)
	}
	// Instances 0 and 2 at once on n1: the lock serialises them.
	var wg sync.WaitGroup
	for _, clone := range []int{0, 2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code, out := ocfAgent(t, c, n1, "start", clone, 3); code != 0 {
				t.Errorf("n1 start instance %d: exit %d\n%s", clone, code, out)
			}
		}()
	}
	wg.Wait()
	want(n2, "start", 1, ocfSuccess)
	want(n1, "monitor", 0, ocfSuccess)
	want(n1, "monitor", 2, ocfSuccess)
	want(n1, "monitor", 1, ocfNotRunning)
	want(n2, "monitor", 1, ocfSuccess)
	want(n1, "start", 0, ocfSuccess) // again: nothing to do
	if got := c.serving(n1) + " " + c.serving(n2); got != "1,3 2" {
		t.Fatalf("control files: %q, want \"1,3 2\"", got)
	}
	st := status(t, c, n1)[0]
	if st.HashMode != "sourceip-sourceport" || st.TotalNodes != 3 || st.ClusterMAC != ipaddr2MAC(t, c, n1) {
		t.Errorf("cluster %+v: want IPaddr2's hash, 3 nodes and IPaddr2's MAC %s", st, ipaddr2MAC(t, c, n1))
	}
	if err := c.WaitServingAt(t.Context(), c.vip); err != nil {
		t.Fatal(err)
	}
	res, err := c.ProbeAt(t.Context(), c.Client, c.vip, 24, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	holder := map[int]string{1: "n1", 2: "n2", 3: "n1"}
	for _, r := range res {
		if r.Err != nil {
			t.Errorf("connection from port %d failed: %v", r.LocalPort, r.Err)
			continue
		}
		if k := predict(t, c.mode, 3, c.client.String(), r.LocalPort, 80); r.Node != holder[k] {
			t.Errorf("connection from port %d (node %d) served by %s, which does not hold it", r.LocalPort, k, r.Node)
		}
	}

	want(n1, "stop", 0, ocfSuccess)
	want(n1, "monitor", 0, ocfNotRunning)
	want(n1, "monitor", 2, ocfSuccess)
	if got := c.serving(n1); got != "3" {
		t.Errorf("n1 after stopping instance 1: %q, want \"3\"", got)
	}
	want(n1, "stop", 2, ocfSuccess)
	want(n1, "stop", 2, ocfSuccess) // again: not held is stopped
	if st := status(t, c, n1); len(st) != 0 {
		t.Errorf("n1 with no instance left still has %d clusters", len(st))
	}
	if _, err := os.Stat(c.ControlFileOf(n1, c.vip)); !os.IsNotExist(err) {
		t.Errorf("n1's control file is still there: %v", err)
	}
	want(n2, "stop", 1, ocfSuccess)
}

// ipaddr2MAC is the MAC IPaddr2 derives for the lab VIP on h, by
// IPaddr2's own steps: findif for the netmask and broadcast, then the MD5 of
// "ip netmask broadcast", made multicast.
func ipaddr2MAC(t *testing.T, c *cluster, h *lab.Host) string {
	t.Helper()
	// findif, as IPaddr2 runs it: "eth0 netmask 24 broadcast " here (the
	// lab's addresses have no broadcast address).
	nic, err := c.Run(h, "sh", "-c", `. /usr/lib/ocf/lib/heartbeat/ocf-shellfuncs; . /usr/lib/ocf/lib/heartbeat/findif.sh; OCF_RESKEY_ip=`+lab.VIP.String()+` findif`)
	f := strings.Fields(strings.NewReplacer("netmask ", "", "broadcast ", "").Replace(nic))
	if err != nil || len(f) < 2 {
		t.Fatalf("findif: %q, %v", nic, err)
	}
	out, err := c.Run(h, "sh", "-c", `echo `+lab.VIP.String()+` `+strings.Join(f[1:], " ")+` | md5sum | sed -e 's#\(............\).*#\1#' -e 's#..#&:#g; s#:$##' -e 's#^\(.\)[02468aAcCeE]#\11#'`)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// strongSwan's ha plugin writes +N/-N as its own user: a control file given
// to it by --control-owner (or by root's chown, which lasts while the
// cluster does) is its to read and write, and nobody else's.
func TestControlOwner(t *testing.T) {
	c := newDaemonsOnly(t, 1)
	n1 := c.Nodes[0]
	// The lab's directory is private; let nobody reach the control files.
	// (Its parent is the system's temporary directory, open to all: it is
	// not ours to change.)
	if err := os.Chmod(c.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c.ctl(n1, "new", "--vip", lab.VIP.String(), "--interface", "eth0", "--hashmode", "sourceip", "--total-nodes", "2",
		"--control-owner", "nobody:nogroup")
	file := c.ControlFileOf(n1, lab.VIP)
	owner := func() string {
		fi, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		return fmt.Sprintf("%d:%d %o", st.Uid, st.Gid, fi.Mode().Perm())
	}
	if got := owner(); got != "65534:65534 600" {
		t.Fatalf("control file %s, want 65534:65534 600", got)
	}
	as := func(uid int, cmd string) (string, error) {
		return c.Run(n1, "setpriv", "--reuid="+strconv.Itoa(uid), "--regid="+strconv.Itoa(uid), "--clear-groups", "sh", "-c", cmd)
	}
	if out, err := as(65534, "echo +2 > "+file+" && echo +1 > "+file+" && cat "+file); err != nil || out != "1,2\n" {
		t.Fatalf("the owner's +1 +2: %v %q", err, out)
	}
	if out, err := as(1, "echo -1 > "+file); err == nil {
		t.Errorf("another user wrote the control file: %q", out)
	}
	// root gives it to another user; it stays theirs while the cluster lives.
	if err := os.Chown(file, 1, 1); err != nil {
		t.Fatal(err)
	}
	if out, err := as(1, "echo -1 > "+file+" && cat "+file); err != nil || out != "2\n" {
		t.Fatalf("the new owner's -1: %v %q", err, out)
	}
	if out, err := as(65534, "echo +1 > "+file); err == nil {
		t.Errorf("the former owner still writes: %q", out)
	}
	if got := owner(); got != "1:1 600" {
		t.Errorf("after chown and use: %s, want 1:1 600", got)
	}
	if out, err := c.Clusterctl(n1, "save"); err != nil || !strings.Contains(out, "--control-owner nobody:nogroup") {
		t.Errorf("save: %v\n%s", err, out)
	}
	if out, err := c.Clusterctl(n1, "new", "--vip", "192.0.2.101", "--interface", "eth0", "--hashmode", "sourceip", "--total-nodes", "2",
		"--control-owner", "no-such-user"); err == nil || !strings.Contains(out, `no user "no-such-user"`) {
		t.Errorf("new with an unknown owner: %v %q", err, out)
	}
	if st := status(t, c, n1); len(st) != 1 {
		t.Errorf("the refused new left %d clusters", len(st))
	}
}
