package test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/internal/daemon"
	"github.com/clusterip/clusterip/internal/datapath"
	"github.com/clusterip/clusterip/internal/lab"
)

// curl6 fetches path from the IPv6 VIP from h's source port (0: any).
func curl6(c *cluster, h *lab.Host, port int, path string, extra ...string) (string, error) {
	args := []string{"-6", "-sS", "--max-time", "10"}
	if port != 0 {
		args = append(args, "--local-port", strconv.Itoa(port))
	}
	args = append(append(args, extra...), "http://["+lab.VIP6.String()+"]"+path)
	out, err := c.Run(h, "curl", args...)
	return strings.TrimSpace(out), err
}

// Each TCP connection to an IPv6 VIP is served by exactly the node
// `clusterctl hash` names (the nftables hash, IPv6's only one), in every
// hash mode, through user space and through the kernel path; the client
// learns the cluster MAC for the VIP from the nodes' neighbour
// advertisements.
func TestIPv6TCPServedByHashedNode(t *testing.T) {
	for _, tc := range []struct{ mode, datapath string }{
		{modes[0], "auto"}, {modes[1], "auto"}, {modes[2], "auto"}, {modes[1], "user"},
	} {
		t.Run(tc.mode+"/"+tc.datapath, func(t *testing.T) {
			c := newClusterAt(t, lab.VIP6, 3, tc.mode, false, "--datapath", tc.datapath)
			seen := map[string]int{}
			for port := 40100; port < 40124; port++ {
				want := fmt.Sprintf("n%d", predict(t, tc.mode, 3, lab.ClientAddr6.String(), port, 80))
				out, err := curl6(c, c.Client, port, "/")
				if err != nil {
					t.Fatalf("port %d: %v", port, err)
				}
				if out != want {
					t.Errorf("connection from port %d served by %q, hash names %s", port, out, want)
				}
				seen[out]++
			}
			if tc.mode != "sourceip" && len(seen) != 3 {
				t.Errorf("24 connections reached only %v; a port mode should spread them over all 3 nodes", seen)
			}
			neigh, err := c.Run(c.Client, "ip", "-6", "neigh", "show", lab.VIP6.String())
			if err != nil {
				t.Fatal(err)
			}
			if mac := daemon.DefaultClusterMAC(lab.VIP6).String(); !strings.Contains(neigh, "lladdr "+mac) {
				t.Errorf("client's neighbour entry for the VIP is %q, want the cluster MAC %s", neigh, mac)
			}
			for _, h := range c.Nodes {
				st := status(t, c, h)[0]
				if st.HashCompat != "nftables" || st.ClusterMAC != "33:33:00:00:01:00" {
					t.Errorf("%s: status says hash %s, MAC %s", h.Name, st.HashCompat, st.ClusterMAC)
				}
				// The connections went the way --datapath says: each is
				// several packets from the client.
				p := st.Packets
				switch {
				case tc.datapath == "auto" && seen[h.Name] > 0 && (!st.KernelPath || p.KernelAnswered < uint64(3*seen[h.Name])):
					t.Errorf("%s: kernel path %v, %d packets through it for %d connections", h.Name, st.KernelPath, p.KernelAnswered, seen[h.Name])
				case tc.datapath == "user" && (st.KernelPath || p.KernelAnswered != 0):
					t.Errorf("%s: --datapath user, but kernel path %v answered %d", h.Name, st.KernelPath, p.KernelAnswered)
				}
			}
		})
	}
}

// One reply per ping, also fragmented, and the neighbour solicitations
// answered along the way.
func TestIPv6PingOneReplyEach(t *testing.T) {
	c := newClusterAt(t, lab.VIP6, 3, "sourceip-sourceport", false)
	for _, size := range []string{"56", "4000"} {
		out, err := c.Run(c.Client, "ping", "-6", "-c", "4", "-i", "0.2", "-W", "2", "-s", size, lab.VIP6.String())
		if err != nil {
			t.Fatalf("ping -6 -s %s: %v\n%s", size, err, out)
		}
		m := pingSummary.FindStringSubmatch(out)
		if m == nil || m[1] != "4" || m[2] != "4" || strings.Contains(out, "DUP!") {
			t.Errorf("ping -6 -s %s: want 4 replies, one each:\n%s", size, out)
		}
	}
	var replies uint64
	for _, h := range c.Nodes {
		replies += status(t, c, h)[0].Packets.NDReplies
	}
	if replies == 0 {
		t.Error("no node counted a neighbour advertisement")
	}
}

