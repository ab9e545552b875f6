package test

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clusterip/clusterip/internal/lab"
)

// TestManyVIPsUnderPeers: two dozen clusters of both families on one
// interface, under --peers. They share one kernel-path program and one
// capture group per node, and one gossiped state: every VIP must still be
// served by exactly the node holding each number, and a drain, a resume and
// a kill -9 must move every VIP's numbers without breaking a connection
// the node keeps.
func TestManyVIPsUnderPeers(t *testing.T) {
	const mode = "sourceip-sourceport"
	var vips []netip.Addr
	for i := 1; i <= 12; i++ {
		vips = append(vips, netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + i)}),
			netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", 0x100+i)))
	}
	c := &cluster{Lab: newLab(t, 3, false), t: t, vip: vips[0], client: clientOf(vips[0]), mode: mode, daemons: map[string]*lab.Proc{}}
	key := filepath.Join(c.Dir, "gossip.key")
	if out, err := exec.Command(clusterctl, "genkey", key).CombinedOutput(); err != nil {
		t.Fatalf("genkey: %v %s", err, out)
	}
	for i, h := range c.Nodes {
		if _, err := c.StartServer(h, "--tcp", ":80", "--udp", ":7"); err != nil {
			t.Fatal(err)
		}
		var conf strings.Builder
		for _, v := range vips {
			fmt.Fprintf(&conf, "new --vip %s --interface eth0 --hashmode %s --total-nodes 3 --local-node %d\n", v, mode, i+1)
		}
		path := filepath.Join(c.Dir, h.Name+".conf")
		if err := os.WriteFile(path, []byte(conf.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		p, err := c.StartDaemon(h, "--config", path, "--peers", c.peers(), "--gossip-key", key, "--node-name", h.Name)
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
	// One view of the cluster per VIP: the helpers read c.vip.
	views := make([]*cluster, len(vips))
	for i, v := range vips {
		view := *c
		view.vip, view.client = v, clientOf(v)
		views[i] = &view
	}
	for _, v := range views {
		v.waitHome()
	}
	n1, n3 := c.Nodes[0], c.Nodes[2]
	st := status(t, c, n1)
	if len(st) != len(vips) {
		t.Fatalf("n1 reports %d clusters, want %d", len(st), len(vips))
	}
	for _, s := range st {
		if !s.KernelPath || fmt.Sprint(s.InKernel) != fmt.Sprint(s.Serving) {
			t.Errorf("settled n1, %s: kernel path %v for %v (serving %v)", s.VIP, s.KernelPath, s.InKernel, s.Serving)
		}
	}

	for _, v := range views {
		v.probeOK("settled "+v.vip.String(), 9)
	}
	// Exactly one reply per datagram, from the number's node, for a VIP of
	// each family.
	for _, v := range []netip.Addr{vips[0], vips[len(vips)-1]} {
		base := 41000
		if v.Is6() {
			base = 41100
		}
		for i, got := range udpExchangeAt(t, c.Lab, clientOf(v), v, base, 12, 64) {
			port := base + i
			want := fmt.Sprintf("n%d 64", predict(t, mode, 3, clientOf(v).String(), port, 7))
			if len(got) != 1 || got[0] != want {
				t.Errorf("%s: datagram from port %d: replies %q, want exactly [%q]", v, port, got, want)
			}
		}
	}

	// Drain n1 of every VIP: its connections stay, new ones go elsewhere.
	// From ports above the client's ephemeral range (32768-60999), which
	// the probes' connections use.
	onN1 := make([][]*longConn, len(views))
	for i, v := range views {
		onN1[i] = v.openLong(1, 2, 61000+60*i)
	}
	for _, v := range vips {
		c.ctl(n1, "drain", v.String())
	}
	for _, v := range views {
		eventually(t, 5*time.Second, "n1 drained of "+v.vip.String(), func() (bool, string) {
			return v.serving(n1) == "", v.servingAll()
		})
	}
	for i, v := range views {
		checkLong(t, "during drain, "+v.vip.String(), onN1[i])
		if served := v.probeOK("during drain, "+v.vip.String(), 6); served["n1"] != 0 {
			t.Errorf("draining n1 took %d new connections to %s", served["n1"], v.vip)
		}
	}
	for _, v := range vips {
		c.ctl(n1, "resume", v.String())
	}
	for i, v := range views {
		v.waitHome()
		checkLong(t, "after resume, "+v.vip.String(), onN1[i])
	}

	// kill -9 of n3: the survivors take its number of every VIP.
	if err := c.daemons["n3"].Stop(syscall.SIGKILL, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, v := range views {
		eventually(t, 5*time.Second, "survivors take node 3 of "+v.vip.String(), func() (bool, string) {
			s := "," + v.serving(c.Nodes[0]) + "," + v.serving(c.Nodes[1]) + ","
			return strings.Count(s, ",3,") == 1, v.servingAll()
		})
	}
	for i, v := range views {
		checkLong(t, "after n3 died, "+v.vip.String(), onN1[i])
		if served := v.probeOK("after n3 died, "+v.vip.String(), 6); served[n3.Name] != 0 {
			t.Errorf("%s: dead n3 served %d connections", v.vip, served[n3.Name])
		}
	}
}
