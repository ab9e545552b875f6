package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clusterip/clusterip/internal/daemon"
	"github.com/clusterip/clusterip/internal/lab"
	"golang.org/x/sys/unix"
)

// configCluster starts a lab of nodes whose daemons load their clusters
// from a config file (node k's holds lines(k)), with a server each; it
// returns the cluster and the file of each node.
func configCluster(t *testing.T, nodes int, lines func(k int) string, daemonArgs func(h *lab.Host) []string) (*cluster, map[string]string) {
	t.Helper()
	c := &cluster{Lab: newLab(t, nodes, false), t: t, vip: lab.VIP, client: lab.ClientAddr, daemons: map[string]*lab.Proc{}}
	files := map[string]string{}
	for i, h := range c.Nodes {
		files[h.Name] = filepath.Join(c.Dir, h.Name+".conf")
		if err := os.WriteFile(files[h.Name], []byte(lines(i+1)), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := c.StartServer(h, "--tcp", ":80", "--udp", ":7"); err != nil {
			t.Fatal(err)
		}
		p, err := c.StartDaemon(h, append([]string{"--config", files[h.Name]}, daemonArgs(h)...)...)
		if err != nil {
			t.Fatal(err)
		}
		c.daemons[h.Name] = p
	}
	for _, h := range c.Nodes {
		if err := c.WaitListening(h, 7); err != nil {
			t.Fatal(err)
		}
	}
	return c, files
}

func curlVIP(c *cluster, vip string) (string, error) {
	out, err := c.Run(c.Client, "curl", "-sS", "--max-time", "2", "http://"+vip+"/")
	return strings.TrimSpace(out), err
}

// Reload applies the difference the config file made: a cluster added is
// created, a changed node set moves numbers without breaking connections, a
// removed cluster goes, another change recreates the cluster (its counters
// carry on); a bad file changes nothing and says why, to the caller and in
// the log.
func TestReload(t *testing.T) {
	a := "new --vip 192.0.2.100 --interface eth0 --hashmode sourceip --total-nodes 2 --local-node 1 --local-node 2\n"
	c, files := configCluster(t, 1, func(int) string { return a }, func(*lab.Host) []string { return nil })
	n1, file := c.Nodes[0], files["n1"]
	long, err := c.dialLong(47100)
	if err != nil {
		t.Fatal(err)
	}
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// Added.
	b := "new --vip 192.0.2.101 --interface eth0 --hashmode sourceip --total-nodes 1 --local-node 1   # a second VIP\n"
	write(a + b)
	if out := c.ctl(n1, "reload"); !strings.Contains(out, "1 added, 0 removed, 0 renumbered, 0 recreated, 1 unchanged") {
		t.Errorf("reload said %q", out)
	}
	if who, err := curlVIP(c, "192.0.2.101"); err != nil || who != "n1" {
		t.Errorf("added VIP: %q, %v", who, err)
	}
	checkLong(t, "after adding a VIP", []*longConn{long})

	// A bad file: refused whole, with the line, nothing changed.
	before := c.ctl(n1, "save")
	write(a + b + "new --vip 192.0.2.102 --interface eth0 --hashmode sourceip --total-nodes 2 --local-node 3\n")
	out, err := c.Clusterctl(n1, "reload")
	if err == nil || !strings.Contains(out, ":3: --local-node 3") {
		t.Errorf("reload of a bad file: %v %q", err, out)
	}
	if after := c.ctl(n1, "save"); after != before {
		t.Errorf("a refused reload changed the clusters:\n%s\nwant\n%s", after, before)
	}
	if !strings.Contains(c.Log("daemon-n1"), "reload refused") {
		t.Errorf("refused reload not logged")
	}

	// A changed node set (by SIGHUP): numbers move, the connection stays.
	write(strings.Replace(a, " --local-node 2", "", 1) + b)
	if err := c.daemons["n1"].Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "SIGHUP renumbers", func() (bool, string) { return c.serving(n1) == "1", c.serving(n1) })
	checkLong(t, "after a node-set change", []*longConn{long})

	// Removed, and another change recreates: the counters carry on.
	st0 := status(t, c, n1)[0]
	write(strings.Replace(a, " --local-node 2", " --hash-init 7", 1))
	if out := c.ctl(n1, "reload"); !strings.Contains(out, "0 added, 1 removed, 0 renumbered, 1 recreated") {
		t.Errorf("reload said %q", out)
	}
	st := status(t, c, n1)
	if len(st) != 1 || st[0].HashInit != 7 {
		t.Fatalf("after reload: %+v", st)
	}
	if got, was := st[0].Packets.KernelAnswered+st[0].Packets.UserAnswered, st0.Packets.KernelAnswered+st0.Packets.UserAnswered; got < was || was == 0 {
		t.Errorf("answered %d after the recreation, %d before: counters went back", got, was)
	}
	if !strings.Contains(c.Log("daemon-n1"), "recreating it") {
		t.Errorf("recreation not logged")
	}
	// A cluster created with `new` is not the file's: reload leaves it.
	c.ctl(n1, "new", "--vip", "192.0.2.103", "--interface", "eth0", "--hashmode", "sourceip", "--total-nodes", "1", "--local-node", "1")
	if out := c.ctl(n1, "reload"); !strings.Contains(out, "1 unchanged") || len(status(t, c, n1)) != 2 {
		t.Errorf("reload touched a cluster made with new: %q", out)
	}
}

