package datapath

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/nodeset"
)

// testKernelProgram loads (without attaching) the kernel path's program for
// the test VIP and MAC, set and protos; the kernel path counts what it takes.
func testKernelProgram(tb testing.TB, cfg hash.Config, set nodeset.NodeSet, protos kernelProtos) (*kernelPath, *ebpf.Program) {
	return testKernelProgramAt(tb, testVIP, testClusterMAC, cfg, set, protos)
}

// testKernelProgramAt is testKernelProgram for vip and mac.
func testKernelProgramAt(tb testing.TB, vip netip.Addr, mac net.HardwareAddr, cfg hash.Config, set nodeset.NodeSet, protos kernelProtos) (*kernelPath, *ebpf.Program) {
	tb.Helper()
	counter, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		tb.Fatalf("counter map: %v", err)
	}
	tb.Cleanup(func() { counter.Close() })
	k := &kernelPath{vip: vip, mac: mac, hash: cfg, counter: counter}
	prog, err := k.load(set, protos)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { prog.Close() })
	return k, prog
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
		taken := filterProgramVM(t, testVIP, testClusterMAC, cfg, pass, unix.PACKET_HOST)
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
			vm := untaken
			if got {
				vm = taken
			}
			passed, err := vm.Run(frame)
			if err != nil {
				t.Fatal(err)
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
// another node's that it leaves. The time is the program's alone; the
// kernel reports it per run.
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
		_, prog := testKernelProgramAt(b, fam.vip, fam.mac, fam.cfg, nodeset.NodeSet(0).Add(1), kernelTCPOnly)
		for _, bc := range []struct {
			name  string
			frame []byte
		}{{"taken", frames[1]}, {"left", frames[2]}} {
			b.Run(fam.name+"/"+bc.name, func(b *testing.B) {
				_, per, err := prog.Benchmark(bc.frame, b.N, b.ResetTimer)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(per.Nanoseconds()), "kernel-ns/frame")
			})
		}
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
		taken := filterProgramVM(t, testVIP6, testClusterMAC6, cfg, pass, unix.PACKET_HOST)
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
			vm := untaken
			if got {
				vm = taken
			}
			passed, err := vm.Run(frame)
			if err != nil {
				t.Fatal(err)
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
