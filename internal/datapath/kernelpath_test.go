package datapath

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/nodeset"
)

// testIfaceProgram loads an interface's program without attaching it.
func testIfaceProgram(tb testing.TB) *ifaceProgram {
	tb.Helper()
	ip, err := newIfaceProgram()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ip.close() })
	return ip
}

// addTestCluster adds a cluster to ip, taking set and protos and leaving
// pass to user space.
func addTestCluster(tb testing.TB, ip *ifaceProgram, vip netip.Addr, mac net.HardwareAddr, cfg hash.Config, set, pass nodeset.NodeSet, protos kernelProtos) *kernelPath {
	tb.Helper()
	k, err := ip.add(vip, mac, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := k.update(set, pass, protos); err != nil {
		tb.Fatal(err)
	}
	return k
}

// loadKernelPath returns a function that runs the kernel path's program,
// taking set and protos and leaving pass, on a frame and tells whether it
// took the frame, or dropped it.
func loadKernelPath(t *testing.T, cfg hash.Config, set, pass nodeset.NodeSet, protos kernelProtos) func([]byte) (taken, dropped bool) {
	t.Helper()
	return loadKernelPathAt(t, testVIP, testClusterMAC, cfg, set, pass, protos)
}

// loadKernelPathAt is loadKernelPath for vip and mac.
func loadKernelPathAt(t *testing.T, vip netip.Addr, mac net.HardwareAddr, cfg hash.Config, set, pass nodeset.NodeSet, protos kernelProtos) func([]byte) (taken, dropped bool) {
	t.Helper()
	ip := testIfaceProgram(t)
	k := addTestCluster(t, ip, vip, mac, cfg, set, pass, protos)
	return func(frame []byte) (bool, bool) {
		before := k.taken()
		ret, err := ip.prog.Run(&ebpf.RunOptions{Data: frame})
		if err != nil {
			t.Fatalf("run: %v", err)
		}
		taken := k.taken() == before+1
		switch int32(ret) {
		case tcxNext:
			return taken, false
		case tcxDrop:
			if taken {
				t.Fatalf("program counted a frame it dropped")
			}
			return false, true
		}
		t.Fatalf("program returned %d, want TCX_NEXT or TCX_DROP", int32(ret))
		return false, false
	}
}

// splitVerdict runs the kernel path (take) on frame, then the capture
// filter (untaken) on it if the kernel path left it on, as the kernel does.
// A frame taken is the host's when the capture filter runs, which then
// leaves it out (TestCaptureFilterLeavesTakenFrames).
func splitVerdict(t *testing.T, take func([]byte) (bool, bool), untaken captureRunner, frame []byte) (taken, dropped, passed bool) {
	t.Helper()
	if taken, dropped = take(frame); taken || dropped {
		return taken, dropped, false
	}
	n, err := untaken.Run(frame)
	if err != nil {
		t.Fatal(err)
	}
	return false, false, n > 0
}

// The kernel path, run by the kernel, takes exactly the packets its numbers
// own (Owner.Node, the user-space decision), and the capture filter, run on
// the frame as the kernel path left it, passes to user space exactly what
// it leaves: every packet goes one way at most.
func TestKernelPathSplitsWithCaptureFilter(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loading eBPF needs root")
	}
	rng := rand.New(rand.NewPCG(3, 4))
	modes := []hash.Mode{hash.SourceIP, hash.SourceIPSourcePort, hash.SourceIPSourcePortDestPort}
	vip := testVIP.String()
	for round := 0; round < 24; round++ {
		cfg := hash.Config{Mode: modes[round%3], TotalNodes: uint32(1 + rng.IntN(64)), Seed: rng.Uint32(), Compat: hash.Compat(round / 6 % 2)}
		all := nodeset.NodeSet(1)<<cfg.TotalNodes - 1
		pass := nodeset.NodeSet(rng.Uint64()) & all
		kernel := pass & nodeset.NodeSet(rng.Uint64())
		protos := kernelProtos(round / 3 % 2)
		take := loadKernelPath(t, cfg, kernel, pass, protos)
		// The capture filter, run on frames as the kernel path left them.
		untaken := ownershipVM(t, testVIP, testClusterMAC, cfg, pass)
		o := Owner{Hash: cfg}
		for i := 0; i < 200; i++ {
			src := netip.AddrFrom4([4]byte{byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())}).String()
			sport, dport := uint16(rng.Uint32()), uint16(rng.Uint32())
			proto, l4 := testL4(i%9, sport, dport, rng.Uint32())
			h := testIPHdr{src: src, dst: vip, proto: proto}
			if i%5 == 0 {
				h.options = []byte{1, 1, 1, 0} // the ports move with the header length
			}
			if i%11 == 0 {
				h.flagsOff = ipFlagMF
			}
			ipb := mkIPv4(h, l4)
			mac := testClusterMAC
			if i%13 == 0 {
				mac = testNICMAC
			}
			frame := mkEther(mac, testClientMAC, etherTypeIPv4, ipb)
			var p ipPacket
			if !parseIPv4(ipb, &p) {
				t.Fatal("test packet does not parse")
			}
			node := o.Node(&p)
			forKernel := mac.String() == testClusterMAC.String() && !p.fragment() && protos.takes(proto)
			wantTaken := forKernel && kernel.Contains(node)
			// Another node's share: nobody here wants it.
			wantDropped := forKernel && kernel != 0 && !kernel.Contains(node) && !pass.Contains(node)
			wantPassed := mac.String() == testClusterMAC.String() && !wantTaken &&
				(p.fragment() || proto == protoICMP || pass.Contains(node))
			got, dropped, passed := splitVerdict(t, take, untaken, frame)
			if got != wantTaken || dropped != wantDropped || passed != wantPassed {
				t.Fatalf("cfg %+v pass %s kernel %s protos %d, proto %d from %s:%d (node %d, fragment %v, MAC %s): taken %v dropped %v passed %v, want %v %v %v",
					cfg, pass, kernel, protos, proto, src, sport, node, p.fragment(), mac, got, dropped, passed, wantTaken, wantDropped, wantPassed)
			}
		}
		// Other traffic is never taken: another VIP, ARP, and when the
		// ports are hashed, a packet too short to hold them.
		others := [][]byte{
			mkEther(testClusterMAC, testClientMAC, etherTypeIPv4, mkIPv4(testIPHdr{src: "198.51.100.7", dst: "192.0.2.11", proto: testTCP}, mkTCP(1, 2))),
			mkEther(broadcastMAC, testClientMAC, etherTypeARP, mkARP(arpOpRequest, testClientMAC, "198.51.100.7", nil, vip)),
		}
		if cfg.Mode.UsesPorts() {
			others = append(others, mkEther(testClusterMAC, testClientMAC, etherTypeIPv4, mkIPv4(testIPHdr{src: "198.51.100.7", dst: vip, proto: testTCP}, []byte{0, 80})))
		}
		for _, frame := range others {
			if taken, dropped := take(frame); taken || dropped {
				t.Fatalf("cfg %+v kernel %s: took (%v) or dropped (%v) %x", cfg, kernel, taken, dropped, frame)
			}
		}
	}
}

