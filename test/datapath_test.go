package test

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clusterip/clusterip/internal/daemon"
	"github.com/clusterip/clusterip/internal/lab"
)

var modes = []string{"sourceip", "sourceip-sourceport", "sourceip-sourceport-destport"}

// Each TCP connection is served by exactly the node `clusterctl hash`
// names, in every hash mode, with curl as the client: through the kernel
// path with --datapath auto, through user space with --datapath user.
func TestTCPConnectionServedByHashedNode(t *testing.T) {
	for _, tc := range []struct{ mode, datapath string }{
		{modes[0], "auto"}, {modes[1], "auto"}, {modes[2], "auto"}, {modes[1], "user"}, {modes[2], "user"},
	} {
		mode := tc.mode
		t.Run(tc.mode+"/"+tc.datapath, func(t *testing.T) {
			c := newCluster(t, 3, mode, false, "--datapath", tc.datapath)
			before := map[string]daemon.ClusterStatus{}
			for _, h := range c.Nodes {
				before[h.Name] = status(t, c, h)[0]
			}
			seen := map[string]int{}
			for port := 40100; port < 40124; port++ {
				want := fmt.Sprintf("n%d", predict(t, mode, 3, lab.ClientAddr.String(), port, 80))
				out, err := c.Run(c.Client, "curl", "-sS", "--max-time", "5", "--local-port", strconv.Itoa(port), "http://"+lab.VIP.String()+"/")
				if err != nil {
					t.Fatalf("port %d: %v", port, err)
				}
				if got := strings.TrimSpace(out); got != want {
					t.Errorf("connection from port %d served by %q, hash names %s", port, got, want)
				}
				seen[strings.TrimSpace(out)]++
			}
			if mode != "sourceip" && len(seen) != 3 {
				t.Errorf("24 connections reached only %v; a port mode should spread them over all 3 nodes", seen)
			}
			// Every connection is several packets from the client; they
			// must have gone the way --datapath says.
			for _, h := range c.Nodes {
				if seen[h.Name] == 0 {
					continue
				}
				st := status(t, c, h)[0]
				viaKernel := st.Packets.KernelAnswered - before[h.Name].Packets.KernelAnswered
				viaUser := st.Packets.UserAnswered - before[h.Name].Packets.UserAnswered
				switch {
				case tc.datapath == "auto" && (!st.KernelPath || fmt.Sprint(st.InKernel) != fmt.Sprint(st.Serving) || viaKernel < uint64(3*seen[h.Name]) || viaUser != 0):
					t.Errorf("%s: kernel path %v for %v (serving %v), %d packets through it and %d through user space for %d connections",
						h.Name, st.KernelPath, st.InKernel, st.Serving, viaKernel, viaUser, seen[h.Name])
				case tc.datapath == "user" && (st.KernelPath || viaUser < uint64(3*seen[h.Name])):
					t.Errorf("%s: --datapath user, but kernel path %v, %d packets through user space for %d connections",
						h.Name, st.KernelPath, viaUser, seen[h.Name])
				}
			}
		})
	}
}

var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// One reply per ping, also when the request and reply are fragmented.
func TestPingOneReplyEach(t *testing.T) {
	c := newCluster(t, 3, "sourceip-sourceport", false)
	for _, size := range []string{"56", "4000"} {
		out, err := c.Run(c.Client, "ping", "-c", "4", "-i", "0.2", "-W", "2", "-s", size, lab.VIP.String())
		if err != nil {
			t.Fatalf("ping -s %s: %v", size, err)
		}
		m := pingSummary.FindStringSubmatch(out)
		if m == nil || m[1] != "4" || m[2] != "4" {
			t.Errorf("ping -s %s: want 4 sent and 4 received:\n%s", size, out)
		}
		if strings.Contains(out, "DUP!") {
			t.Errorf("ping -s %s: duplicate replies: more than one node answered:\n%s", size, out)
		}
	}
}

