package datapath

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/nodeset"
)

// captureRunner runs the capture filter with one cluster in its maps on
// frames, in the kernel (BPF_PROG_TEST_RUN). The program is loaded as a tc
// program for the test: a socket filter's test run starts at the network
// header, where a packet socket's filter starts at the Ethernet header.
type captureRunner struct{ prog *ebpf.Program }

// Run returns how many bytes of frame the filter keeps: 0 drops it.
func (r captureRunner) Run(frame []byte) (int, error) {
	if len(frame) < ethHdrLen+ipv4MinHdrLen {
		// A test run refuses frames this short; the program's loads
		// would fail on them, which drops the frame (as for the short
		// frames a test run takes: ARP without its target, a segment
		// without its ports).
		return 0, nil
	}
	if len(frame) > 3000 {
		frame = frame[:3000] // what a test run takes; the program reads headers only
	}
	ret, err := r.prog.Run(&ebpf.RunOptions{Data: frame})
	return int(ret), err
}

// filterVM is the capture filter of a cluster of one node that serves it.
func filterVM(t *testing.T, vip netip.Addr, mac net.HardwareAddr) captureRunner {
	t.Helper()
	return ownershipVM(t, vip, mac, hash.Config{Mode: hash.SourceIP, TotalNodes: 1}, 1)
}

