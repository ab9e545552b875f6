package test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/clusterip/clusterip/internal/lab"
)

// A service started in a mount namespace of its own (ip netns exec,
// systemd's PrivateTmp=) holds a copy of the control-file mount. The daemon
// still stops in well under a second, and the copy fails with an error
// instead of hanging.
func TestStopWithControlMountCopied(t *testing.T) {
	c := newCluster(t, 1, "sourceip", false)
	n1 := c.Nodes[0]
	// A private copy of the host's mounts, the control files included.
	holder := exec.Command("unshare", "--mount", "--propagation", "private", "sleep", "60")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	mntns := "/proc/" + strconv.Itoa(holder.Process.Pid) + "/ns/mnt"
	eventually(t, 5*time.Second, "the copy shows the control file", func() (bool, string) {
		out, err := exec.Command("nsenter", "--mount="+mntns, "cat", c.ControlFile(n1)).CombinedOutput()
		return err == nil && strings.TrimSpace(string(out)) == "1", string(out)
	})
	began := time.Now()
	if err := c.daemons["n1"].Stop(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took > time.Second {
		t.Errorf("SIGTERM took %s with a copy of the control mount in another namespace, want under 1s", took.Round(time.Millisecond))
	}
	out, err := exec.Command("nsenter", "--mount="+mntns, "timeout", "5", "cat", c.ControlFile(n1)).CombinedOutput()
	if err == nil || strings.Contains(string(out), "Terminated") {
		t.Errorf("control file in the copy after the daemon stopped: %v %q, want an error at once", err, out)
	}
	if _, err := os.Stat(c.ControlFile(n1)); err == nil {
		t.Errorf("control file still there after the daemon stopped")
	}
}

// genkey writes the key file itself, mode 0600, and never over another; the
// daemon refuses a key file that others can read, naming the file and the fix.
func TestGossipKeyFileModes(t *testing.T) {
	l := newLab(t, 1, false)
	n1 := l.Nodes[0]
	key := filepath.Join(l.Dir, "gossip.key")
	if out, err := exec.Command(clusterctl, "genkey", key).CombinedOutput(); err != nil {
		t.Fatalf("genkey: %v %s", err, out)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("genkey made %v, %v; want mode 0600", fi, err)
	}
	if out, err := exec.Command(clusterctl, "genkey", key).CombinedOutput(); err == nil || !strings.Contains(string(out), "exists") {
		t.Errorf("genkey over an existing key: %v %s", err, out)
	}
	os.Chmod(key, 0o644)
	out, err := l.Run(n1, clusterctl, "daemon", "--socket", l.Socket(n1), "--control-dir", l.ControlDir(n1),
		"--peers", n1.Addr.String(), "--gossip-key", key)
	if err == nil || !strings.Contains(out, "chmod 600 "+key) {
		t.Errorf("daemon with a 0644 key: %v\n%s", err, out)
	}
}

// A client that may not use the socket is told so, not that no daemon runs.
func TestClientPermissionDenied(t *testing.T) {
	c := newCluster(t, 1, "sourceip", false)
	n1 := c.Nodes[0]
	out, err := c.Run(n1, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", clusterctl, "--socket", c.Socket(n1), "status")
	if err == nil || !strings.Contains(out, "permission denied") || strings.Contains(out, "no daemon") {
		t.Errorf("status as nobody: %v %q, want permission denied", err, out)
	}
}

// SIGHUP, which a terminal or a careless `kill -HUP` sends, does not stop
// the daemon; without --config there is nothing to reload, and it says so.
func TestSIGHUPDoesNotStopDaemon(t *testing.T) {
	c := newCluster(t, 1, "sourceip", false)
	p := c.daemons["n1"]
	if err := p.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Second, "SIGHUP logged", func() (bool, string) {
		log := c.Log("daemon-n1")
		return strings.Contains(log, "SIGHUP: reloading") && strings.Contains(log, "without --config"), log
	})
	if p.Exited() {
		t.Fatalf("daemon died of SIGHUP:\n%s", c.Log("daemon-n1"))
	}
	if err := c.WaitServing(context.Background()); err != nil {
		t.Fatalf("not serving after SIGHUP: %v", err)
	}
}

// The control socket, and the host journal beside it, must not live where
// another user could plant or swap files.
func TestSocketDirectoryMustBePrivate(t *testing.T) {
	l := newLab(t, 1, false)
	n1 := l.Nodes[0]
	open := filepath.Join(l.Dir, "open")
	os.Mkdir(open, 0o755)
	os.Chmod(open, 0o1777)
	out, err := l.Run(n1, clusterctl, "daemon", "--socket", filepath.Join(open, "c.sock"), "--control-dir", l.ControlDir(n1))
	if err == nil || !strings.Contains(out, "writable by group or others") {
		t.Errorf("daemon with its socket in a 1777 directory: %v\n%s", err, out)
	}
}

// A daemon started under a name a running member already has (the host
// name of a cloned machine) stops with an error naming the name and the
// other address; the member that had it keeps serving and shows the clash.
func TestNodeNameConflict(t *testing.T) {
	c := &cluster{Lab: newLab(t, 4, false), t: t, vip: lab.VIP, client: lab.ClientAddr, mode: "sourceip-sourceport", daemons: map[string]*lab.Proc{}}
	key := filepath.Join(c.Dir, "gossip.key")
	if out, err := exec.Command(clusterctl, "genkey", key).CombinedOutput(); err != nil {
		t.Fatalf("genkey: %v %s", err, out)
	}
	all := c.Nodes
	c.Nodes = all[:3] // the cluster: n1..n3
	for i, h := range c.Nodes {
		if _, err := c.StartServer(h); err != nil {
			t.Fatal(err)
		}
		c.startFailoverDaemon(h, key, i+1)
	}
	c.waitHome()
	n4 := all[3]
	conf := filepath.Join(c.Dir, "n4.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf("new --vip %s --interface eth0 --hashmode %s --total-nodes 3\n", lab.VIP, c.mode)), 0o600)
	p, err := c.StartDaemon(n4, "--config", conf, "--peers", c.peers(), "--gossip-key", key, "--node-name", "n1")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-waitExit(p):
	case <-time.After(10 * time.Second):
		t.Fatalf("a second n1 is still running:\n%s", c.Log("daemon-n4"))
	}
	if code := p.Cmd.ProcessState.ExitCode(); code == 0 {
		t.Errorf("the second n1 exited with status 0")
	}
	if log := c.Log("daemon-n4"); !strings.Contains(log, `"n1" is already used by the member at 192.0.2.11`) {
		t.Errorf("the second n1 did not say which name and address:\n%s", log)
	}
	out := c.ctl(c.Nodes[0], "status")
	if !strings.Contains(out, "PROBLEM") || !strings.Contains(out, "192.0.2.14") {
		t.Errorf("n1's status does not show the name conflict:\n%s", out)
	}
	c.waitHome()
	c.probeOK("after the clash", 20)
}

func waitExit(p *lab.Proc) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		for !p.Exited() {
			time.Sleep(20 * time.Millisecond)
		}
		close(ch)
	}()
	return ch
}

