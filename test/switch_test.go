package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clusterip/clusterip/internal/daemon"
	"github.com/clusterip/clusterip/internal/lab"
)

// The switch's side of the cluster, on a Linux bridge that snoops IGMP and
// MLD with a querier (README, "Switches"), for both families:
//   - multicast mode (CLUSTERIP's) serves on a plain bridge, and nothing
//     once the querier runs; the flood check says so on every node, naming
//     every node, in status, log and metrics, within 30 s;
//   - a reload into unicast mode serves every connection, datagram and
//     ping exactly once, by the hash, through the same snooping bridge,
//     and the flood check clears;
//   - igmp mode shows every node's membership in the bridge's table and
//     keeps it by answering the querier's queries; this bridge forwards by
//     IP address, so the flood check reports igmp mode broken on it, and
//     ok again once the bridge stops snooping.
func TestMACModesOnSnoopingBridge(t *testing.T) {
	t.Parallel()
	for _, vip := range []netip.Addr{lab.VIP, lab.VIP6} {
		t.Run(familyName(vip), func(t *testing.T) {
			t.Parallel()
			const mode = "sourceip-sourceport-destport"
			c := newFailoverClusterAt(t, vip, 3, mode, []string{"--metrics-address", "127.0.0.1:9787"})
			all := []string{"n1", "n2", "n3"}
			c.waitFlooding("ok", nil)
			c.probeOK("multicast mode, plain bridge", 12)

			const query = 2 * time.Second
			if err := c.SnoopingSwitch(query); err != nil {
				t.Fatal(err)
			}
			c.waitFlooding("broken", all)
			res, err := c.ProbeAt(context.Background(), c.Client, c.vip, 6, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range res {
				if r.Err == nil {
					t.Errorf("multicast mode behind a snooping bridge: connection from port %d answered by %s; the bridge should drop it", r.LocalPort, r.Node)
				}
			}
			for _, h := range c.Nodes {
				st := status(t, c, h)[0]
				if len(st.Problems) == 0 || !strings.Contains(strings.Join(st.Problems, "\n"), "do not reach this node") {
					t.Errorf("%s: problems %q, want the flood check's", h.Name, st.Problems)
				}
				if log := c.Log("daemon-" + h.Name); strings.Count(log, floodBrokenLog) != 1 {
					t.Errorf("%s: the log should say once that frames to the cluster MAC do not reach it:\n%s", h.Name, log)
				}
				c.wantMetric(h, fmt.Sprintf(`clusterip_flooding_ok{vip=%q} 0`, vip))
				c.wantMetric(h, fmt.Sprintf(`clusterip_flooding_state{state="broken",vip=%q} 1`, vip))
			}

			// Unicast mode, by a reload of every node's config file.
			c.reloadWith("--mac-mode unicast")
			c.waitHome()
			c.waitFlooding("ok", nil)
			mac := daemon.DefaultClusterMACFor(vip, 1).String()
			for _, h := range c.Nodes {
				st := status(t, c, h)[0]
				if st.MACMode != "unicast" || st.ClusterMAC != mac || len(st.Problems) != 0 {
					t.Errorf("%s: mac mode %s, cluster MAC %s, problems %q; want unicast, %s, none", h.Name, st.MACMode, st.ClusterMAC, st.Problems, mac)
				}
				c.wantMetric(h, fmt.Sprintf(`clusterip_flooding_ok{vip=%q} 1`, vip))
				if log := c.Log("daemon-" + h.Name); !strings.Contains(log, "frames sent to the cluster MAC reach this node again") && !strings.Contains(log, `flooding=ok`) {
					t.Errorf("%s: the log does not say flooding is ok again", h.Name)
				}
			}
			served := c.probeOK("unicast mode, snooping bridge", 24)
			if len(served) != 3 {
				t.Errorf("24 connections reached only %v", served)
			}
			for i, got := range udpExchangeAt(t, c.Lab, c.client, c.vip, 42000, 12, 64) {
				want := fmt.Sprintf("n%d 64", predict(t, mode, 3, c.client.String(), 42000+i, 7))
				if len(got) != 1 || got[0] != want {
					t.Errorf("unicast mode: datagram from port %d: replies %q, want exactly [%q]", 42000+i, got, want)
				}
			}
			out, err := c.Run(c.Client, "ping", "-c", "4", "-i", "0.2", "-W", "2", c.vip.String())
			if m := pingSummary.FindStringSubmatch(out); err != nil || m == nil || m[2] != "4" || strings.Contains(out, "DUP!") {
				t.Errorf("unicast mode: ping: want 4 replies, one each: %v\n%s", err, out)
			}
			if neigh, _ := c.Run(c.Client, "ip", "neigh", "show", c.vip.String()); !strings.Contains(neigh, "lladdr "+mac) {
				t.Errorf("client's neighbour entry for the VIP is %q, want the unicast cluster MAC %s", neigh, mac)
			}

			// igmp mode: the bridge learns every node's membership and
			// keeps it past the membership interval, so the nodes answer
			// its queries.
			c.reloadWith("--mac-mode igmp")
			c.waitHome()
			sw := &lab.Host{Name: "switch", NS: c.Switch}
			group := "239.255.2.100"
			if vip.Is6() {
				group = "ff15::100"
			}
			members := func() []string {
				out, _ := c.Run(sw, "bridge", "mdb", "show", "dev", "br0")
				var ports []string
				for _, line := range strings.Split(out, "\n") {
					if f := strings.Fields(line); len(f) > 5 && f[5] == group {
						ports = append(ports, f[3])
					}
				}
				slices.Sort(ports)
				return ports
			}
			eventually(t, 10*time.Second, "every node's port in the bridge's table for "+group, func() (bool, string) {
				m := members()
				return slices.Equal(m, []string{"p1", "p2", "p3"}), fmt.Sprint(m)
			})
			time.Sleep(2*query + 2*time.Second) // past the membership interval
			if m := members(); !slices.Equal(m, []string{"p1", "p2", "p3"}) {
				t.Errorf("after the membership interval the bridge has %v for %s: the nodes do not answer its queries", m, group)
			}
			c.waitFlooding("broken", all)
			if err := c.PlainSwitch(); err != nil {
				t.Fatal(err)
			}
			c.waitFlooding("ok", nil)
			c.probeOK("igmp mode, plain bridge", 12)
		})
	}
}

func familyName(vip netip.Addr) string {
	if vip.Is6() {
		return "IPv6"
	}
	return "IPv4"
}

// waitFlooding waits until every node's flood check says state, naming
// nodes as the nodes affected (nil: none), within the 30 s the README
// promises.
func (c *cluster) waitFlooding(state string, nodes []string) {
	c.t.Helper()
	if nodes == nil {
		nodes = []string{}
	}
	eventually(c.t, 30*time.Second, "flooding "+state+" "+fmt.Sprint(nodes)+" on every node", func() (bool, string) {
		var got []string
		ok := true
		for _, h := range c.Nodes {
			out, err := c.Clusterctl(h, "status", "--json")
			if err != nil {
				return false, err.Error()
			}
			var st daemon.Status
			if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Clusters) != 1 {
				return false, out
			}
			f := st.Clusters[0].Flooding
			got = append(got, fmt.Sprintf("%s: %+v", h.Name, f))
			ok = ok && f.State == state && slices.Equal(f.Nodes, nodes)
		}
		return ok, strings.Join(got, "; ")
	})
}