// BenchmarkKernelPath times the kernel path's program in the kernel
// (BPF_PROG_TEST_RUN, JIT-compiled) on a TCP segment it takes and on one of
// another node's that it leaves, with 1, 100 and 1,000 clusters on the
// interface: one program serves them all, so the cost should not grow. The
// time is the program's alone; the kernel reports it per run.
func BenchmarkKernelPath(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("loading eBPF needs root")
	}
	for _, fam := range kernelBenchFamilies(b, testTCP) {
		for _, vips := range []int{1, 100, 1000} {
			ip := testIfaceProgram(b)
			one := nodeset.NodeSet(0).Add(1)
			addTestCluster(b, ip, fam.vip, fam.mac, fam.cfg, one, one, kernelTCPOnly)
			for i := 1; i < vips; i++ {
				other := fillerVIP(fam.vip, i)
				addTestCluster(b, ip, other, fam.mac, fam.cfg, one, one, kernelTCPOnly)
			}
			for _, bc := range []struct {
				name  string
				frame []byte
			}{{"taken", fam.owned[1]}, {"dropped", fam.owned[2]}} {
				b.Run(fmt.Sprintf("%s/%dVIPs/%s", fam.name, vips, bc.name), func(b *testing.B) {
					benchProgram(b, ip.prog, bc.frame)
				})
			}
		}
	}
}

