package test

import (
	"context"
	"encoding/binary"
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

	"github.com/clusterip/clusterip/internal/daemon"
	"github.com/clusterip/clusterip/internal/lab"
	"github.com/mdlayher/packet"
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
// the daemon.
func TestSIGHUPDoesNotStopDaemon(t *testing.T) {
	c := newCluster(t, 1, "sourceip", false)
	p := c.daemons["n1"]
	if err := p.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Second, "SIGHUP logged", func() (bool, string) {
		log := c.Log("daemon-n1")
		return strings.Contains(log, "SIGHUP ignored"), log
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
	c := &cluster{Lab: newLab(t, 4, false), t: t, mode: "sourceip-sourceport", daemons: map[string]*lab.Proc{}}
	key := filepath.Join(c.Dir, "gossip.key")
	if out, err := exec.Command(clusterctl, "genkey", key).CombinedOutput(); err != nil {
		t.Fatalf("genkey: %v %s", err, out)
	}
	all := c.Nodes
	c.Nodes = all[:3] // the cluster: n1..n3
	for i, h := range c.Nodes {
		if _, err := c.Start(h, "serve-"+h.Name, clusterctl, "lab-serve", "--name", h.Name); err != nil {
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
		defer close(done)
		junk := make([]byte, 64<<10)
		var wg sync.WaitGroup
		for range 30 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					var conn net.Conn
					err := inNetns(c.Client.NS, func() (err error) {
						conn, err = net.DialTimeout("tcp4", n1.Addr.String()+":7946", time.Second)
						return err
					})
					if err != nil {
						time.Sleep(10 * time.Millisecond)
						continue
					}
					hdr := []byte{10, 0, 0, 0, 0} // memberlist's encrypted stream, then its length
					binary.BigEndian.PutUint32(hdr[1:], 20<<20)
					conn.SetDeadline(time.Now().Add(3 * time.Second))
					conn.Write(hdr)
					for sent := 0; sent < 20<<20; sent += len(junk) {
						if _, err := conn.Write(junk); err != nil {
							break
						}
					}
					conn.Close()
				}
			}()
		}
		wg.Wait()
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
	var conn *packet.Conn
	var src net.HardwareAddr
	if err := inNetns(c.Client.NS, func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		src = ifi.HardwareAddr
		conn, err = packet.Listen(ifi, packet.Raw, 0x88b5, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stop := make(chan struct{})
	var floodSent atomic.Int64
	flooding := make(chan struct{})
	go func() {
		defer close(flooding)
		mac := daemon.DefaultClusterMAC(lab.VIP)
		f := make([]byte, 14+20+1000)
		copy(f[0:6], mac)
		copy(f[6:12], src)
		binary.BigEndian.PutUint16(f[12:14], 0x0800)
		ip := f[14:]
		ip[0], ip[8], ip[9] = 0x45, 64, 17
		binary.BigEndian.PutUint16(ip[2:4], uint16(len(ip)))
		binary.BigEndian.PutUint16(ip[6:8], 185) // offset 1480, no more fragments
		copy(ip[16:20], lab.VIP.AsSlice())
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
			if _, err := conn.WriteTo(f, &packet.Addr{HardwareAddr: mac}); err == nil {
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
		st := status(t, c, h)[0].Stats
		t.Logf("%s: held %d, dropped %d fragments", h.Name, st.HeldFrags, st.DroppedFrag)
	}
}