// wantMetric checks that h's metrics have the line want.
func (c *cluster) wantMetric(h *lab.Host, want string) {
	c.t.Helper()
	out, err := c.Run(h, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:9787/metrics")
	if err != nil || !strings.Contains(out, want+"\n") {
		c.t.Errorf("%s: metrics lack %q: %v", h.Name, want, err)
	}
}

// reloadWith rewrites every node's config file with extra on its `new`
// line and reloads the daemons.
func (c *cluster) reloadWith(extra string) {
	c.t.Helper()
	for i, h := range c.Nodes {
		conf := filepath.Join(c.Dir, h.Name+".conf")
		line := fmt.Sprintf("new --vip %s --interface eth0 --hashmode %s --total-nodes %d --local-node %d %s\n",
			c.vip, c.mode, len(c.Nodes), i+1, extra)
		if err := os.WriteFile(conf, []byte(line), 0o600); err != nil {
			c.t.Fatal(err)
		}
		c.ctl(h, "reload")
	}
}

// Without --peers each node judges alone, from the other nodes' hellos and
// probes: each names only itself as not reached. Switching the cluster to
// unicast mode by delete and new then serves through the same snooping
// bridge, here with every packet through user space.
func TestFloodCheckWithoutPeers(t *testing.T) {
	t.Parallel()
	const mode = "sourceip-sourceport"
	c := newCluster(t, 2, mode, false, "--datapath", "user")
	check := func(state string, self bool) {
		t.Helper()
		eventually(t, 30*time.Second, "flooding "+state+" on both nodes", func() (bool, string) {
			var got []string
			ok := true
			for _, h := range c.Nodes {
				f := status(t, c, h)[0].Flooding
				want := []string{}
				if self {
					want = []string{h.Name}
				}
				got = append(got, fmt.Sprintf("%s: %+v", h.Name, f))
				ok = ok && f.State == state && slices.Equal(f.Nodes, want)
			}
			return ok, strings.Join(got, "; ")
		})
	}
	check("ok", false)
	if err := c.SnoopingSwitch(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	check("broken", true)
	for i, h := range c.Nodes {
		c.ctl(h, "delete", c.vip.String())
		c.ctl(h, "new", "--vip", c.vip.String(), "--interface", "eth0", "--hashmode", mode, "--total-nodes", "2",
			"--local-node", fmt.Sprint(i+1), "--mac-mode", "unicast")
	}
	check("ok", false)
	served := c.probeOK("unicast mode, user path, snooping bridge", 16)
	if len(served) != 2 {
		t.Errorf("16 connections reached only %v", served)
	}
	for _, h := range c.Nodes {
		if st := status(t, c, h)[0]; st.KernelPath || st.Packets.UserAnswered == 0 {
			t.Errorf("%s: --datapath user, but kernel path %v and %d packets through user space", h.Name, st.KernelPath, st.Packets.UserAnswered)
		}
	}
}