// BenchmarkKernelPathRecorded: a UDP flow taken under --peers, whose every
// datagram the kernel path finds in its flow map (the steady state of a
// busy flow).
func BenchmarkKernelPathRecorded(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("loading eBPF needs root")
	}
	for _, fam := range kernelBenchFamilies(b, testUDP) {
		ip := testIfaceProgram(b)
		one := nodeset.NodeSet(0).Add(1)
		addTestCluster(b, ip, fam.vip, fam.mac, fam.cfg, one, one, kernelAllRecorded)
		b.Run(fam.name+"/known-flow", func(b *testing.B) { benchProgram(b, ip.prog, fam.owned[1]) })
	}
}

// kernelBenchFamily is a benchmark's VIP of one family, hashed by source
// address and port over 3 nodes, with a frame to it owned by node 1 and
// one owned by node 2.
type kernelBenchFamily struct {
	name  string
	vip   netip.Addr
	mac   net.HardwareAddr
	cfg   hash.Config
	owned map[int][]byte
}

// kernelBenchFamilies returns an IPv4 and an IPv6 kernelBenchFamily whose
// frames are TCP or UDP (proto).
func kernelBenchFamilies(tb testing.TB, proto uint8) []kernelBenchFamily {
	l4 := func(port uint16) []byte { return mkTCP(port, 80) }
	if proto == testUDP {
		l4 = func(port uint16) []byte { return mkUDP(port, 53) }
	}
	fams := []struct {
		kernelBenchFamily
		ip  func(port uint16) []byte
		pkt func([]byte, *ipPacket) bool
		typ uint16
	}{
		{kernelBenchFamily{name: "IPv4", vip: testVIP, mac: testClusterMAC, cfg: hash.Config{Mode: hash.SourceIPSourcePort, TotalNodes: 3, Seed: 7}},
			func(port uint16) []byte {
				return mkIPv4(testIPHdr{src: "198.51.100.7", dst: testVIP.String(), proto: proto}, l4(port))
			}, parseIPv4, etherTypeIPv4},
		{kernelBenchFamily{name: "IPv6", vip: testVIP6, mac: testClusterMAC6, cfg: hash.Config{Mode: hash.SourceIPSourcePort, TotalNodes: 3, Seed: 7, Compat: hash.NFTables}},
			func(port uint16) []byte {
				return mkIPv6("2001:db8:1::7", testVIP6.String(), nil, proto, l4(port))
			}, parseIPv6, etherTypeIPv6},
	}
	var out []kernelBenchFamily
	for _, f := range fams {
		o := Owner{Hash: f.cfg}
		var p ipPacket
		f.owned = map[int][]byte{}
		for port := uint16(1024); len(f.owned) < 2; port++ {
			ipb := f.ip(port)
			if !f.pkt(ipb, &p) {
				tb.Fatal("test packet does not parse")
			}
			if n := o.Node(&p); n <= 2 && f.owned[n] == nil {
				f.owned[n] = mkEther(f.mac, testClientMAC, f.typ, ipb)
			}
		}
		out = append(out, f.kernelBenchFamily)
	}
	return out
}

func benchProgram(b *testing.B, prog *ebpf.Program, frame []byte) {
	_, per, err := prog.Benchmark(frame, b.N, b.ResetTimer)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(per.Nanoseconds()), "kernel-ns/frame")
}