// A flood of unauthenticated gossip streams that announce 20 MB each costs
// the daemon bounded memory, and no node is declared dead because of it.
func TestGossipStreamFlood(t *testing.T) {
	c := newFailoverCluster(t, 3, "sourceip-sourceport")
	n1 := c.Nodes[0]
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		lab.FloodGossipStreams(func() (conn net.Conn, err error) {
			err = inNetns(c.Client.NS, func() (err error) {
				conn, err = net.DialTimeout("tcp4", n1.Addr.String()+":7946", time.Second)
				return err
			})
			return conn, err
		}, 30, stop)
		close(done)
	}()
	deadline := time.Now().Add(6 * time.Second)
	for time.Now().Before(deadline) {
		if s := c.servingAll(); s != "n1=1 n2=2 n3=3" {
			t.Errorf("during the flood: %s", s)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	<-done
	proc, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.daemons["n1"].Cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(proc), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmHWM:" {
			kb, _ := strconv.Atoi(f[1])
			t.Logf("flooded daemon's peak RSS: %d MB", kb>>10)
			if kb > 100<<10 {
				t.Errorf("flooded daemon's peak RSS %d MB, want under 100 MB", kb>>10)
			}
		}
	}
	for _, h := range c.Nodes[1:] {
		for _, m := range status(t, c, h)[0].Members {
			if m.Name == "n1" && m.State != "alive" {
				t.Errorf("%s sees n1 %s after the flood", h.Name, m.State)
			}
		}
	}
	c.probeOK("after the flood", 20)
}

