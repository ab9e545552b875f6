package test

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/clusterip/clusterip/internal/datapath"
	"github.com/clusterip/clusterip/internal/lab"
)

// hostState is what the daemon may change on a node, as seen from inside it.
type hostState struct {
	sysctls map[string]string
	links   string // names of links
	maddrs  string // link-layer multicast memberships of eth0
	mounted bool   // control directory mounted
	ingress int    // eBPF programs on eth0's TCX ingress hook (the kernel path)
}

var watchedSysctls = []string{
	"net/ipv4/conf/eth0/drop_unicast_in_l2_multicast",
	"net/ipv4/conf/eth0/arp_ignore",
	"net/ipv4/conf/eth0/arp_announce",
	"net/ipv4/conf/all/rp_filter",
	"net/ipv6/conf/eth0/drop_unicast_in_l2_multicast",
}

func readHost(t *testing.T, l *lab.Lab, h *lab.Host) hostState {
	t.Helper()
	s := hostState{sysctls: map[string]string{}}
	for _, k := range watchedSysctls {
		out, err := l.Run(h, "cat", "/proc/sys/"+k)
		if err != nil {
			t.Fatal(err)
		}
		s.sysctls[k] = strings.TrimSpace(out)
	}
	var err error
	if s.links, err = l.Run(h, "ip", "-o", "-br", "link"); err != nil {
		t.Fatal(err)
	}
	if s.maddrs, err = l.Run(h, "ip", "maddr", "show", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	s.mounted = strings.Contains(string(mounts), " "+l.ControlDir(h)+" ")
	err = inNetns(h.NS, func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		q, err := link.QueryPrograms(link.QueryOptions{Target: ifi.Index, Attach: ebpf.AttachTCXIngress})
		if err == nil {
			s.ingress = len(q.Programs)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (s hostState) equal(o hostState) bool {
	for k, v := range s.sysctls {
		if o.sysctls[k] != v {
			return false
		}
	}
	return s.links == o.links && s.maddrs == o.maddrs && s.mounted == o.mounted && s.ingress == o.ingress
}

// A daemon stopped with SIGTERM, or a cluster deleted, leaves the node as it
// found it; a daemon killed with SIGKILL is cleaned up by the next start.
func TestStopLeavesHostAsFound(t *testing.T) {
	l := newLab(t, 1, false)
	h := l.Nodes[0]
	// A non-default starting point, to see that values are restored, not reset.
	if _, err := l.Run(h, "sysctl", "-qw", "net.ipv4.conf.eth0.arp_announce=1"); err != nil {
		t.Fatal(err)
	}
	before := readHost(t, l, h)
	newArgs := []string{"new", "--vip", lab.VIP.String(), "--interface", "eth0", "--hashmode", "sourceip",
		"--total-nodes", "2", "--local-node", "1"}
	// And an IPv6 cluster beside it: its own sysctl, TAP, MAC and the
	// VIP's solicited-node group.
	newArgs6 := []string{"new", "--vip", lab.VIP6.String(), "--interface", "eth0", "--hashmode", "sourceip",
		"--total-nodes", "2", "--local-node", "1"}

	checkRunning := func() {
		t.Helper()
		s := readHost(t, l, h)
		if s.sysctls[watchedSysctls[0]] != "1" || s.sysctls[watchedSysctls[1]] != "1" || s.sysctls[watchedSysctls[2]] != "2" ||
			s.sysctls[watchedSysctls[4]] != "1" {
			t.Errorf("running cluster: eth0 settings %v", s.sysctls)
		}
		for _, vip := range []netip.Addr{lab.VIP, lab.VIP6} {
			if !strings.Contains(s.links, datapath.TapName(vip)) {
				t.Errorf("running cluster: no TAP %s in\n%s", datapath.TapName(vip), s.links)
			}
			// Its 256 transmit queues, which nothing uses, must not
			// each get a qdisc and its ring (6.6 MB a TAP).
			if out, err := l.Run(h, "tc", "qdisc", "show", "dev", datapath.TapName(vip)); err != nil || !strings.HasPrefix(out, "qdisc noqueue") {
				t.Errorf("running cluster: TAP %s qdiscs: %v\n%s", datapath.TapName(vip), err, out)
			}
		}
		for _, mac := range []string{"01:00:5e:00:02:64", "33:33:00:00:01:00", "33:33:ff:00:01:00"} {
			if !strings.Contains(s.maddrs, mac) {
				t.Errorf("running cluster: eth0 not subscribed to %s:\n%s", mac, s.maddrs)
			}
		}
		if !s.mounted {
			t.Errorf("running cluster: control directory not mounted")
		}
		if s.ingress != before.ingress+1 {
			t.Errorf("running clusters: %d programs on eth0's TCX ingress, want the one kernel path both clusters share", s.ingress)
		}
	}
	checkRestored := func(when string) {
		t.Helper()
		eventually(t, 5*time.Second, when+": host restored", func() (bool, string) {
			after := readHost(t, l, h)
			return after.equal(before), "before " + strings.Join([]string{before.links, before.maddrs}, "") +
				" after " + strings.Join([]string{after.links, after.maddrs}, "")
		})
	}

	// start starts the daemon with the cluster and checks what it changed.
	start := func(t *testing.T) *lab.Proc {
		t.Helper()
		p, err := l.StartDaemon(h)
		if err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{newArgs, newArgs6} {
			if _, err := l.Clusterctl(h, args...); err != nil {
				t.Fatal(err)
			}
		}
		checkRunning()
		return p
	}

	t.Run("delete", func(t *testing.T) {
		p := start(t)
		for _, vip := range []netip.Addr{lab.VIP, lab.VIP6} {
			if _, err := l.Clusterctl(h, "delete", vip.String()); err != nil {
				t.Fatal(err)
			}
		}
		after := readHost(t, l, h)
		if after.sysctls[watchedSysctls[2]] != "1" || after.sysctls[watchedSysctls[4]] != before.sysctls[watchedSysctls[4]] ||
			strings.Contains(after.links, datapath.TapName(lab.VIP)) || strings.Contains(after.links, datapath.TapName(lab.VIP6)) {
			t.Errorf("after delete: %v\n%s", after.sysctls, after.links)
		}
		if err := p.Stop(syscall.SIGTERM, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		checkRestored("after delete and SIGTERM")
	})

	t.Run("SIGTERM", func(t *testing.T) {
		p := start(t)
		began := time.Now()
		if err := p.Stop(syscall.SIGTERM, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		t.Logf("daemon exited %s after SIGTERM", time.Since(began).Round(time.Millisecond))
		checkRestored("after SIGTERM")
	})

	t.Run("SIGKILL then restart", func(t *testing.T) {
		p := start(t)
		if err := p.Stop(syscall.SIGKILL, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		// The kernel takes the TAP, the membership and the kernel path's
		// program with the process; the sysctls and the mount are left for
		// the next start.
		if s := readHost(t, l, h); s.ingress != before.ingress {
			t.Errorf("after SIGKILL: %d programs left on eth0's TCX ingress", s.ingress)
		}
		if s := readHost(t, l, h); s.sysctls[watchedSysctls[2]] != "2" {
			t.Logf("note: settings already back after SIGKILL: %v", s.sysctls)
		}
		p, err := l.StartDaemon(h)
		if err != nil {
			t.Fatal(err)
		}
		s := readHost(t, l, h)
		for k, v := range before.sysctls {
			if s.sysctls[k] != v {
				t.Errorf("restarted daemon left %s=%s, found %s before", k, s.sysctls[k], v)
			}
		}
		for _, args := range [][]string{newArgs, newArgs6} {
			if _, err := l.Clusterctl(h, args...); err != nil {
				t.Fatalf("new after crash recovery: %v", err)
			}
		}
		checkRunning()
		if err := p.Stop(syscall.SIGTERM, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		checkRestored("after crash, restart and SIGTERM")
	})
}

// underSystemd starts a lab of one node whose daemon, loading one cluster
// from its config file, talks to a notify socket as systemd's, with env
// added to its environment; it returns the socket systemd would read.
func underSystemd(t *testing.T, env ...string) (*lab.Lab, *lab.Proc, *net.UnixConn) {
	t.Helper()
	l := newLab(t, 1, false)
	sock := filepath.Join(l.Dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conf := filepath.Join(l.Dir, "clusters.conf")
	if err := os.WriteFile(conf, []byte("new --vip 192.0.2.100 --interface eth0 --hashmode sourceip --total-nodes 1 --local-node 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l.DaemonEnv = append([]string{"NOTIFY_SOCKET=" + sock}, env...)
	p, err := l.StartDaemon(l.Nodes[0], "--config", conf, "--workers", "2")
	if err != nil {
		t.Fatal(err)
	}
	return l, p, conn
}

// Under systemd (Type=notify) the daemon reports READY=1 once its clusters
// exist, and STOPPING=1 when it begins to stop.
func TestSystemdNotify(t *testing.T) {
	l, p, conn := underSystemd(t)
	h := l.Nodes[0]
	read := func() string {
		t.Helper()
		buf := make([]byte, 256)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}
	if got := read(); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	if out, err := l.Clusterctl(h, "status"); err != nil || !strings.Contains(out, "192.0.2.100") {
		t.Fatalf("READY=1 before the config's cluster existed: %v %s", err, out)
	}
	if err := p.Stop(syscall.SIGTERM, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "STOPPING=1" {
		t.Fatalf("notification on stop %q, want STOPPING=1", got)
	}
}