// fillerVIP is the i-th other VIP of vip's family.
func fillerVIP(vip netip.Addr, i int) netip.Addr {
	if vip.Is6() {
		return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0xff, 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
	}
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

// TestKernelPathManyVIPs: one program serving many clusters, of both
// families, each with its own MAC, hash, numbers and protocols, takes
// exactly the packets Owner.Node gives a number its cluster's entry holds,
// counts each in its own cluster's counter, and changing one cluster's
// numbers changes nothing for the others.
func TestKernelPathManyVIPs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loading eBPF needs root")
	}
	rng := rand.New(rand.NewPCG(13, 1))
	ip := testIfaceProgram(t)
	type cluster struct {
		k   *kernelPath
		cfg hash.Config
		mac net.HardwareAddr
	}
	var clusters []*cluster
	for i := range 60 {
		vip := fillerVIP(testVIP, i)
		cfg := hash.Config{Mode: testModes[rng.IntN(3)], TotalNodes: uint32(1 + rng.IntN(64)), Seed: rng.Uint32(), Compat: hash.Compat(rng.IntN(2))}
		if i%3 == 2 {
			vip = fillerVIP(testVIP6, i)
			cfg.Compat = hash.NFTables
		}
		mac := net.HardwareAddr{0x01, 0x00, 0x5e, 0x7f, byte(i >> 8), byte(i)}
		all := nodeset.NodeSet(1)<<cfg.TotalNodes - 1
		c := &cluster{cfg: cfg, mac: mac}
		set := nodeset.NodeSet(rng.Uint64()) & all
		c.k = addTestCluster(t, ip, vip, mac, cfg, set, set|nodeset.NodeSet(rng.Uint64())&all, kernelProtos(rng.IntN(3)))
		clusters = append(clusters, c)
	}
	frame := func(c *cluster, mac net.HardwareAddr, i int) ([]byte, int, uint8) {
		proto, l4 := testL4(i%9, uint16(rng.Uint32()), uint16(rng.Uint32()), rng.Uint32())
		var p ipPacket
		o := Owner{Hash: c.cfg}
		if c.k.vip.Is6() {
			if proto == protoICMP {
				proto, l4 = protoICMPv6, mkICMPv6("2001:db8:1::7", c.k.vip.String(), 128, 0, rng.Uint32(), nil)
			}
			var src [16]byte
			for j := range src {
				src[j] = byte(rng.Uint32())
			}
			ipb := mkIPv6(netip.AddrFrom16(src).String(), c.k.vip.String(), nil, proto, l4)
			if !parseIPv6(ipb, &p) {
				t.Fatal("test packet does not parse")
			}
			return mkEther(mac, testClientMAC, etherTypeIPv6, ipb), o.Node(&p), proto
		}
		src := netip.AddrFrom4([4]byte{byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())}).String()
		ipb := mkIPv4(testIPHdr{src: src, dst: c.k.vip.String(), proto: proto}, l4)
		if !parseIPv4(ipb, &p) {
			t.Fatal("test packet does not parse")
		}
		return mkEther(mac, testClientMAC, etherTypeIPv4, ipb), o.Node(&p), proto
	}
	run := func(f []byte) (dropped bool) {
		ret, err := ip.prog.Run(&ebpf.RunOptions{Data: f})
		if err != nil || int32(ret) != tcxNext && int32(ret) != tcxDrop {
			t.Fatalf("run: %d, %v", int32(ret), err)
		}
		return int32(ret) == tcxDrop
	}
	for round := range 3 {
		for i := range 1500 {
			c := clusters[rng.IntN(len(clusters))]
			mac := c.mac
			if i%17 == 0 {
				mac = clusters[rng.IntN(len(clusters))].mac // another cluster's MAC
			}
			f, node, proto := frame(c, mac, i)
			before := make([]uint64, len(clusters))
			for j, o := range clusters {
				before[j] = o.k.taken()
			}
			dropped := run(f)
			// AH is an extension header in IPv6: user space's.
			plain := !c.k.vip.Is6() || proto != testAH
			judged := mac.String() == c.mac.String() && plain && c.k.protos.takes(proto) && c.k.set != 0
			want := judged && c.k.set.Contains(node)
			if wantDropped := judged && !c.k.set.Contains(node) && !c.k.pass.Contains(node); dropped != wantDropped {
				t.Fatalf("round %d: frame %d to %s (node %d, proto %d, set %s, pass %s, protos %d): dropped %v, want %v",
					round, i, c.k.vip, node, proto, c.k.set, c.k.pass, c.k.protos, dropped, wantDropped)
			}
			for j, o := range clusters {
				got := o.k.taken() - before[j]
				if wantN := map[bool]uint64{true: 1}[want && o == c]; got != wantN {
					t.Fatalf("round %d: frame %d to %s (node %d, proto %d, set %s, protos %d): cluster %s counted %d, want %d",
						round, i, c.k.vip, node, proto, c.k.set, c.k.protos, o.k.vip, got, wantN)
				}
			}
		}
		// New numbers for a third of the clusters, one update each.
		for _, c := range clusters[round%3:] {
			all := nodeset.NodeSet(1)<<c.cfg.TotalNodes - 1
			set := nodeset.NodeSet(rng.Uint64()) & all
			if err := c.k.update(set, set|nodeset.NodeSet(rng.Uint64())&all, kernelProtos(rng.IntN(3))); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A cluster closed is out of the program; its slot is free again.
	c := clusters[0]
	f, _, _ := frame(c, c.mac, 0)
	if err := c.k.close(); err != nil {
		t.Fatal(err)
	}
	before := c.k.taken()
	run(f)
	if c.k.taken() != before {
		t.Errorf("a closed cluster's frame was taken")
	}
	if ip.slots[c.k.slot] {
		t.Errorf("a closed cluster's slot is still in use")
	}
}

// The IPv6 kernel path, run by the kernel, takes exactly the packets its
// numbers own (Owner.Node) among those without extension headers, and the
// capture filter passes to user space exactly what it leaves.
func TestKernelPath6SplitsWithCaptureFilter(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loading eBPF needs root")
	}
	const vip = "2001:db8::10"
	rng := rand.New(rand.NewPCG(6, 4))
	for round := 0; round < 24; round++ {
		cfg := hash.Config{Mode: testModes[round%3], TotalNodes: uint32(1 + rng.IntN(64)), Seed: rng.Uint32(), Compat: hash.NFTables}
		all := nodeset.NodeSet(1)<<cfg.TotalNodes - 1
		pass := nodeset.NodeSet(rng.Uint64()) & all
		kernel := pass & nodeset.NodeSet(rng.Uint64())
		protos := kernelProtos(round / 3 % 2)
		take := loadKernelPathAt(t, testVIP6, testClusterMAC6, cfg, kernel, pass, protos)
		untaken := ownershipVM(t, testVIP6, testClusterMAC6, cfg, pass)
		o := Owner{Hash: cfg}
		for i := 0; i < 200; i++ {
			var src [16]byte
			for j := range src {
				src[j] = byte(rng.Uint32())
			}
			src[0] = 0x20
			sa := netip.AddrFrom16(src).String()
			proto, l4 := testL4(i%9, uint16(rng.Uint32()), uint16(rng.Uint32()), rng.Uint32())
			if proto == protoICMP {
				proto, l4 = protoICMPv6, mkICMPv6(sa, vip, 128, 0, rng.Uint32(), nil)
			}
			var exts []testExt
			switch i % 7 {
			case 0:
				exts = []testExt{extOpts(60, 0)}
			case 1:
				exts = []testExt{extFrag(0, true, rng.Uint32())}
			}
			ip := mkIPv6(sa, vip, exts, proto, l4)
			var p ipPacket
			if !parseIPv6(ip, &p) {
				t.Fatal("test packet does not parse")
			}
			mac := testClusterMAC6
			if i%13 == 0 {
				mac = testNICMAC
			}
			frame := mkEther(mac, testClientMAC, etherTypeIPv6, ip)
			node := o.Node(&p)
			toCluster := mac.String() == testClusterMAC6.String()
			plain := exts == nil && proto != protoICMPv6 && proto != testAH
			forKernel := toCluster && plain && (protos == kernelAllButICMP || proto == testTCP)
			wantTaken := forKernel && kernel.Contains(node)
			wantDropped := forKernel && kernel != 0 && !kernel.Contains(node) && !pass.Contains(node)
			wantPassed := toCluster && !wantTaken && (!plain || pass.Contains(node))
			got, dropped, passed := splitVerdict(t, take, untaken, frame)
			if got != wantTaken || dropped != wantDropped || passed != wantPassed {
				t.Fatalf("cfg %+v pass %s kernel %s protos %d, proto %d from %s (ext %v, node %d, MAC %s): taken %v dropped %v passed %v, want %v %v %v",
					cfg, pass, kernel, protos, proto, sa, exts != nil, node, mac, got, dropped, passed, wantTaken, wantDropped, wantPassed)
			}
		}
		// Never taken: another VIP, IPv4, a neighbour solicitation.
		sn, snMAC := SolicitedNode(testVIP6)
		for _, frame := range [][]byte{
			mkEther(testClusterMAC6, testClientMAC, etherTypeIPv6, mkIPv6("2001:db8:1::7", "2001:db8::11", nil, testTCP, mkTCP(1, 2))),
			mkEther(testClusterMAC6, testClientMAC, etherTypeIPv4, mkIPv4(testIPHdr{src: "198.51.100.7", dst: "192.0.2.10", proto: testTCP}, mkTCP(1, 2))),
			mkEther(snMAC, testClientMAC, etherTypeIPv6, mkIPv6("2001:db8:1::7", sn.String(), nil, protoICMPv6, mkNS("2001:db8:1::7", sn.String(), vip, nil))),
		} {
			if taken, dropped := take(frame); taken || dropped {
				t.Fatalf("cfg %+v kernel %s: took (%v) or dropped (%v) % x", cfg, kernel, taken, dropped, frame)
			}
		}
	}
}

