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

// testKernelProgram loads (without attaching) the kernel path's program
// with one cluster, the test VIP and MAC, taking set and protos; the kernel
// path counts what it takes.
func testKernelProgram(tb testing.TB, cfg hash.Config, set nodeset.NodeSet, protos kernelProtos) (*kernelPath, *ebpf.Program) {
	return testKernelProgramAt(tb, testVIP, testClusterMAC, cfg, set, protos)
}

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

// addTestCluster adds a cluster to ip, taking set and protos.
func addTestCluster(tb testing.TB, ip *ifaceProgram, vip netip.Addr, mac net.HardwareAddr, cfg hash.Config, set nodeset.NodeSet, protos kernelProtos) *kernelPath {
	tb.Helper()
	k, err := ip.add(vip, mac, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := k.update(set, protos); err != nil {
		tb.Fatal(err)
	}
	return k
}

// testKernelProgramAt is testKernelProgram for vip and mac.
func testKernelProgramAt(tb testing.TB, vip netip.Addr, mac net.HardwareAddr, cfg hash.Config, set nodeset.NodeSet, protos kernelProtos) (*kernelPath, *ebpf.Program) {
	tb.Helper()
	ip := testIfaceProgram(tb)
	return addTestCluster(tb, ip, vip, mac, cfg, set, protos), ip.prog
}

// loadKernelPath returns a function that runs the kernel path's program for
// set and protos on a frame and tells whether it took the frame.
func loadKernelPath(t *testing.T, cfg hash.Config, set nodeset.NodeSet, protos kernelProtos) func([]byte) bool {
	t.Helper()
	return loadKernelPathAt(t, testVIP, testClusterMAC, cfg, set, protos)
}

// loadKernelPathAt is loadKernelPath for vip and mac.
func loadKernelPathAt(t *testing.T, vip netip.Addr, mac net.HardwareAddr, cfg hash.Config, set nodeset.NodeSet, protos kernelProtos) func([]byte) bool {
	t.Helper()
	k, prog := testKernelProgramAt(t, vip, mac, cfg, set, protos)
	return func(frame []byte) bool {
		before := k.taken()
		ret, err := prog.Run(&ebpf.RunOptions{Data: frame})
		if err != nil {
			t.Fatalf("run: %v", err)
		}
		if int32(ret) != tcxNext {
			t.Fatalf("program returned %d, want TCX_NEXT", int32(ret))
		}
		return k.taken() == before+1
	}
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
		take := loadKernelPath(t, cfg, kernel, protos)
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
			wantPassed := mac.String() == testClusterMAC.String() && !wantTaken &&
				(p.fragment() || proto == protoICMP || pass.Contains(node))
			got := take(frame)
			// A frame taken is the host's when the capture filter runs,
			// which then leaves it out (TestCaptureFilterLeavesTakenFrames).
			passed := 0
			if !got {
				var err error
				if passed, err = untaken.Run(frame); err != nil {
					t.Fatal(err)
				}
			}
			if got != wantTaken || (passed > 0) != wantPassed {
				t.Fatalf("cfg %+v pass %s kernel %s protos %d, proto %d from %s:%d (node %d, fragment %v, MAC %s): taken %v passed %v, want %v %v",
					cfg, pass, kernel, protos, proto, src, sport, node, p.fragment(), mac, got, passed > 0, wantTaken, wantPassed)
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
			if take(frame) {
				t.Fatalf("cfg %+v kernel %s: took %x", cfg, kernel, frame)
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
	for _, fam := range []struct {
		name string
		vip  netip.Addr
		mac  net.HardwareAddr
		cfg  hash.Config
		ip   func(port uint16) []byte
		pkt  func([]byte, *ipPacket) bool
		typ  uint16
	}{
		{"IPv4", testVIP, testClusterMAC, hash.Config{Mode: hash.SourceIPSourcePort, TotalNodes: 3, Seed: 7},
			func(port uint16) []byte {
				return mkIPv4(testIPHdr{src: "198.51.100.7", dst: testVIP.String(), proto: testTCP}, mkTCP(port, 80))
			}, parseIPv4, etherTypeIPv4},
		{"IPv6", testVIP6, testClusterMAC6, hash.Config{Mode: hash.SourceIPSourcePort, TotalNodes: 3, Seed: 7, Compat: hash.NFTables},
			func(port uint16) []byte {
				return mkIPv6("2001:db8:1::7", testVIP6.String(), nil, testTCP, mkTCP(port, 80))
			}, parseIPv6, etherTypeIPv6},
	} {
		o := Owner{Hash: fam.cfg}
		var p ipPacket
		frames := map[int][]byte{} // node -> a frame owned by it
		for port := uint16(1024); len(frames) < 2; port++ {
			ipb := fam.ip(port)
			if !fam.pkt(ipb, &p) {
				b.Fatal("test packet does not parse")
			}
			if n := o.Node(&p); n <= 2 && frames[n] == nil {
				frames[n] = mkEther(fam.mac, testClientMAC, fam.typ, ipb)
			}
		}
		for _, vips := range []int{1, 100, 1000} {
			ip := testIfaceProgram(b)
			addTestCluster(b, ip, fam.vip, fam.mac, fam.cfg, nodeset.NodeSet(0).Add(1), kernelTCPOnly)
			for i := 1; i < vips; i++ {
				other := fillerVIP(fam.vip, i)
				addTestCluster(b, ip, other, fam.mac, fam.cfg, nodeset.NodeSet(0).Add(1), kernelTCPOnly)
			}
			for _, bc := range []struct {
				name  string
				frame []byte
			}{{"taken", frames[1]}, {"left", frames[2]}} {
				b.Run(fmt.Sprintf("%s/%dVIPs/%s", fam.name, vips, bc.name), func(b *testing.B) {
					_, per, err := ip.prog.Benchmark(bc.frame, b.N, b.ResetTimer)
					if err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(float64(per.Nanoseconds()), "kernel-ns/frame")
				})
			}
		}
	}
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
		c.k = addTestCluster(t, ip, vip, mac, cfg, nodeset.NodeSet(rng.Uint64())&all, kernelProtos(rng.IntN(3)))
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
	run := func(f []byte) {
		ret, err := ip.prog.Run(&ebpf.RunOptions{Data: f})
		if err != nil || int32(ret) != tcxNext {
			t.Fatalf("run: %d, %v", int32(ret), err)
		}
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
			run(f)
			// AH is an extension header in IPv6: user space's.
			plain := !c.k.vip.Is6() || proto != testAH
			want := mac.String() == c.mac.String() && plain && c.k.protos.takes(proto) && c.k.set.Contains(node)
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
			if err := c.k.update(nodeset.NodeSet(rng.Uint64())&all, kernelProtos(rng.IntN(3))); err != nil {
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
		take := loadKernelPathAt(t, testVIP6, testClusterMAC6, cfg, kernel, protos)
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
			wantPassed := toCluster && !wantTaken && (!plain || pass.Contains(node))
			got := take(frame)
			// A frame taken is the host's when the capture filter runs,
			// which then leaves it out (TestCaptureFilterLeavesTakenFrames).
			passed := 0
			if !got {
				var err error
				if passed, err = untaken.Run(frame); err != nil {
					t.Fatal(err)
				}
			}
			if got != wantTaken || (passed > 0) != wantPassed {
				t.Fatalf("cfg %+v pass %s kernel %s protos %d, proto %d from %s (ext %v, node %d, MAC %s): taken %v passed %v, want %v %v",
					cfg, pass, kernel, protos, proto, sa, exts != nil, node, mac, got, passed > 0, wantTaken, wantPassed)
			}
		}
		// Never taken: another VIP, IPv4, a neighbour solicitation.
		sn, snMAC := SolicitedNode(testVIP6)
		for _, frame := range [][]byte{
			mkEther(testClusterMAC6, testClientMAC, etherTypeIPv6, mkIPv6("2001:db8:1::7", "2001:db8::11", nil, testTCP, mkTCP(1, 2))),
			mkEther(testClusterMAC6, testClientMAC, etherTypeIPv4, mkIPv4(testIPHdr{src: "198.51.100.7", dst: "192.0.2.10", proto: testTCP}, mkTCP(1, 2))),
			mkEther(snMAC, testClientMAC, etherTypeIPv6, mkIPv6("2001:db8:1::7", sn.String(), nil, protoICMPv6, mkNS("2001:db8:1::7", sn.String(), vip, nil))),
		} {
			if take(frame) {
				t.Fatalf("cfg %+v kernel %s: took % x", cfg, kernel, frame)
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
		k := addTestCluster(t, ip, fam.vip, fam.mac, fam.cfg, nodeset.NodeSet(0).Add(1), kernelAllRecorded)
		// Another cluster's flows are its own.
		other := addTestCluster(t, ip, fillerVIP(fam.vip, 9), fam.mac, fam.cfg, nodeset.NodeSet(0).Add(1).Add(2), kernelAllRecorded)
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
			if f.lastSeen < start-int64(time.Millisecond) || f.lastSeen > now+int64(time.Millisecond) {
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