// One reply per UDP datagram over IPv6, from the node the hash names, for
// small datagrams and for ones fragmented on the wire, whose ports only the
// first fragment carries, behind the fragment header.
func TestIPv6UDPOneReplyPerDatagram(t *testing.T) {
	const mode = "sourceip-sourceport-destport"
	c := newClusterAt(t, lab.VIP6, 3, mode, false)
	for _, size := range []int{64, 4000} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			base := 41000 + size%1000
			for i, got := range udpExchangeAt(t, c.Lab, lab.ClientAddr6, lab.VIP6, base, 20, size) {
				port := base + i
				want := fmt.Sprintf("n%d %d", predict(t, mode, 3, lab.ClientAddr6.String(), port, 7), size)
				if len(got) != 1 || got[0] != want {
					t.Errorf("datagram from port %d: replies %q, want exactly [%q]", port, got, want)
				}
			}
		})
	}
}

// "Packet too big" from a router reaches the node that owns the quoted
// connection: IPv6 routers never fragment, so without this every node but
// one would stall on a 1280-byte path.
func TestIPv6PathMTUDiscoveryThroughRouter(t *testing.T) {
	const mode = "sourceip-sourceport"
	c := newClusterAt(t, lab.VIP6, 3, mode, true)
	perNode := map[int]int{}
	for port := 42000; port < 42100 && len(perNode) < 3 || perNode[1] < 2 || perNode[2] < 2 || perNode[3] < 2; port++ {
		node := predict(t, mode, 3, lab.RemoteAddr6.String(), port, 80)
		if perNode[node] >= 2 {
			continue
		}
		perNode[node]++
		out, err := curl6(c, c.Remote, port, "/bytes?n=1000000", "-o", "/dev/null", "-w", "%{size_download}")
		if err != nil {
			t.Fatalf("download from port %d (node %d) stalled: path-MTU discovery broken: %v", port, node, err)
		}
		if out != "1000000" {
			t.Fatalf("download from port %d got %s bytes", port, out)
		}
		route, err := c.Run(c.Nodes[node-1], "ip", "-6", "route", "get", lab.RemoteAddr6.String())
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(route, fmt.Sprintf("mtu %d", lab.RemoteMTU)) {
			t.Errorf("owner n%d did not learn the path MTU %d: %s", node, lab.RemoteMTU, route)
		}
	}
}