// TestKernelPathRecordsFlows: with flow tracking the kernel path records
// each connectionless flow it takes, keyed as the flow table keys it (the
// client's address mapped, the raw ports hash.Config.RawPorts reads), with
// its number and the time of its last packet; TCP, and what it leaves, it
// does not record.
func TestKernelPathRecordsFlows(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loading eBPF needs root")
	}
	for _, fam := range []struct {
		vip netip.Addr
		mac net.HardwareAddr
		cfg hash.Config
	}{
		{testVIP, testClusterMAC, hash.Config{Mode: hash.SourceIPSourcePort, TotalNodes: 2, Seed: 3}},
		{testVIP, testClusterMAC, hash.Config{Mode: hash.SourceIP, TotalNodes: 2, Seed: 3, Compat: hash.NFTables}},
		{testVIP6, testClusterMAC6, hash.Config{Mode: hash.SourceIPSourcePortDestPort, TotalNodes: 2, Seed: 3, Compat: hash.NFTables}},
	} {
		ip := testIfaceProgram(t)
		one, both := nodeset.NodeSet(0).Add(1), nodeset.NodeSet(0).Add(1).Add(2)
		k := addTestCluster(t, ip, fam.vip, fam.mac, fam.cfg, one, both, kernelAllRecorded)
		// Another cluster's flows are its own.
		other := addTestCluster(t, ip, fillerVIP(fam.vip, 9), fam.mac, fam.cfg, both, both, kernelAllRecorded)
		o := Owner{Hash: fam.cfg}
		want := map[flowKey]uint8{}
		start := time.Now().UnixNano()
		rng := rand.New(rand.NewPCG(5, 5))
		for i := range 300 {
			proto, l4 := testL4(i%9, uint16(rng.Uint32()), uint16(rng.Uint32()), rng.Uint32())
			var ipb []byte
			var p ipPacket
			typ := uint16(etherTypeIPv4)
			if fam.vip.Is6() {
				if proto == protoICMP || proto == testAH {
					continue
				}
				src := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 1, 15: byte(rng.Uint32())})
				ipb, typ = mkIPv6(src.String(), fam.vip.String(), nil, proto, l4), etherTypeIPv6
				parseIPv6(ipb, &p)
			} else {
				src := netip.AddrFrom4([4]byte{198, 51, 100, byte(rng.Uint32())})
				ipb = mkIPv4(testIPHdr{src: src.String(), dst: fam.vip.String(), proto: proto}, l4)
				parseIPv4(ipb, &p)
			}
			ret, err := ip.prog.Run(&ebpf.RunOptions{Data: mkEther(fam.mac, testClientMAC, typ, ipb)})
			if err != nil || int32(ret) != tcxNext {
				t.Fatalf("run: %d, %v", int32(ret), err)
			}
			f := o.flow(&p)
			if f.node == 1 && proto != protoTCP && proto != protoICMP {
				want[f.key] = uint8(f.node)
			}
		}
		got, err := k.flows(nodeset.NodeSet(0).Add(1).Add(2))
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now().UnixNano()
		seen := map[flowKey]bool{}
		for _, f := range got {
			node, ok := want[f.key]
			if !ok || node != f.node {
				t.Errorf("%s: recorded %+v, not a flow taken (want %v)", fam.vip, f, ok)
			}
			// The coarse clock lags by up to a tick (10 ms at HZ=100).
			if f.lastSeen < start-int64(20*time.Millisecond) || f.lastSeen > now+int64(time.Millisecond) {
				t.Errorf("%s: flow last seen %s from now", fam.vip, time.Duration(now-f.lastSeen))
			}
			seen[f.key] = true
		}
		if len(seen) != len(want) || len(want) < 20 {
			t.Errorf("%s: %d flows recorded, want %d", fam.vip, len(seen), len(want))
		}
		if none, _ := k.flows(nodeset.NodeSet(0).Add(2)); len(none) != 0 {
			t.Errorf("%s: %d flows of number 2, which it does not take", fam.vip, len(none))
		}
		if theirs, _ := other.flows(nodeset.NodeSet(0).Add(1).Add(2)); len(theirs) != 0 {
			t.Errorf("%s: another cluster sees %d of its flows", fam.vip, len(theirs))
		}
	}
}