// fragmentedUDP sends 3000-byte datagrams (three fragments each on the
// lab's 1500-byte LAN) from 16 client ports at rate datagrams a second for
// dur, and returns how many were sent and how many were answered.
func fragmentedUDP(t *testing.T, c *cluster, rate int, dur time.Duration) (sent, answered int) {
	t.Helper()
	socks := make([]*net.UDPConn, 16)
	err := inNetns(c.Client.NS, func() error {
		for i := range socks {
			s, err := net.ListenUDP("udp4", &net.UDPAddr{IP: lab.ClientAddr.AsSlice(), Port: 46000 + i})
			if err != nil {
				return err
			}
			s.SetReadBuffer(4 << 20)
			socks[i] = s
		}
		return nil
	})
	defer func() {
		for _, s := range socks {
			if s != nil {
				s.Close()
			}
		}
	}()
	if err != nil {
		t.Fatal(err)
	}
	var got sync.WaitGroup
	var mu sync.Mutex
	for _, s := range socks {
		got.Add(1)
		go func() {
			defer got.Done()
			buf := make([]byte, 2048)
			for {
				s.SetReadDeadline(time.Now().Add(time.Second))
				if _, _, err := s.ReadFrom(buf); err != nil {
					return
				}
				mu.Lock()
				answered++
				mu.Unlock()
			}
		}()
	}
	vip := &net.UDPAddr{IP: lab.VIP.AsSlice(), Port: 7}
	payload := make([]byte, 3000)
	start := time.Now()
	for time.Since(start) < dur {
		// Paced in small bursts: the timer is coarser than 200 µs.
		due := int(time.Since(start).Seconds() * float64(rate))
		for ; sent < due; sent++ {
			if _, err := socks[sent%len(socks)].WriteTo(payload, vip); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(time.Millisecond)
	}
	got.Wait()
	return sent, answered
}

// Fragmented UDP at 5,000 datagrams a second is answered, in a port mode
// where only the first fragment names the owner; and a flood of spoofed
// later fragments whose first never comes does not keep real ones out.
func TestFragmentedUDPAtRateAndUnderFlood(t *testing.T) {
	c := newCluster(t, 3, "sourceip-sourceport", false)
	sent, answered := fragmentedUDP(t, c, 5000, 2*time.Second)
	t.Logf("5,000/s: %d of %d fragmented datagrams answered", answered, sent)
	if answered*1000 < sent*999 {
		t.Errorf("5,000/s: %d of %d fragmented datagrams answered, want at least 99.9%%", answered, sent)
	}

	// The flood: later fragments from random sources, as fast as one
	// sender goes, to the cluster MAC.
	raw := c.rawSender()
	stop := make(chan struct{})
	var floodSent atomic.Int64
	flooding := make(chan struct{})
	go func() {
		defer close(flooding)
		ip := make([]byte, 20+1000)
		ip[0], ip[8], ip[9] = 0x45, 64, 17
		binary.BigEndian.PutUint16(ip[2:4], uint16(len(ip)))
		binary.BigEndian.PutUint16(ip[6:8], 185) // offset 1480, no more fragments
		copy(ip[16:20], lab.VIP.AsSlice())
		f := raw.frame(ip)
		ip = f[14:]
		var seed uint32 = 1
		for {
			select {
			case <-stop:
				return
			default:
			}
			seed = seed*1664525 + 1013904223
			binary.BigEndian.PutUint32(ip[12:16], 0x0a000000|seed>>8) // 10.x.y.z
			binary.BigEndian.PutUint16(ip[4:6], uint16(seed))
			if raw.send(f) == nil {
				floodSent.Add(1)
			}
		}
	}()
	time.Sleep(200 * time.Millisecond)
	sent, answered = fragmentedUDP(t, c, 2000, 2*time.Second)
	close(stop)
	<-flooding
	t.Logf("under a flood of %d spoofed fragments: %d of %d fragmented datagrams answered", floodSent.Load(), answered, sent)
	if answered*100 < sent*99 {
		t.Errorf("under a flood of spoofed fragments: %d of %d fragmented datagrams answered, want at least 99%%", answered, sent)
	}
	for _, h := range c.Nodes {
		st := status(t, c, h)[0].Packets
		t.Logf("%s: held %d, dropped %d fragments", h.Name, st.FragmentsHeld, st.FragmentsDropped)
	}
}

// Planned handoffs (drain, resume) lose no connection and delay none: a SYN
// that arrives while a number is released is held by its new owner and
// answered as soon as the release says the old owner did not, instead of
// after the client's one-second retransmission; and no SYN is answered by
// two nodes.
func TestPlannedHandoffsDelayNoConnection(t *testing.T) {
	c := newFailoverCluster(t, 3, "sourceip-sourceport")
	n1 := c.Nodes[0]
	load := c.ToolCommand(c.Client, "load", "--addr", lab.VIP.String(), "--http-port", "80", "--echo-port", "7",
		"--new-every", "4ms", "--long", "8", "--duration", "9s")
	var out strings.Builder
	load.Stdout, load.Stderr = &out, &out
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	for _, step := range []string{"drain", "resume", "drain", "resume"} {
		time.Sleep(2 * time.Second)
		c.ctl(n1, step, lab.VIP.String())
	}
	if err := load.Wait(); err != nil {
		t.Fatalf("load: %v: %s", err, out.String())
	}
	var rep lab.LoadReport
	if err := json.Unmarshal([]byte(out.String()), &rep); err != nil {
		t.Fatalf("load report: %v", err)
	}
	failed, delayed := 0, 0
	for _, n := range rep.New {
		switch {
		case n.Err != "":
			failed++
			t.Logf("failed: port %d at +%s: %s", n.Port, n.Start.Sub(rep.Start).Round(time.Millisecond), n.Err)
		case n.Latency > 500*time.Millisecond:
			delayed++
			t.Logf("delayed: port %d at +%s by %s (node %s)", n.Port, n.Start.Sub(rep.Start).Round(time.Millisecond), n.Latency.Round(time.Millisecond), n.Node)
		}
	}
	broke := 0
	for _, l := range rep.Long {
		if l.Broken != "" {
			broke++
		}
	}
	held := uint64(0)
	for _, h := range c.Nodes {
		held += status(t, c, h)[0].Packets.Held
	}
	t.Logf("%d new connections: %d failed, %d delayed; %d of %d long-lived broke; %d SYNs answered twice; %d packets held",
		len(rep.New), failed, delayed, broke, len(rep.Long), len(rep.Twice), held)
	if failed+delayed+broke+len(rep.Twice) > 0 {
		t.Errorf("four planned handoffs: %d failed, %d delayed, %d long-lived broke, %d answered twice; want none",
			failed, delayed, broke, len(rep.Twice))
	}
}

// A flood of spoofed UDP flows, taken by the kernel path, fills its flow
// map; when a drain moves the number out of the kernel path, the daemon
// reads those flows into the flow table along with the TCP connections of
// the socket table, and a TCP connection the node serves (unknown to user
// space until then) survives the drain.
func TestSpoofedFloodDoesNotBreakDrain(t *testing.T) {
	c := newFailoverCluster(t, 3, "sourceip-sourceport")
	n1 := c.Nodes[0]
	kept := c.openLong(1, 2, 51000)
	raw := c.rawSender()
	ip := make([]byte, 20+8+16)
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:4], uint16(len(ip)))
	copy(ip[16:20], lab.VIP.AsSlice())
	binary.BigEndian.PutUint16(ip[22:24], 9) // to the discard port
	binary.BigEndian.PutUint16(ip[24:26], 8+16)
	f := raw.frame(ip)
	ip = f[14:]
	before := status(t, c, n1)[0].Packets
	var seed uint32 = 7
	// Three times the flow map: a third of them are n1's.
	for range 3 * 65536 * 2 {
		seed = seed*1664525 + 1013904223
		binary.BigEndian.PutUint32(ip[12:16], 0x0a000000|seed>>8)
		binary.BigEndian.PutUint16(ip[20:22], uint16(seed))
		raw.send(f)
	}
	st := status(t, c, n1)[0]
	if taken := st.Packets.KernelAnswered - before.KernelAnswered; taken < 65536 {
		t.Fatalf("the kernel path took %d of the spoofed datagrams, want its flow map full (65,536)", taken)
	}
	c.ctl(n1, "drain", lab.VIP.String())
	// The handoff reads the flow map into the flow table (the release
	// then forgets those quiet through it, as it does any quiet flow).
	eventually(t, 3*time.Second, "the kernel path's flows in the flow table", func() (bool, string) {
		fl := status(t, c, n1)[0].Flows
		return fl.Tracked >= 60000, fmt.Sprintf("%+v", fl)
	})
	eventually(t, 5*time.Second, "n1 drained", func() (bool, string) {
		return c.serving(n1) == "", c.servingAll()
	})
	checkLong(t, "after a drain under a spoofed flood", kept)
}