// Takeover through the control file, named after the VIP as netip prints
// it: n1 takes number 2 with +2 and answers its connections.
func TestIPv6TakeoverWithControlFile(t *testing.T) {
	const mode = "sourceip-sourceport"
	c := newClusterAt(t, lab.VIP6, 3, mode, false)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	file := c.ControlFileOf(n1, lab.VIP6)
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("control file %s: %v", file, err)
	}
	if err := c.daemons["n2"].Stop(syscall.SIGTERM, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Run(n1, "bash", "-c", "echo +2 > "+file); err != nil {
		t.Fatalf("echo +2: %v %s", err, out)
	}
	if got := strings.TrimSpace(readFile(t, file)); got != "1,2" {
		t.Fatalf("control file says %q, want 1,2", got)
	}
	served := 0
	for port := 40300; port < 40400 && served < 3; port++ {
		if predict(t, mode, 3, lab.ClientAddr6.String(), port, 80) != 2 {
			continue
		}
		out, err := curl6(c, c.Client, port, "/")
		if err != nil || out != "n1" {
			t.Fatalf("number 2's connection from port %d: %q, %v; want n1 (n2 is %s)", port, out, err, n2.Name)
		}
		served++
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Automatic failover on an IPv6 VIP: kill -9 of a daemon hands its number
// to a survivor, which answers new connections for it; a drain hands off
// without breaking a connection; a resume brings the number home. The
// health check connects to the IPv6 VIP.
func TestIPv6FailoverKillAndDrain(t *testing.T) {
	c := newFailoverClusterAt(t, lab.VIP6, 3, "sourceip-sourceport", nil, "--check", "tcp:7", "--check-interval", "200ms")
	time.Sleep(time.Second) // five probes: a check that cannot reach the VIP falls after three
	for _, h := range c.Nodes {
		if st := status(t, c, h)[0]; st.Check == nil || !st.Check.Healthy {
			t.Fatalf("%s: health check of [%s]:7 %+v", h.Name, lab.VIP6, st.Check)
		}
	}
	onN1 := c.openLong(1, 3, 44000)
	c.ctl(c.Nodes[0], "drain", lab.VIP6.String())
	eventually(t, 5*time.Second, "n1 hands number 1 over", func() (bool, string) {
		got := c.servingAll()
		return !strings.HasPrefix(got, "n1=1 ") && strings.Contains(got, "1"), got
	})
	checkLong(t, "during the drain", onN1)
	c.probeOK("while n1 drains", 20)
	c.ctl(c.Nodes[0], "resume", lab.VIP6.String())
	c.waitHome()
	checkLong(t, "after the resume", onN1)

	if err := c.daemons["n3"].Stop(syscall.SIGKILL, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "survivors take number 3", func() (bool, string) {
		got := c.servingAll()
		return strings.Contains(got, "n1=1,3") || strings.Contains(got, "n2=2,3"), got
	})
	served := c.probeOK("after n3 died", 30)
	if served["n3"] != 0 {
		t.Errorf("the dead n3 served %d connections", served["n3"])
	}
}

// Dual stack: an IPv4 and an IPv6 cluster on the same interface of the
// same nodes, both serving at once.
func TestDualStack(t *testing.T) {
	const mode = "sourceip-sourceport"
	c := newCluster(t, 3, mode, false)
	for i, h := range c.Nodes {
		c.ctl(h, "new", "--vip", lab.VIP6.String(), "--interface", "eth0", "--hashmode", mode,
			"--total-nodes", "3", "--local-node", strconv.Itoa(i+1))
	}
	if err := c.WaitServingAt(context.Background(), lab.VIP6); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type result struct {
		vip  string
		errs []string
	}
	results := make(chan result, 2)
	for _, vip := range []struct {
		addr, client string
	}{{lab.VIP.String(), lab.ClientAddr.String()}, {lab.VIP6.String(), lab.ClientAddr6.String()}} {
		go func() {
			var errs []string
			res, err := c.ProbeAt(ctx, c.Client, netip.MustParseAddr(vip.addr), 40, 2*time.Second)
			if err != nil {
				errs = append(errs, err.Error())
			}
			for _, r := range res {
				want := predict(t, mode, 3, vip.client, r.LocalPort, 80)
				if r.Err != nil || r.Node != fmt.Sprintf("n%d", want) {
					errs = append(errs, fmt.Sprintf("port %d: %s, %v (want n%d)", r.LocalPort, r.Node, r.Err, want))
				}
			}
			results <- result{vip.addr, errs}
		}()
	}
	for range 2 {
		r := <-results
		for _, e := range r.errs {
			t.Errorf("%s: %s", r.vip, e)
		}
	}
	st := status(t, c, c.Nodes[0])
	if len(st) != 2 {
		t.Fatalf("n1 runs %d clusters, want 2", len(st))
	}
}

// A mixed IPv6 cluster: node 1 runs the kernel's nftables recipe, nodes 2
// and 3 the daemon; every connection and datagram is answered once, by the
// node the hash names. The daemons answer the neighbour solicitations with
// the cluster MAC (the recipe only stops the kernel from advertising its
// own).
func TestMixedIPv6ClusterWithNFTablesNode(t *testing.T) {
	const mode = "sourceip-sourceport-destport"
	const seed = 99
	l := newLab(t, 3, false)
	mac := daemon.DefaultClusterMAC(lab.VIP6)
	if err := l.NFTablesNode(l.Nodes[0], lab.VIP6, mac, hash.Config{Mode: hash.SourceIPSourcePortDestPort, TotalNodes: 3, Seed: seed}, 1); err != nil {
		t.Fatal(err)
	}
	for i, h := range l.Nodes[1:] {
		if _, err := l.StartDaemon(h); err != nil {
			t.Fatal(err)
		}
		if out, err := l.Clusterctl(h, "new", "--vip", lab.VIP6.String(), "--interface", "eth0", "--hashmode", mode,
			"--total-nodes", "3", "--local-node", strconv.Itoa(i+2), "--hash-init", strconv.Itoa(seed)); err != nil {
			t.Fatalf("new: %v: %s", err, out)
		}
	}
	for _, h := range l.Nodes {
		if _, err := l.StartServer(h, "--tcp", ":80", "--udp", ":7"); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range l.Nodes {
		if err := l.WaitListening(h, 7); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.WaitServingAt(context.Background(), lab.VIP6); err != nil {
		t.Fatal(err)
	}
	c := &cluster{Lab: l, t: t, vip: lab.VIP6, client: lab.ClientAddr6, mode: mode}
	predictMode := fmt.Sprintf("%s --hash-init %d", mode, seed)
	seen := map[string]int{}
	for port := 40200; port < 40230; port++ {
		want := fmt.Sprintf("n%d", predict(t, predictMode, 3, lab.ClientAddr6.String(), port, 80))
		out, err := curl6(c, c.Client, port, "/")
		if err != nil {
			t.Fatalf("connection from port %d (hash names %s): %v", port, want, err)
		}
		if out != want {
			t.Errorf("connection from port %d served by %q, hash names %s", port, out, want)
		}
		seen[out]++
	}
	if len(seen) != 3 {
		t.Errorf("30 connections reached only %v; they should spread over all 3 nodes", seen)
	}
	base := 41300
	for i, got := range udpExchangeAt(t, l, lab.ClientAddr6, lab.VIP6, base, 20, 64) {
		want := fmt.Sprintf("n%d 64", predict(t, predictMode, 3, lab.ClientAddr6.String(), base+i, 7))
		if len(got) != 1 || got[0] != want {
			t.Errorf("datagram from port %d: replies %q, want exactly [%q]", base+i, got, want)
		}
	}
}

// Malformed IPv6 frames and bad neighbour solicitations are counted as
// malformed, never answered, and leave the daemon serving.
func TestIPv6MalformedFramesDropped(t *testing.T) {
	c := newClusterAt(t, lab.VIP6, 1, "sourceip", false, "--datapath", "user")
	n1 := c.Nodes[0]
	raw := c.rawSender()
	clusterMAC := daemon.DefaultClusterMAC(lab.VIP6)
	sn, snMAC := datapath.SolicitedNode(lab.VIP6)
	vip, client := lab.VIP6.As16(), lab.ClientAddr6.As16()
	ipv6 := func(next byte, payload []byte) []byte {
		b := make([]byte, 40, 40+len(payload))
		b[0], b[6], b[7] = 0x60, next, 64
		binary.BigEndian.PutUint16(b[4:6], uint16(len(payload)))
		copy(b[8:24], client[:])
		copy(b[24:40], vip[:])
		return append(b, payload...)
	}
	eth := func(dst net.HardwareAddr, ip []byte) []byte {
		f := append(append([]byte{}, dst...), raw.mac...)
		f = binary.BigEndian.AppendUint16(f, 0x86dd)
		return append(f, ip...)
	}
	opts := func(next byte, n int) []byte { return append([]byte{next, byte(n)}, make([]byte, 6+8*n)...) }
	var chain []byte
	for i := 0; i < 20; i++ {
		chain = append(chain, opts(60, 0)...)
	}
	ns := func(hop byte, options []byte) []byte {
		msg := append([]byte{135, 0, 0, 0, 0, 0, 0, 0}, vip[:]...)
		msg = append(msg, options...)
		b := ipv6(58, msg)
		copy(b[24:40], sn.AsSlice())
		b[7] = hop
		var s uint32
		sum := func(p []byte) {
			for i := 0; i+1 < len(p); i += 2 {
				s += uint32(p[i])<<8 | uint32(p[i+1])
			}
		}
		sum(b[8:40])
		s += uint32(len(msg)) + 58
		sum(msg)
		for s > 0xffff {
			s = s>>16 + s&0xffff
		}
		binary.BigEndian.PutUint16(b[42:44], ^uint16(s))
		return eth(snMAC, b)
	}
	frames := [][]byte{
		eth(clusterMAC, ipv6(6, mkTCPHeader())[:50]),                                                          // payload length past the frame
		eth(clusterMAC, ipv6(60, append(opts(6, 3), mkTCPHeader()...))[:60]),                                  // options past the frame
		eth(clusterMAC, ipv6(60, append(opts(0, 0), mkTCPHeader()...))),                                       // hop-by-hop not first
		eth(clusterMAC, ipv6(60, append(chain, mkTCPHeader()...))),                                            // 20 destination options
		eth(clusterMAC, ipv6(44, append([]byte{44, 0, 0, 1, 0, 0, 0, 1}, []byte{6, 0, 0, 1, 0, 0, 0, 1}...))), // two fragment headers
		eth(clusterMAC, func() []byte { b := ipv6(6, mkTCPHeader()); b[4], b[5] = 0, 0; return b }()),         // jumbogram
		ns(254, nil),                            // hop limit 254
		ns(255, []byte{1, 0, 0, 0, 0, 0, 0, 0}), // option of length 0
		ns(255, []byte{1, 2, 0, 0, 0, 0, 0, 0}), // option past the end
	}
	before := status(t, c, n1)[0].Packets
	for round := 0; round < 10; round++ {
		for _, f := range frames {
			if err := raw.sendTo(f, f[0:6]); err != nil {
				t.Fatal(err)
			}
		}
	}
	eventually(t, 3*time.Second, "malformed frames counted", func() (bool, string) {
		st := status(t, c, n1)[0].Packets
		return st.Malformed >= before.Malformed+uint64(10*len(frames)), fmt.Sprintf("%+v", st)
	})
	after := status(t, c, n1)[0].Packets
	if after.NDReplies != before.NDReplies || after.UserAnswered != before.UserAnswered {
		t.Errorf("malformed frames answered: %+v, before %+v", after, before)
	}
	if err := c.WaitServingAt(context.Background(), lab.VIP6); err != nil {
		t.Fatalf("daemon stopped serving after malformed frames: %v", err)
	}
}

// mkTCPHeader is a 20-byte TCP SYN from port 40000 to 80.
func mkTCPHeader() []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:2], 40000)
	binary.BigEndian.PutUint16(b[2:4], 80)
	b[12], b[13] = 5<<4, 0x02
	return b
}