// With automatic failover a changed node set moves numbers through the
// ordinary handoff: the connections of the number that moves keep working.
func TestReloadHandsOffUnderFailover(t *testing.T) {
	line := func(k int) string {
		return fmt.Sprintf("new --vip %s --interface eth0 --hashmode sourceip-sourceport --total-nodes 3 --local-node %d\n", lab.VIP, k)
	}
	key := filepath.Join(t.TempDir(), "k")
	if out, err := exec.Command(clusterctl, "genkey", key).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	c, files := configCluster(t, 3, line, func(h *lab.Host) []string {
		return []string{"--peers", "192.0.2.11,192.0.2.12,192.0.2.13", "--gossip-key", key, "--node-name", h.Name}
	})
	c.mode = "sourceip-sourceport"
	eventually(t, 10*time.Second, "home", func() (bool, string) {
		s := c.servingAll()
		return s == "n1=1 n2=2 n3=3", s
	})
	n3 := c.Nodes[2]
	kept := c.openLong(3, 3, 52000)
	os.WriteFile(files["n3"], []byte(strings.Replace(line(3), " --local-node 3", "", 1)), 0o600)
	c.ctl(n3, "reload")
	eventually(t, 5*time.Second, "n3 hands 3 away", func() (bool, string) { return c.serving(n3) == "", c.servingAll() })
	checkLong(t, "after the reload handed 3 away", kept)
	c.probeOK("after the reload", 20)
	os.WriteFile(files["n3"], []byte(line(3)), 0o600)
	c.ctl(n3, "reload")
	c.waitFor(5*time.Second, "n1=1 n2=2 n3=3")
	checkLong(t, "after 3 came home", kept)
}

// check validates a file as the daemon would load it, without touching the
// host, and says what is wrong, one line each.
func TestCheckConfig(t *testing.T) {
	l := newLab(t, 1, false)
	n1 := l.Nodes[0]
	before := readHost(t, l, n1)
	file := filepath.Join(l.Dir, "c.conf")
	for _, tt := range []struct {
		text string
		ok   bool
		want []string
	}{
		{"# fine\nnew --vip 192.0.2.100 --interface eth0 --hashmode sourceip --total-nodes 2 --local-node 1 # web\n", true, []string{"1 clusters, OK"}},
		{"new --vip 192.0.2.100 --interface eth0 --hashmode roundrobin --total-nodes 2\n", false, []string{":1: --hashmode"}},
		{"new --vip 192.0.2.100 --interface eth9 --hashmode sourceip --total-nodes 2\nnew --vip 192.0.2.11 --interface eth0 --hashmode sourceip --total-nodes 2\n",
			false, []string{"VIP 192.0.2.100: --interface eth9: no such interface", "VIP 192.0.2.11: --vip 192.0.2.11: already an address of eth0"}},
		{"new --vip 192.0.2.100 --interface eth0 --hashmode sourceip --total-nodes 2\nnew --vip 192.0.2.100 --interface eth0 --hashmode sourceip --total-nodes 2\n", false, []string{":2: VIP 192.0.2.100 already declared on line 1"}},
	} {
		os.WriteFile(file, []byte(tt.text), 0o600)
		out, err := l.Run(n1, clusterctl, "check", file)
		if (err == nil) != tt.ok {
			t.Errorf("check of %q: %v %s", tt.text, err, out)
		}
		for _, w := range tt.want {
			if !strings.Contains(out, w) {
				t.Errorf("check of %q said %q, want %q", tt.text, out, w)
			}
		}
	}
	if after := readHost(t, l, n1); !after.equal(before) {
		t.Errorf("check changed the host")
	}
}