// The interface deleted and created again (a veth or bond rebuilt, a
// driver reload): while it is gone status says so and nothing pretends to
// serve; when it is back the daemon attaches again, with its sysctls, its
// multicast membership and its kernel path, and serves as before.
func TestInterfaceRecreated(t *testing.T) {
	c := newCluster(t, 1, "sourceip", false)
	n1 := c.Nodes[0]
	if err := c.Unplug(n1); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "status shows the interface gone", func() (bool, string) {
		st := status(t, c, n1)[0]
		return len(st.Problems) == 1 && strings.Contains(st.Problems[0], "interface eth0 gone") && len(st.Serving) == 0, fmt.Sprintf("%+v", st.Problems)
	})
	if out := c.ctl(n1, "status"); !strings.Contains(out, "PROBLEM") {
		t.Errorf("status table does not show the problem:\n%s", out)
	}
	if err := c.Replug(n1); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "status clean again", func() (bool, string) {
		st := status(t, c, n1)[0]
		return len(st.Problems) == 0 && len(st.Serving) != 0 && st.KernelPath, fmt.Sprintf("%+v %v", st.Problems, st.KernelPath)
	})
	if err := c.WaitServing(context.Background()); err != nil {
		t.Fatalf("not serving on the new interface: %v\n%s", err, c.Log("daemon-n1"))
	}
	s := readHost(t, c.Lab, n1)
	if s.sysctls[watchedSysctls[0]] != "1" || s.sysctls[watchedSysctls[2]] != "2" {
		t.Errorf("new eth0's settings: %v", s.sysctls)
	}
	if !strings.Contains(s.maddrs, "01:00:5e:00:02:64") || s.ingress != 1 {
		t.Errorf("new eth0: multicast %q, %d kernel-path programs", s.maddrs, s.ingress)
	}
	for _, want := range []string{"interface gone", "interface back"} {
		if !strings.Contains(c.Log("daemon-n1"), want) {
			t.Errorf("log does not say %q", want)
		}
	}
	// Stopped, the daemon leaves the new interface as it found it.
	if err := c.daemons["n1"].Stop(syscall.SIGTERM, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if s := readHost(t, c.Lab, n1); s.sysctls[watchedSysctls[0]] != "0" || s.ingress != 0 {
		t.Errorf("after stop, new eth0: %v, %d programs", s.sysctls, s.ingress)
	}
}