// ownershipVM is the capture filter of a cluster hashing cfg whose numbers
// in pass user space answers. The frames it runs on have not been taken by
// the kernel path (their type is not PACKET_HOST).
func ownershipVM(t testing.TB, vip netip.Addr, mac net.HardwareAddr, cfg hash.Config, pass nodeset.NodeSet) captureRunner {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loading eBPF needs root")
	}
	maps, err := newVIPMaps("test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { maps.close() })
	if err := maps.put(vip, newVIPEntry(vip, mac, cfg, pass)); err != nil {
		t.Fatal(err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, Instructions: program(capturePass, maps, nil, nil), License: "Dual MIT/GPL"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	return captureRunner{prog}
}

// TestCaptureFilterLeavesTakenFrames: a frame the kernel path took is the
// host's (PACKET_HOST) when the capture sockets see it, and the filter
// leaves it out, whatever its number. A test run makes a frame the host's
// when it is sent to the test device's MAC, all zeros: so a cluster of
// that MAC shows it.
func TestCaptureFilterLeavesTakenFrames(t *testing.T) {
	zeros := net.HardwareAddr{0, 0, 0, 0, 0, 0}
	cfg := hash.Config{Mode: hash.SourceIP, TotalNodes: 1}
	tcp := mkIPv4(testIPHdr{src: "198.51.100.7", dst: testVIP.String(), proto: testTCP}, mkTCP(1234, 80))
	frag := mkIPv4(testIPHdr{src: "198.51.100.7", dst: testVIP.String(), proto: testUDP, flagsOff: ipFlagMF}, mkUDP(1, 2))
	vm := ownershipVM(t, testVIP, zeros, cfg, 1)
	for _, ipb := range [][]byte{tcp, frag} {
		if n, _ := vm.Run(mkEther(zeros, testClientMAC, etherTypeIPv4, ipb)); n != 0 {
			t.Errorf("the host's frame passed (%d bytes)", n)
		}
	}
	// The same frames to a multicast cluster MAC pass.
	vm = ownershipVM(t, testVIP, testClusterMAC, cfg, 1)
	for _, ipb := range [][]byte{tcp, frag} {
		if n, _ := vm.Run(mkEther(testClusterMAC, testClientMAC, etherTypeIPv4, ipb)); n == 0 {
			t.Errorf("a multicast frame was dropped")
		}
	}
	v6 := mkIPv6("2001:db8:1::7", testVIP6.String(), nil, testTCP, mkTCP(1234, 80))
	vm = ownershipVM(t, testVIP6, zeros, hash.Config{Mode: hash.SourceIP, TotalNodes: 1, Compat: hash.NFTables}, 1)
	if n, _ := vm.Run(mkEther(zeros, testClientMAC, etherTypeIPv6, v6)); n != 0 {
		t.Errorf("the host's IPv6 frame passed (%d bytes)", n)
	}
}

func TestCaptureFilter(t *testing.T) {
	const other = "192.0.2.11"
	vip := testVIP.String()
	unicastMAC := testNICMAC
	otherClusterMAC := net.HardwareAddr{0x01, 0x00, 0x5e, 0x00, 0x02, 0x0b} // differs in the low 2 bytes only
	otherPrefixMAC := net.HardwareAddr{0x01, 0x00, 0x5f, 0x00, 0x02, 0x0a}  // differs in the high 4 bytes only

	toVIP := mkIPv4(testIPHdr{src: "198.51.100.7", dst: vip, proto: testTCP}, mkTCP(40000, 80))
	toOther := mkIPv4(testIPHdr{src: "198.51.100.7", dst: other, proto: testTCP}, mkTCP(40000, 80))
	arpForVIP := mkARP(arpOpRequest, testClientMAC, "198.51.100.7", nil, vip)
	ipv4Frame := mkEther(testClusterMAC, testClientMAC, etherTypeIPv4, toVIP)
	arpReqFrame := mkEther(broadcastMAC, testClientMAC, etherTypeARP, arpForVIP)

	tests := []struct {
		name   string
		frame  []byte
		accept bool
	}{
		{
			name:   "ARP request for VIP",
			frame:  arpReqFrame,
			accept: true,
		},
		{
			name:   "ARP reply for VIP",
			frame:  mkEther(testClusterMAC, testClientMAC, etherTypeARP, mkARP(arpOpReply, testClientMAC, "198.51.100.7", testClusterMAC, vip)),
			accept: true,
		},
		{
			name:  "ARP request for another IP",
			frame: mkEther(broadcastMAC, testClientMAC, etherTypeARP, mkARP(arpOpRequest, testClientMAC, "198.51.100.7", nil, other)),
		},
		{
			name:  "ARP request from VIP for another IP",
			frame: mkEther(broadcastMAC, testClientMAC, etherTypeARP, mkARP(arpOpRequest, testClientMAC, vip, nil, other)),
		},
		{
			name:   "IPv4 to VIP, cluster MAC",
			frame:  ipv4Frame,
			accept: true,
		},
		{
			name:   "IPv4 to VIP, cluster MAC, 64 KB super-frame",
			frame:  mkEther(testClusterMAC, testClientMAC, etherTypeIPv4, mkIPv4(testIPHdr{src: "198.51.100.7", dst: vip, proto: testTCP}, make([]byte, 65515))),
			accept: true,
		},
		{
			name:  "IPv4 to VIP, unicast MAC",
			frame: mkEther(unicastMAC, testClientMAC, etherTypeIPv4, toVIP),
		},
		{
			name:  "IPv4 to VIP, broadcast MAC",
			frame: mkEther(broadcastMAC, testClientMAC, etherTypeIPv4, toVIP),
		},
		{
			name:  "IPv4 to VIP, another cluster's MAC",
			frame: mkEther(otherClusterMAC, testClientMAC, etherTypeIPv4, toVIP),
		},
		{
			name:  "IPv4 to VIP, MAC differing in high bytes",
			frame: mkEther(otherPrefixMAC, testClientMAC, etherTypeIPv4, toVIP),
		},
		{
			name:  "IPv4 to another IP, cluster MAC",
			frame: mkEther(testClusterMAC, testClientMAC, etherTypeIPv4, toOther),
		},
		{
			name:  "IPv4 from VIP, cluster MAC",
			frame: mkEther(testClusterMAC, testClientMAC, etherTypeIPv4, mkIPv4(testIPHdr{src: vip, dst: other, proto: testTCP}, mkTCP(80, 40000))),
		},
		{
			name:  "IPv6, cluster MAC",
			frame: mkEther(testClusterMAC, testClientMAC, 0x86dd, make([]byte, 60)),
		},
		{
			// The bytes after the VLAN tag are an IPv4 packet to the VIP,
			// but at the wrong offsets.
			name:  "VLAN-tagged IPv4 to VIP",
			frame: mkEther(testClusterMAC, testClientMAC, 0x8100, append([]byte{0x00, 0x01, 0x08, 0x00}, toVIP...)),
		},
		{
			// IPv4 bytes under another EtherType must not be read as IPv4.
			name:  "IPv4 bytes under EtherType 0x88b5",
			frame: mkEther(testClusterMAC, testClientMAC, 0x88b5, toVIP),
		},
		{
			name: "empty",
		},
		{
			name:  "truncated before EtherType",
			frame: ipv4Frame[:13],
		},
		{
			name:  "IPv4 truncated inside destination address",
			frame: ipv4Frame[:ethHdrLen+19],
		},
		{
			name:  "IPv4 truncated after Ethernet header",
			frame: ipv4Frame[:ethHdrLen],
		},
		{
			name:  "ARP truncated inside target address",
			frame: arpReqFrame[:ethHdrLen+27],
		},
	}

	vm := filterVM(t, testVIP, testClusterMAC)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := vm.Run(tt.frame)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			switch {
			case !tt.accept && n != 0:
				t.Fatalf("filter kept %d bytes of a frame it must drop", n)
			case tt.accept && n < len(tt.frame):
				// The kernel caps the return value to the frame length;
				// anything less would cut the frame.
				t.Fatalf("filter kept %d bytes of a %d-byte frame, want all of it", n, len(tt.frame))
			}
		})
	}
}