// TestKernelPathRefreshesFlows: a known flow's time is rewritten at most
// every flowSeenStep, and its number at once if it changed.
func TestKernelPathRefreshesFlows(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("loading eBPF needs root")
	}
	cfg := hash.Config{Mode: hash.SourceIPSourcePort, TotalNodes: 2, Seed: 3}
	ip := testIfaceProgram(t)
	both := nodeset.NodeSet(0).Add(1).Add(2)
	k := addTestCluster(t, ip, testVIP, testClusterMAC, cfg, both, both, kernelAllRecorded)
	frame := mkEther(testClusterMAC, testClientMAC, etherTypeIPv4,
		mkIPv4(testIPHdr{src: "198.51.100.7", dst: testVIP.String(), proto: testUDP}, mkUDP(5353, 53)))
	seen := func() kernelFlow {
		t.Helper()
		if ret, err := ip.prog.Run(&ebpf.RunOptions{Data: frame}); err != nil || int32(ret) != tcxNext {
			t.Fatalf("run: %d, %v", int32(ret), err)
		}
		got, err := k.flows(nodeset.NodeSet(0).Add(1).Add(2))
		if err != nil || len(got) != 1 {
			t.Fatalf("flows: %v, %v", got, err)
		}
		return got[0]
	}
	first := seen()
	// flows turns monotonic times into wall time: allow its jitter.
	time.Sleep(20 * time.Millisecond)
	if again := seen(); again.lastSeen-first.lastSeen > int64(time.Millisecond) {
		t.Errorf("time rewritten after %s, before flowSeenStep", time.Duration(again.lastSeen-first.lastSeen))
	}
	time.Sleep(flowSeenStep + 30*time.Millisecond)
	later := seen()
	if later.lastSeen-first.lastSeen < int64(flowSeenStep) {
		t.Errorf("time not rewritten %s later: moved %s", flowSeenStep+30*time.Millisecond, time.Duration(later.lastSeen-first.lastSeen))
	}

	// A recorded number that is not the flow's is rewritten at the next packet.
	key, value := make([]byte, flowMapKeyLen), make([]byte, flowMapValueLen)
	it := ip.flows.Iterate()
	if !it.Next(&key, &value) {
		t.Fatalf("flow map empty: %v", it.Err())
	}
	value[flowValueNode] = 3 - later.node
	if err := ip.flows.Put(key, value); err != nil {
		t.Fatal(err)
	}
	if got := seen(); got.node != later.node {
		t.Errorf("number recorded %d, want %d rewritten", got.node, later.node)
	}
}