// One reply per UDP datagram, from the node the hash names, for small
// datagrams and for ones fragmented on the wire (only the first fragment
// carries the ports the hash needs).
func TestUDPOneReplyPerDatagram(t *testing.T) {
	const mode = "sourceip-sourceport-destport"
	c := newCluster(t, 3, mode, false)
	for _, size := range []int{64, 4000} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			base := 41000 + size%1000
			for i, got := range udpExchange(t, c.Lab, base, 20, size) {
				port := base + i
				want := fmt.Sprintf("n%d %d", predict(t, mode, 3, lab.ClientAddr.String(), port, 7), size)
				if len(got) != 1 || got[0] != want {
					t.Errorf("datagram from port %d: replies %q, want exactly [%q]", port, got, want)
				}
			}
		})
	}
}

// udpExchange sends a datagram of size bytes to the VIP's echo port from
// each of count client ports starting at base, and returns the replies each
// port got: after the first, it waits a little longer for a duplicate.
func udpExchange(t *testing.T, l *lab.Lab, base, count, size int) [][]string {
	t.Helper()
	return udpExchangeAt(t, l, lab.ClientAddr, lab.VIP, base, count, size)
}

// udpExchangeAt is udpExchange from client to vip.
func udpExchangeAt(t *testing.T, l *lab.Lab, client, vipAddr netip.Addr, base, count, size int) [][]string {
	t.Helper()
	socks := make([]*net.UDPConn, count)
	t.Cleanup(func() {
		for _, s := range socks {
			if s != nil {
				s.Close()
			}
		}
	})
	err := inNetns(l.Client.NS, func() error {
		for i := range socks {
			s, err := net.ListenUDP("udp", &net.UDPAddr{IP: client.AsSlice(), Port: base + i})
			if err != nil {
				return err
			}
			socks[i] = s
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	vip := &net.UDPAddr{IP: vipAddr.AsSlice(), Port: 7}
	payload := make([]byte, size)
	for _, s := range socks {
		if _, err := s.WriteTo(payload, vip); err != nil {
			t.Fatal(err)
		}
	}
	replies := make([][]string, count)
	buf := make([]byte, 2048)
	for i, s := range socks {
		s.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, _, err := s.ReadFrom(buf)
			if err != nil {
				break
			}
			replies[i] = append(replies[i], string(buf[:n]))
			s.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		}
	}
	return replies
}

// ICMP "fragmentation needed" from a router reaches the node that owns the
// quoted connection, so path-MTU discovery works for every node's clients,
// not only for the node the router's own address hashes to. The remote
// client sits behind a 1280-byte link while the cluster's LAN is 1500.
func TestPathMTUDiscoveryThroughRouter(t *testing.T) {
	const mode = "sourceip-sourceport"
	c := newCluster(t, 3, mode, true)
	perNode := map[int]int{}
	for port := 42000; port < 42100 && len(perNode) < 3 || perNode[1] < 2 || perNode[2] < 2 || perNode[3] < 2; port++ {
		node := predict(t, mode, 3, lab.RemoteAddr.String(), port, 80)
		if perNode[node] >= 2 {
			continue
		}
		perNode[node]++
		out, err := c.Run(c.Remote, "curl", "-sS", "--max-time", "10", "--local-port", strconv.Itoa(port),
			"-o", "/dev/null", "-w", "%{size_download}", "http://"+lab.VIP.String()+"/bytes?n=1000000")
		if err != nil {
			t.Fatalf("download from port %d (node %d) stalled: path-MTU discovery broken: %v", port, node, err)
		}
		if strings.TrimSpace(out) != "1000000" {
			t.Fatalf("download from port %d got %s bytes", port, out)
		}
		route, err := c.Run(c.Nodes[node-1], "ip", "route", "get", lab.RemoteAddr.String())
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(route, fmt.Sprintf("mtu %d", lab.RemoteMTU)) {
			t.Errorf("owner n%d did not learn the path MTU %d: %s", node, lab.RemoteMTU, route)
		}
	}
}