func TestCaptureFilterOtherClusters(t *testing.T) {
	// The VIP and MAC are compared as 32-bit and 16-bit words; values with
	// the high bits set catch a sign or byte-order slip.
	tests := []struct {
		vip string
		mac net.HardwareAddr
	}{
		{"10.0.0.1", net.HardwareAddr{0x01, 0x00, 0x5e, 0x00, 0x00, 0x01}},
		{"203.0.113.254", net.HardwareAddr{0x01, 0x00, 0x5e, 0x7f, 0xff, 0xff}},
		{"223.255.255.254", net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xfe}},
	}
	for _, tt := range tests {
		t.Run(tt.vip, func(t *testing.T) {
			vm := filterVM(t, netip.MustParseAddr(tt.vip), tt.mac)
			pkt := mkIPv4(testIPHdr{src: "198.51.100.7", dst: tt.vip, proto: testUDP}, mkUDP(5000, 53))
			if n, _ := vm.Run(mkEther(tt.mac, testClientMAC, etherTypeIPv4, pkt)); n == 0 {
				t.Error("IPv4 to VIP and cluster MAC dropped")
			}
			if n, _ := vm.Run(mkEther(testClusterMAC, testClientMAC, etherTypeIPv4, pkt)); n != 0 {
				t.Error("IPv4 to VIP and the default test cluster MAC kept")
			}
			arp := mkARP(arpOpRequest, testClientMAC, "198.51.100.7", nil, tt.vip)
			if n, _ := vm.Run(mkEther(broadcastMAC, testClientMAC, etherTypeARP, arp)); n == 0 {
				t.Error("ARP request for VIP dropped")
			}
		})
	}
}

// The filter's in-kernel ownership decision agrees with Owner.Node bit for
// bit: for random packets of every protocol kind, in every mode, with random
// seeds, totals and sets of numbers, a frame passes exactly when its number
// is in the set, or when it is a fragment or ICMP (user space decides those).
func TestCaptureFilterOwnership(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	modes := []hash.Mode{hash.SourceIP, hash.SourceIPSourcePort, hash.SourceIPSourcePortDestPort}
	vip := testVIP.String()
	for round := 0; round < 60; round++ {
		cfg := hash.Config{Mode: modes[round%3], TotalNodes: uint32(1 + rng.IntN(64)), Seed: rng.Uint32(), Compat: hash.Compat(round / 3 % 2)}
		if round%7 == 0 {
			cfg.Seed = 0
		}
		pass := nodeset.NodeSet(rng.Uint64()) & (nodeset.NodeSet(1)<<cfg.TotalNodes - 1)
		vm := ownershipVM(t, testVIP, testClusterMAC, cfg, pass)
		o := Owner{Hash: cfg}
		for i := 0; i < 300; i++ {
			src := netip.AddrFrom4([4]byte{byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())}).String()
			sport, dport := uint16(rng.Uint32()), uint16(rng.Uint32())
			proto, l4 := testL4(i%8, sport, dport, rng.Uint32())
			h := testIPHdr{src: src, dst: vip, proto: proto}
			if i%5 == 0 {
				h.options = []byte{1, 1, 1, 0} // the ports move with the header length
			}
			ipb := mkIPv4(h, l4)
			frame := mkEther(testClusterMAC, testClientMAC, etherTypeIPv4, ipb)
			var p ipPacket
			if !parseIPv4(ipb, &p) {
				t.Fatal("test packet does not parse")
			}
			want := pass.Contains(o.Node(&p))
			got, err := vm.Run(frame)
			if err != nil {
				t.Fatal(err)
			}
			if (got > 0) != want {
				t.Fatalf("cfg %+v pass %s, proto %d from %s:%d: filter %d, Node %d", cfg, pass, proto, src, sport, got, o.Node(&p))
			}
		}
		// Fragments and ICMP always reach user space.
		for _, ipb := range [][]byte{
			mkIPv4(testIPHdr{src: "198.51.100.7", dst: vip, proto: testUDP, flagsOff: ipFlagMF}, mkUDP(1, 2)),
			mkIPv4(testIPHdr{src: "198.51.100.7", dst: vip, proto: testUDP, flagsOff: 100}, []byte{1, 2, 3, 4}),
			mkIPv4(testIPHdr{src: "198.51.100.7", dst: vip, proto: protoICMP}, mkICMP(8, 0, 0, nil)),
		} {
			if got, _ := vm.Run(mkEther(testClusterMAC, testClientMAC, etherTypeIPv4, ipb)); got == 0 {
				t.Fatalf("cfg %+v pass %s: fragment or ICMP filtered out", cfg, pass)
			}
		}
	}
}

// An empty set passes no IPv4 but still ARP; a full set passes everything.
func TestCaptureFilterEmptyAndFull(t *testing.T) {
	cfg := hash.Config{Mode: hash.SourceIPSourcePort, TotalNodes: 64}
	tcp := mkEther(testClusterMAC, testClientMAC, etherTypeIPv4, mkIPv4(testIPHdr{src: "198.51.100.7", dst: testVIP.String(), proto: testTCP}, mkTCP(1234, 80)))
	arp := mkEther(broadcastMAC, testClientMAC, etherTypeARP, mkARP(arpOpRequest, testClientMAC, "198.51.100.7", nil, testVIP.String()))
	none := ownershipVM(t, testVIP, testClusterMAC, cfg, 0)
	if got, _ := none.Run(tcp); got != 0 {
		t.Errorf("empty set passed TCP")
	}
	if got, _ := none.Run(arp); got == 0 {
		t.Errorf("empty set dropped ARP")
	}
	all := ownershipVM(t, testVIP, testClusterMAC, cfg, nodeset.NodeSet(^uint64(0)))
	if got, _ := all.Run(tcp); got == 0 {
		t.Errorf("full set dropped TCP")
	}
}