// scrape fetches h's metrics from inside its namespace.
func scrape(t *testing.T, c *cluster, h *lab.Host, port int) string {
	t.Helper()
	out, err := c.Run(h, "curl", "-sS", "--max-time", "2", fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// metric returns the value of the sample whose name and labels start as
// prefix says, or -1.
func metric(text, prefix string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// Metrics in Prometheus's text format: the documented names, values that
// move with traffic and with handoffs, members, health, the Go runtime.
func TestMetrics(t *testing.T) {
	c := newFailoverClusterWith(t, 3, "sourceip-sourceport", []string{"--metrics-address", "127.0.0.1:9787"},
		"--check", "tcp:80", "--check-interval", "200ms")
	n1 := c.Nodes[0]
	m := scrape(t, c, n1, 9787)
	vip := lab.VIP.String()
	for _, want := range []string{
		`clusterip_build_info{goversion="` + runtime.Version() + `",version="`,
		`clusterip_cluster_info{clustermac="01:00:5e:00:02:64",hash_compat="clusterip",interface="eth0",mode="sourceip-sourceport",total_nodes="3",vip="` + vip + `"} 1`,
		`clusterip_node_served{node="1",vip="` + vip + `"} 1`,
		`clusterip_node_served{node="2",vip="` + vip + `"} 0`,
		`clusterip_packets_total{path="kernel",verdict="owned",vip="` + vip + `"}`,
		`clusterip_packets_total{path="user",verdict="not_owned",vip="` + vip + `"}`,
		`clusterip_packets_total{path="user",verdict="malformed",vip="` + vip + `"}`,
		`clusterip_flows_tracked{vip="` + vip + `"}`,
		`clusterip_member_up{addr="192.0.2.12:7946",member="n2"} 1`,
		`clusterip_handoffs_total{vip="` + vip + `"}`,
		`clusterip_health_check_up{check="tcp:80",vip="` + vip + `"} 1`,
		`go_goroutines `,
		`process_resident_memory_bytes `,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	answered := func(m string) float64 {
		return metric(m, `clusterip_packets_total{path="kernel",verdict="owned",vip="`+vip+`"}`) +
			metric(m, `clusterip_packets_total{path="user",verdict="owned",vip="`+vip+`"}`)
	}
	handoffs := metric(m, `clusterip_handoffs_total{vip="`+vip+`"}`)
	before := answered(m)
	c.openLong(1, 3, 53000)
	if after := answered(scrape(t, c, n1, 9787)); after <= before {
		t.Errorf("packets answered %v, then %v after three connections", before, after)
	}
	c.ctl(n1, "drain", vip)
	eventually(t, 5*time.Second, "drained", func() (bool, string) { return c.serving(n1) == "", c.servingAll() })
	m = scrape(t, c, n1, 9787)
	if metric(m, `clusterip_node_served{node="1",vip="`+vip+`"}`) != 0 || metric(m, `clusterip_handoffs_total{vip="`+vip+`"}`) <= handoffs {
		t.Errorf("after a drain: served %v, handoffs %v (were %v)", metric(m, `clusterip_node_served{node="1",vip="`+vip+`"}`),
			metric(m, `clusterip_handoffs_total{vip="`+vip+`"}`), handoffs)
	}
	c.daemons["n3"].Stop(syscall.SIGKILL, 5*time.Second)
	eventually(t, 5*time.Second, "n3 down in the metrics", func() (bool, string) {
		m := scrape(t, c, n1, 9787)
		return strings.Contains(m, `clusterip_member_up{addr="192.0.2.13:7946",member="n3"} 0`), ""
	})
}

// --notify runs a program for every change of the numbers served and for
// members going up and down, with documented arguments and environment;
// one that hangs is killed at its timeout and logged, and the daemon goes on.
func TestNotifyHook(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	script := filepath.Join(dir, "notify.sh")
	os.WriteFile(script, []byte(`#!/bin/sh
echo "$CLUSTERIP_NODE $* | $CLUSTERIP_EVENT $CLUSTERIP_VIP [$CLUSTERIP_BEFORE] [$CLUSTERIP_AFTER] $CLUSTERIP_MEMBER" >> "`+dir+`/events.$CLUSTERIP_NODE"
case "$CLUSTERIP_AFTER" in 2,3) sleep 30 ;; esac
`), 0o755)
	c := newFailoverClusterWith(t, 3, "sourceip-sourceport", []string{"--notify", script, "--notify-timeout", "1s"})
	events := func(h *lab.Host) string {
		b, _ := os.ReadFile(filepath.Join(dir, "events."+h.Name))
		return string(b)
	}
	vip := lab.VIP.String()
	eventually(t, 5*time.Second, "n1 told it serves 1", func() (bool, string) {
		return strings.Contains(events(c.Nodes[0]), "n1 serving "+vip+"  1 | serving "+vip+" [] [1]"), events(c.Nodes[0])
	})
	c.ctl(c.Nodes[0], "drain", vip)
	eventually(t, 5*time.Second, "drain reported", func() (bool, string) {
		return strings.Contains(events(c.Nodes[0]), "n1 serving "+vip+" 1  | serving "+vip+" [1] []"), events(c.Nodes[0])
	})
	c.ctl(c.Nodes[0], "resume", vip)
	c.daemons["n3"].Stop(syscall.SIGKILL, 5*time.Second)
	eventually(t, 5*time.Second, "member-down reported", func() (bool, string) {
		return strings.Contains(events(c.Nodes[0]), "n1 member-down n3 192.0.2.13:7946 | member-down  [] [] n3"), events(c.Nodes[0])
	})
	// n1 or n2 took 3: whichever now serves 2,3 ran a program that hangs.
	eventually(t, 5*time.Second, "a hanging program killed and logged", func() (bool, string) {
		l := c.Log("daemon-n1") + c.Log("daemon-n2")
		return strings.Contains(l, "notify: program killed after its timeout"), ""
	})
	// The resume hands 1 back from n2 to n1; until n2 has released it, n2
	// still answers it.
	eventually(t, 5*time.Second, "1 released to n1", func() (bool, string) {
		return strings.Contains(c.Log("daemon-n2"), "released 1 to n1"), c.Log("daemon-n2")
	})
	c.probeOK("with a hanging notify program", 10)
}

// Under systemd's watchdog the daemon pings while its loops and readers come
// round, and stops pinging when one is stuck (a reader thread stopped with
// ptrace here), so systemd restarts it; it pings again when it is unstuck.
func TestWatchdog(t *testing.T) {
	l, p, conn := underSystemd(t, "WATCHDOG_USEC=400000")
	h := l.Nodes[0]
	// pings counts WATCHDOG=1 messages received within d.
	pings := func(d time.Duration) int {
		n := 0
		buf := make([]byte, 256)
		for end := time.Now().Add(d); time.Now().Before(end); {
			conn.SetReadDeadline(end)
			k, err := conn.Read(buf)
			if err != nil {
				break
			}
			if string(buf[:k]) == "WATCHDOG=1" {
				n++
			}
		}
		return n
	}
	if n := pings(time.Second); n < 3 {
		t.Fatalf("%d watchdog pings in a second, want about 5", n)
	}
	// A reader thread: blocked in recvmmsg (syscall 299 on x86-64).
	if runtime.GOARCH != "amd64" {
		t.Skip("finds the reader by its x86-64 syscall number")
	}
	pid := p.Cmd.Process.Pid
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	tid := 0
	for _, e := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/syscall", pid, e.Name()))
		if strings.HasPrefix(string(b), "299 ") {
			tid, _ = strconv.Atoi(e.Name())
			break
		}
	}
	if tid == 0 {
		t.Fatal("no reader thread found")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.PtraceSeize(tid); err != nil {
		t.Fatalf("ptrace: %v", err)
	}
	detached := false
	detach := func() {
		if !detached {
			unix.PtraceDetach(tid)
			detached = true
		}
	}
	defer detach()
	if err := unix.PtraceInterrupt(tid); err != nil {
		t.Fatal(err)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(tid, &ws, unix.WALL, nil); err != nil {
		t.Fatal(err)
	}
	pings(3 * time.Second) // what was sent before the reader counted as stuck
	if n := pings(2 * time.Second); n != 0 {
		t.Errorf("%d watchdog pings with a reader stopped", n)
	}
	if !regexp.MustCompile(`watchdog: part of the daemon is stuck.*reader`).MatchString(l.Log("daemon-" + h.Name)) {
		t.Errorf("stuck reader not logged:\n%s", l.Log("daemon-"+h.Name))
	}
	detach()
	if n := pings(2 * time.Second); n < 2 {
		t.Errorf("%d watchdog pings after the reader went on", n)
	}
}

// The status document: schema and version, snake_case keys, lists never
// null, node numbers as integers; the table fits 100 columns.
func TestStatusDocument(t *testing.T) {
	c := newFailoverCluster(t, 3, "sourceip-sourceport-destport")
	n1 := c.Nodes[0]
	c.ctl(n1, "new", "--vip", "192.0.2.250", "--interface", "eth0", "--hashmode", "sourceip-sourceport-destport",
		"--total-nodes", "64", "--local-node", "1", "--local-node", "2", "--local-node", "3", "--local-node", "64",
		"--check", "http://127.0.0.1/health")
	var doc map[string]any
	if err := json.Unmarshal([]byte(c.ctl(n1, "status", "--json")), &doc); err != nil {
		t.Fatal(err)
	}
	if doc["schema"] != 1.0 || doc["version"] == "" || doc["node"] != "n1" {
		t.Errorf("schema %v, version %v, node %v", doc["schema"], doc["version"], doc["node"])
	}
	snake := regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if !snake.MatchString(k) {
					t.Errorf("%s: key %q is not snake_case", path, k)
				}
				if x == nil && k != "check" {
					t.Errorf("%s.%s is null", path, k)
				}
				walk(path+"."+k, x)
			}
		case []any:
			for i, x := range v {
				walk(fmt.Sprintf("%s[%d]", path, i), x)
			}
		}
	}
	walk("status", doc)
	var st daemon.Status
	json.Unmarshal([]byte(c.ctl(n1, "status", "--json")), &st)
	if len(st.Clusters) != 2 || fmt.Sprint(st.Clusters[0].Serving) != "[1]" || fmt.Sprint(st.Clusters[0].Members[0].Home) != "[1]" || st.Clusters[1].Check == nil {
		t.Errorf("status: %+v", st.Clusters)
	}
	for _, args := range [][]string{{"status"}, {"status", "-o", "wide"}} {
		out := c.ctl(n1, args...)
		for _, line := range strings.Split(out, "\n") {
			if len(line) > 100 && len(args) == 1 {
				t.Errorf("status line of %d columns:\n%s", len(line), line)
			}
		}
		if len(args) > 1 && !strings.Contains(out, "CLUSTERMAC") {
			t.Errorf("-o wide lacks CLUSTERMAC:\n%s", out)
		}
		if !strings.Contains(out, "1-3,64") {
			t.Errorf("node numbers not shown as ranges:\n%s", out)
		}
	}
	// A second drain without --timeout keeps the first one's.
	c.ctl(n1, "drain", lab.VIP.String(), "--timeout", "1h")
	until := status(t, c, n1)[0].DrainUntil
	c.ctl(n1, "drain", lab.VIP.String())
	if again := status(t, c, n1)[0].DrainUntil; until == "" || again != until {
		t.Errorf("drain until %q, then %q after a drain without --timeout", until, again)
	}
}

// version and --version say the same, and the daemon logs it.
func TestVersion(t *testing.T) {
	a, err1 := exec.Command(clusterctl, "version").Output()
	b, err2 := exec.Command(clusterctl, "--version").Output()
	if err1 != nil || err2 != nil || string(a) != string(b) || !strings.HasPrefix(string(a), "clusterctl ") || !strings.Contains(string(a), runtime.Version()) {
		t.Errorf("version %q %v, --version %q %v", a, err1, b, err2)
	}
}

// The daemon does its whole job with only the capabilities the systemd unit
// leaves it (CapabilityBoundingSet=) and no new privileges, and stops
// leaving the host as it found it.
func TestDaemonWithUnitCapabilities(t *testing.T) {
	unit, err := os.ReadFile("../dist/clusterip.service")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^CapabilityBoundingSet=(.*)$`).FindSubmatch(unit)
	if m == nil {
		t.Fatal("the unit has no CapabilityBoundingSet=")
	}
	set := "-all"
	for _, c := range strings.Fields(string(m[1])) {
		set += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
	}
	l := newLab(t, 1, false)
	h := l.Nodes[0]
	before := readHost(t, l, h)
	wrapper := filepath.Join(l.Dir, "clusterctl-unit")
	os.WriteFile(wrapper, []byte("#!/bin/sh\nexec setpriv --no-new-privs --inh-caps=-all --bounding-set="+set+" "+clusterctl+` "$@"`+"\n"), 0o755)
	l.Exe = wrapper
	c := &cluster{Lab: l, t: t, vip: lab.VIP, client: lab.ClientAddr, daemons: map[string]*lab.Proc{}}
	if _, err := c.StartServer(h, "--tcp", ":80", "--udp", ":7"); err != nil {
		t.Fatal(err)
	}
	p, err := l.StartDaemon(h)
	if err != nil {
		t.Fatal(err)
	}
	proc, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Cmd.Process.Pid))
	if !strings.Contains(string(proc), "NoNewPrivs:\t1") {
		t.Errorf("the daemon runs without no_new_privs")
	}
	t.Logf("daemon's capabilities: %v", regexp.MustCompile(`(?m)^Cap(Eff|Bnd):.*$`).FindAllString(string(proc), -1))
	c.ctl(h, "new", "--vip", lab.VIP.String(), "--interface", "eth0", "--hashmode", "sourceip", "--total-nodes", "1", "--local-node", "1")
	if err := c.WaitListening(h, 7); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitServing(context.Background()); err != nil {
		t.Fatalf("not serving with the unit's capabilities: %v\n%s", err, l.Log("daemon-n1"))
	}
	if st := status(t, c, h)[0]; !st.KernelPath {
		t.Errorf("kernel path not attached with the unit's capabilities:\n%s", l.Log("daemon-n1"))
	}
	if out, err := l.Run(h, "bash", "-c", "echo +1 > "+l.ControlFile(h)); err == nil || !strings.Contains(out, "Cannot allocate memory") {
		t.Errorf("control file under the unit's capabilities: %v %s", err, out)
	}
	if err := p.Stop(syscall.SIGTERM, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "host restored", func() (bool, string) { return readHost(t, l, h).equal(before), "" })
}

// Shell completion offers hash modes, datapath kinds and, from the
// running daemon, its VIPs.
func TestCompletions(t *testing.T) {
	c := newCluster(t, 1, "sourceip", false)
	n1 := c.Nodes[0]
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"__complete", "new", "--hashmode", ""}, []string{"sourceip\n", "sourceip-sourceport\n", "sourceip-sourceport-destport\n"}},
		{[]string{"__complete", "daemon", "--datapath", ""}, []string{"auto\n", "user\n"}},
		{[]string{"__complete", "drain", ""}, []string{lab.VIP.String() + "\n"}},
		{[]string{"__complete", "delete", ""}, []string{lab.VIP.String() + "\n"}},
	} {
		out := c.ctl(n1, tt.args...)
		for _, w := range tt.want {
			if !strings.Contains(out, w) {
				t.Errorf("clusterctl %s: %q, want %q", strings.Join(tt.args, " "), out, w)
			}
		}
	}
}