// Under automatic failover, a node whose interface is gone gives its
// numbers up, and the others take them; back, it takes them home.
func TestInterfaceGoneFailsOver(t *testing.T) {
	c := newFailoverCluster(t, 3, "sourceip-sourceport")
	n1 := c.Nodes[0]
	if err := c.Unplug(n1); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "n1's number served by the others", func() (bool, string) {
		s := c.serving(c.Nodes[1]) + "," + c.serving(c.Nodes[2])
		return c.serving(n1) == "" && strings.Contains(s, "1"), c.servingAll()
	})
	c.probeOK("with n1's interface gone", 30)
	// The gossip went out through the same interface, so the others
	// see n1 dead; with gossip on another interface they would see it
	// unhealthy (TestFailoverStep).
	for _, m := range status(t, c, c.Nodes[1])[0].Members {
		if m.Name == "n1" && m.State != "dead" && m.State != "unhealthy" {
			t.Errorf("n2 sees n1 %s, want dead or unhealthy", m.State)
		}
	}
	if st := status(t, c, n1)[0]; len(st.Problems) == 0 {
		t.Errorf("n1's status shows no problem with its interface gone")
	}
	if err := c.Replug(n1); err != nil {
		t.Fatal(err)
	}
	c.waitHome()
	c.probeOK("after n1's interface came back", 30)
}
