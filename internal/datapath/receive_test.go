package datapath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/clusterip/clusterip/hash"
	"github.com/mdlayher/ethernet"
)

// Datapath.handle cannot run without its TAP, so these tests drive the
// decision it makes for every IPv4 frame: parse, ask whether the fragment
// table decides, and otherwise hash.

// testDecide mirrors handleIPv4 up to the fragment table. It returns the owner,
// or 0 when the fragment table must name it, and false for a frame that is
// dropped as malformed.
func testDecide(o *Owner, ip []byte) (int, bool) {
	var p ipPacket
	if !parseIPv4(ip, &p) {
		return 0, false
	}
	if o.needsFragmentTable(&p) && p.fragOff != 0 {
		return 0, true
	}
	return o.Node(&p), true
}

// synFrame is a TCP SYN to the VIP as the capture socket hands it over:
// virtio-net header, Ethernet header, IPv4, TCP.
func synFrame() []byte {
	pkt := mkIPv4(testIPHdr{src: "198.51.100.7", dst: testVIP.String(), proto: testTCP, id: 1, flagsOff: 0x4000}, mkTCP(40000, 443))
	return append(make([]byte, vnetHdrLen), mkEther(testClusterMAC, testClientMAC, etherTypeIPv4, pkt)...)
}

func FuzzDecide(f *testing.F) {
	vip := testVIP.String()
	const client, router = "198.51.100.7", "203.0.113.1"
	quote := mkIPv4(testIPHdr{src: vip, dst: client, proto: testTCP}, mkTCP(443, 40000)[:8])
	seeds := [][]byte{
		synFrame()[vnetHdrLen+ethHdrLen:],
		mkIPv4(testIPHdr{src: client, dst: vip, proto: testUDP, flagsOff: ipFlagMF}, mkUDP(5353, 53)),
		mkIPv4(testIPHdr{src: client, dst: vip, proto: testUDP, flagsOff: 185}, []byte("later")),
		mkIPv4(testIPHdr{src: client, dst: vip, proto: testAH, options: []byte{1, 1, 1, 0}}, mkAH(0x01020304)),
		mkIPv4(testIPHdr{src: router, dst: vip, proto: protoICMP}, mkICMP(3, 4, 1400, quote)),
		mkIPv4(testIPHdr{src: router, dst: vip, proto: protoICMP}, mkICMP(11, 0, 0, quote[:21])),
		mkIPv4(testIPHdr{src: client, dst: vip, proto: protoICMP}, mkICMP(8, 0, 0, nil)),
		{0x45},
		nil,
	}
	for i, s := range seeds {
		f.Add(s, uint8(i), uint8(i*7), uint32(i))
	}

	f.Fuzz(func(t *testing.T, b []byte, mode, total uint8, seed uint32) {
		c := hash.Config{Mode: hash.Mode(mode%3 + 1), TotalNodes: uint32(total%hash.MaxNodes) + 1, Seed: seed}
		if err := c.Validate(); err != nil {
			t.Fatalf("fuzz config: %v", err)
		}
		o := Owner{Hash: c}

		var p ipPacket
		if !parseIPv4(b, &p) {
			return
		}
		ihl := int(b[0]&0x0f) * 4
		tot := int(binary.BigEndian.Uint16(b[2:4]))
		if b[0]>>4 != 4 || ihl < 20 || tot < ihl || tot > len(b) || len(p.l4) != tot-ihl {
			t.Fatalf("parseIPv4 accepted % x: IHL %d, total %d, %d bytes of L4", b, ihl, tot, len(p.l4))
		}
		if len(p.l4) > 0 && &p.l4[0] != &b[ihl] {
			t.Fatal("l4 does not alias the packet after the header")
		}
		if p.fragment() && c.Mode.UsesPorts() && !o.needsFragmentTable(&p) {
			t.Fatal("a fragment in a port mode bypasses the fragment table")
		}
		// Node must be safe on any parsed packet, even a later fragment
		// the datapath would send to the table.
		n := o.Node(&p)
		if n < 1 || n > int(c.TotalNodes) {
			t.Fatalf("Node = %d, outside 1..%d", n, c.TotalNodes)
		}
		if again := o.Node(&p); again != n {
			t.Fatalf("Node = %d, then %d for the same packet", n, again)
		}
		if d, ok := testDecide(&o, b); !ok || (d != 0 && d != n) {
			t.Fatalf("decide = %d, %v; Node = %d", d, ok, n)
		}
	})
}

func BenchmarkDecide(b *testing.B) {
	frame := synFrame()
	for _, m := range testModes {
		b.Run(m.String(), func(b *testing.B) {
			o := Owner{Hash: hash.Config{Mode: m, TotalNodes: 7, Seed: 0xdeadbeef}}
			ip := frame[vnetHdrLen+ethHdrLen:]
			b.ReportAllocs()
			var sink int
			for b.Loop() {
				n, _ := testDecide(&o, ip)
				sink += n
			}
			if sink == 0 {
				b.Fatal("no packet was owned")
			}
		})
	}
}

func TestDecideDoesNotAllocate(t *testing.T) {
	vip := testVIP.String()
	const client, router = "198.51.100.7", "203.0.113.1"
	packets := []struct {
		name string
		b    []byte
	}{
		{"TCP SYN", synFrame()[vnetHdrLen+ethHdrLen:]},
		{"ICMP error", mkIPv4(testIPHdr{src: router, dst: vip, proto: protoICMP}, mkICMP(3, 4, 1400, mkIPv4(testIPHdr{src: vip, dst: client, proto: testTCP}, mkTCP(443, 40000)[:8])))},
		{"first fragment", mkIPv4(testIPHdr{src: client, dst: vip, proto: testUDP, flagsOff: ipFlagMF}, mkUDP(5353, 53))},
		{"later fragment", mkIPv4(testIPHdr{src: client, dst: vip, proto: testUDP, flagsOff: 185}, mkUDP(5353, 53))},
		{"malformed", []byte{0x45, 0, 0, 1}},
	}
	for _, m := range testModes {
		o := Owner{Hash: hash.Config{Mode: m, TotalNodes: 7, Seed: 1}}
		for _, pkt := range packets {
			t.Run(fmt.Sprintf("%s/%s", m, pkt.name), func(t *testing.T) {
				var sink int
				allocs := testing.AllocsPerRun(1000, func() {
					n, _ := testDecide(&o, pkt.b)
					sink += n
				})
				if allocs != 0 {
					t.Fatalf("decision allocates %v times per packet", allocs)
				}
			})
		}
	}
}

func TestARPRequestForVIP(t *testing.T) {
	vip := testVIP.String()
	const client = "198.51.100.7"
	request := mkARP(arpOpRequest, testClientMAC, client, nil, vip)
	edit := func(f func(a []byte)) []byte {
		a := bytes.Clone(request)
		f(a)
		return a
	}

	tests := []struct {
		name  string
		frame []byte
		ok    bool
		spa   string
	}{
		{
			name:  "request for VIP",
			frame: mkEther(broadcastMAC, testClientMAC, etherTypeARP, request),
			ok:    true,
			spa:   client,
		},
		{
			name:  "request for VIP, padded to 60 bytes",
			frame: mkEther(broadcastMAC, testClientMAC, etherTypeARP, append(bytes.Clone(request), make([]byte, 18)...)),
			ok:    true,
			spa:   client,
		},
		{
			name:  "unicast request for VIP (cache refresh)",
			frame: mkEther(testClusterMAC, testClientMAC, etherTypeARP, request),
			ok:    true,
			spa:   client,
		},
		{
			// RFC 5227 probes have a zero sender address; the kernel
			// answers them too.
			name:  "probe for VIP",
			frame: mkEther(broadcastMAC, testClientMAC, etherTypeARP, mkARP(arpOpRequest, testClientMAC, "0.0.0.0", nil, vip)),
			ok:    true,
			spa:   "0.0.0.0",
		},
		{
			name:  "announcement from VIP itself",
			frame: mkEther(broadcastMAC, testNICMAC, etherTypeARP, mkARP(arpOpRequest, testClusterMAC, vip, nil, vip)),
		},
		{
			name:  "announcement from VIP with a unicast sender",
			frame: mkEther(broadcastMAC, testNICMAC, etherTypeARP, mkARP(arpOpRequest, testNICMAC, vip, nil, vip)),
		},
		{
			name:  "multicast sender",
			frame: mkEther(broadcastMAC, testClientMAC, etherTypeARP, mkARP(arpOpRequest, testClusterMAC, client, nil, vip)),
		},
		{
			name:  "broadcast sender",
			frame: mkEther(broadcastMAC, testClientMAC, etherTypeARP, mkARP(arpOpRequest, broadcastMAC, client, nil, vip)),
		},
		{
			name:  "reply",
			frame: mkEther(testClusterMAC, testClientMAC, etherTypeARP, mkARP(arpOpReply, testClientMAC, client, testClusterMAC, vip)),
		},
		{
			name:  "RARP request op",
			frame: mkEther(broadcastMAC, testClientMAC, etherTypeARP, edit(func(a []byte) { a[7] = 3 })),
		},
		{
			name:  "request for another IP",
			frame: mkEther(broadcastMAC, testClientMAC, etherTypeARP, mkARP(arpOpRequest, testClientMAC, client, nil, "192.0.2.11")),
		},
		{
			name:  "hardware type IEEE 802",
			frame: mkEther(broadcastMAC, testClientMAC, etherTypeARP, edit(func(a []byte) { a[1] = 6 })),
		},
		{
			name:  "protocol type IPv6",
			frame: mkEther(broadcastMAC, testClientMAC, etherTypeARP, edit(func(a []byte) { a[2], a[3] = 0x86, 0xdd })),
		},
		{
			name:  "hardware length 8",
			frame: mkEther(broadcastMAC, testClientMAC, etherTypeARP, edit(func(a []byte) { a[4] = 8 })),
		},
		{
			name:  "protocol length 16",
			frame: mkEther(broadcastMAC, testClientMAC, etherTypeARP, edit(func(a []byte) { a[5] = 16 })),
		},
		{
			name:  "short frame",
			frame: mkEther(broadcastMAC, testClientMAC, etherTypeARP, request[:27]),
		},
		{
			name: "empty",
		},
	}
	v4 := testVIP.As4()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sha, spa, ok := arpRequestForVIP(tt.frame, v4)
			if ok != tt.ok {
				t.Fatalf("answered = %v, want %v", ok, tt.ok)
			}
			if !ok {
				return
			}
			if !bytes.Equal(sha, testClientMAC) {
				t.Errorf("sha = %s, want %s", sha, testClientMAC)
			}
			if want := netip.MustParseAddr(tt.spa).As4(); spa != want {
				t.Errorf("spa = %v, want %v", spa, want)
			}
		})
	}
}

func FuzzARPRequestForVIP(f *testing.F) {
	vip := testVIP.String()
	f.Add(mkEther(broadcastMAC, testClientMAC, etherTypeARP, mkARP(arpOpRequest, testClientMAC, "198.51.100.7", nil, vip)))
	f.Add(mkEther(broadcastMAC, testClientMAC, etherTypeARP, mkARP(arpOpRequest, testClusterMAC, vip, nil, vip)))
	f.Add(mkEther(broadcastMAC, testClientMAC, etherTypeARP, mkARP(arpOpReply, testClientMAC, "198.51.100.7", nil, vip)))
	f.Add([]byte{})
	v4 := testVIP.As4()

	f.Fuzz(func(t *testing.T, frame []byte) {
		sha, spa, ok := arpRequestForVIP(frame, v4)

		// An independent reading of RFC 826 and the function's contract.
		wellFormed := len(frame) >= 42 &&
			bytes.Equal(frame[14:22], []byte{0, 1, 0x08, 0x00, 6, 4, 0, 1}) &&
			bytes.Equal(frame[38:42], v4[:]) &&
			!bytes.Equal(frame[28:32], v4[:]) &&
			frame[22]&1 == 0
		if ok != wellFormed {
			t.Fatalf("answered = %v for % x, want %v", ok, frame, wellFormed)
		}
		if !ok {
			return
		}
		if !bytes.Equal(sha, frame[22:28]) || !bytes.Equal(spa[:], frame[28:32]) {
			t.Fatalf("sha %s, spa %v do not match the frame % x", sha, spa, frame)
		}
	})
}

func TestARPFrame(t *testing.T) {
	v4 := testVIP.As4()
	clientIP := netip.MustParseAddr("198.51.100.7").As4()

	tests := []struct {
		name     string
		ethDst   net.HardwareAddr
		op       uint16
		tha      net.HardwareAddr
		tpa      [4]byte
		answered bool // whether another node's arpRequestForVIP answers it
	}{
		// What handleARP sends.
		{"reply", testClientMAC, arpOpReply, testClientMAC, clientIP, false},
		// What Announce sends: it claims the VIP as sender, so other
		// nodes must not answer it.
		{"announcement", broadcastMAC, arpOpRequest, make(net.HardwareAddr, 6), v4, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := arpFrame(tt.ethDst, testNICMAC, tt.op, testClusterMAC, v4, tt.tha, tt.tpa)
			if err != nil {
				t.Fatalf("arpFrame: %v", err)
			}
			var f ethernet.Frame
			if err := f.UnmarshalBinary(b); err != nil {
				t.Fatalf("UnmarshalBinary: %v", err)
			}
			if !bytes.Equal(f.Destination, tt.ethDst) {
				t.Errorf("Ethernet destination = %s, want %s", f.Destination, tt.ethDst)
			}
			// Switches drop multicast sources: the NIC's MAC, never the
			// cluster MAC, goes here.
			if !bytes.Equal(f.Source, testNICMAC) {
				t.Errorf("Ethernet source = %s, want the NIC's %s", f.Source, testNICMAC)
			}
			if f.EtherType != ethernet.EtherTypeARP {
				t.Errorf("EtherType = %#04x, want ARP", uint16(f.EtherType))
			}
			a := f.Payload
			if len(a) < arpLen {
				t.Fatalf("ARP payload is %d bytes, want at least %d", len(a), arpLen)
			}
			var want []byte
			want = binary.BigEndian.AppendUint16(want, 1)
			want = binary.BigEndian.AppendUint16(want, 0x0800)
			want = append(want, 6, 4)
			want = binary.BigEndian.AppendUint16(want, tt.op)
			want = append(want, testClusterMAC...)
			want = append(want, v4[:]...)
			want = append(want, tt.tha...)
			want = append(want, tt.tpa[:]...)
			if !bytes.Equal(a[:arpLen], want) {
				t.Errorf("ARP packet:\n got % x\nwant % x", a[:arpLen], want)
			}
			if !bytes.Equal(a[arpLen:], make([]byte, len(a)-arpLen)) {
				t.Errorf("padding is not zero: % x", a[arpLen:])
			}
			if _, _, ok := arpRequestForVIP(b, v4); ok != tt.answered {
				t.Errorf("arpRequestForVIP answers it: %v, want %v", ok, tt.answered)
			}
		})
	}
}

func TestARPFrameRoundTrip(t *testing.T) {
	// A client's request built by arpFrame is answered, naming the client.
	v4 := testVIP.As4()
	clientIP := netip.MustParseAddr("198.51.100.7").As4()
	req, err := arpFrame(broadcastMAC, testClientMAC, arpOpRequest, testClientMAC, clientIP, make(net.HardwareAddr, 6), v4)
	if err != nil {
		t.Fatalf("arpFrame: %v", err)
	}
	sha, spa, ok := arpRequestForVIP(req, v4)
	if !ok || !bytes.Equal(sha, testClientMAC) || spa != clientIP {
		t.Fatalf("arpRequestForVIP = %s, %v, %v; want %s, %v, true", sha, spa, ok, testClientMAC, clientIP)
	}
}

// acceptBench is a datapath without sockets: enough for the ownership
// decision, which is all the per-packet path does besides the two syscalls.
func acceptBench(m hash.Mode, track bool) *Datapath {
	d := &Datapath{owner: Owner{Hash: hash.Config{Mode: m, TotalNodes: 3, Seed: 7}}, flows: newFlowTable(DefaultMaxFlows)}
	d.policy.Store(&Policy{Serve: 0b011, Guarded: 0b100, Track: track})
	return d
}

// acceptPackets are data segments of 1024 established connections, parsed.
func acceptPackets(t testing.TB) []ipPacket {
	var pkts []ipPacket
	for i := 0; i < 1024; i++ {
		tcp := mkTCP(uint16(30000+i), 443)
		tcp[13] = tcpFlagACK
		var p ipPacket
		if !parseIPv4(mkIPv4(testIPHdr{src: "198.51.100.7", dst: testVIP.String(), proto: testTCP}, tcp), &p) {
			t.Fatal("test packet does not parse")
		}
		pkts = append(pkts, p)
	}
	return pkts
}

// BenchmarkAccept is the whole per-packet decision: hash, and with flow
// tracking (automatic failover) the flow-table lookup under its lock.
func BenchmarkAccept(b *testing.B) {
	pkts := acceptPackets(b)
	for _, m := range testModes {
		for _, track := range []bool{false, true} {
			b.Run(fmt.Sprintf("%s/track=%v", m, track), func(b *testing.B) {
				d := acceptBench(m, track)
				for i := range pkts {
					d.accept(&pkts[i], nil, 1) // warm the flow table
				}
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					d.accept(&pkts[i&1023], nil, 1)
					i++
				}
			})
		}
	}
}

func TestAcceptDoesNotAllocate(t *testing.T) {
	pkts := acceptPackets(t)
	for _, track := range []bool{false, true} {
		d := acceptBench(hash.SourceIPSourcePort, track)
		for i := range pkts {
			d.accept(&pkts[i], nil, 1)
		}
		i := 0
		if allocs := testing.AllocsPerRun(2000, func() { d.accept(&pkts[i&1023], nil, 1); i++ }); allocs != 0 {
			t.Errorf("track=%v: accept allocates %v times per packet", track, allocs)
		}
	}
}

// fuzzWorker is a worker of a tracked datapath for vip whose TAP is
// /dev/null and whose frames sent go nowhere. An IPv6 VIP hashes the
// nftables way, the only way IPv6 has.
func fuzzWorker(t testing.TB, vip netip.Addr, m hash.Mode, pol Policy) *worker {
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { null.Close() })
	cfg := hash.Config{Mode: m, TotalNodes: 3, Seed: 7}
	if vip.Is6() {
		cfg.Compat = hash.NFTables
	}
	d := &Datapath{
		cfg:   Config{VIP: vip, ClusterMAC: testClusterMAC, Hash: cfg},
		owner: Owner{Hash: cfg},
		flows: newFlowTable(flowShards * 8),
		tap:   &tapDevice{mac: testNICMAC, queues: []int{int(null.Fd())}},
		v6:    vip.Is6(),
		vip:   vip.As16(),
	}
	if !d.v6 {
		d.vip4 = vip.As4()
	}
	d.policy.Store(&pol)
	// Small tables: the fuzzer makes one per input.
	d.lanes = []lane{{size: 64}}
	g := &captureGroup{ifi: &net.Interface{Name: "eth0", HardwareAddr: testNICMAC}}
	g.clusters.Store(&map[addr]*Datapath{d.vip: d})
	return &worker{g: g, send: func([]byte, net.HardwareAddr) error { return nil }}
}

// cluster is the one cluster of a test worker's group.
func (w *worker) cluster() *Datapath {
	for _, d := range *w.g.clusters.Load() {
		return d
	}
	return nil
}

// FuzzWorkerFrames runs sequences of frames through a worker's whole
// per-frame path, with flow tracking, holding and the fragment table: it
// must never panic, and every table must stay within its bounds.
func FuzzWorkerFrames(f *testing.F) {
	vip := testVIP.String()
	const client = "198.51.100.7"
	eth := func(ip []byte) []byte {
		return append(make([]byte, vnetHdrLen), mkEther(testClusterMAC, testClientMAC, etherTypeIPv4, ip)...)
	}
	var seq []byte
	for _, fr := range [][]byte{
		synFrame(),
		eth(mkIPv4(testIPHdr{src: client, dst: vip, proto: testUDP, id: 9, flagsOff: ipFlagMF}, mkUDP(5353, 53))),
		eth(mkIPv4(testIPHdr{src: client, dst: vip, proto: testUDP, id: 9, flagsOff: 1}, []byte("later"))),
		eth(mkIPv4(testIPHdr{src: client, dst: vip, proto: testUDP, id: 10, flagsOff: 2}, []byte("orphan"))),
		eth(mkIPv4(testIPHdr{src: client, dst: vip, proto: testUDP}, mkUDP(5000, 53))),
	} {
		seq = append(seq, byte(len(fr)>>8), byte(len(fr)))
		seq = append(seq, fr...)
	}
	f.Add(seq, uint8(0), uint8(1))
	f.Add(seq, uint8(2), uint8(3))
	// The same for an IPv6 VIP (mode bit 2): fragments behind options, an
	// ICMPv6 error, a neighbour solicitation.
	const client6, vip6 = "2001:db8:1::7", "2001:db8::10"
	eth6 := func(ip []byte) []byte {
		return append(make([]byte, vnetHdrLen), mkEther(testClusterMAC6, testClientMAC, etherTypeIPv6, ip)...)
	}
	sn, _ := SolicitedNode(testVIP6)
	seq = nil
	for _, fr := range [][]byte{
		eth6(mkIPv6(client6, vip6, nil, testTCP, mkTCP(40000, 443))),
		eth6(mkIPv6(client6, vip6, []testExt{extOpts(0, 0), extFrag(0, true, 9)}, testUDP, mkUDP(5353, 53))),
		eth6(mkIPv6(client6, vip6, []testExt{extFrag(1, false, 9)}, testUDP, []byte("later"))),
		eth6(mkIPv6("2001:db8:ff::1", vip6, nil, protoICMPv6, mkICMPv6("2001:db8:ff::1", vip6, 2, 0, 1280, mkIPv6(vip6, client6, nil, testTCP, mkTCP(443, 40000))))),
		append(make([]byte, vnetHdrLen), nsFrame(client6, sn.String(), vip6, nil, nil)...),
	} {
		seq = append(seq, byte(len(fr)>>8), byte(len(fr)))
		seq = append(seq, fr...)
	}
	f.Add(seq, uint8(4), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, mode, policy uint8) {
		pols := []Policy{
			{Serve: 0b001, Track: true},
			{Serve: 0b011, Guarded: 0b010, Track: true},
			{Observe: 0b101, Hold: 0b100, Guarded: 0b101, Track: true},
			{Serve: 0b010, Keep: 0b001, Leaving: 0b010, Track: true},
		}
		vip := testVIP
		if mode&4 != 0 {
			vip = testVIP6
		}
		w := fuzzWorker(t, vip, hash.Mode(mode%3+1), pols[int(policy)%len(pols)])
		now := int64(1)
		for len(data) >= 2 {
			n := int(data[0])<<8 | int(data[1])
			data = data[2:]
			n = min(n, len(data))
			frame := append([]byte(nil), data[:n]...)
			data = data[n:]
			w.handle(frame, now)
			now += int64(time.Millisecond)
		}
		if held := w.cluster().flows.heldPackets.Load(); held < 0 || held > maxHeldPackets {
			t.Fatalf("%d packets held", held)
		}
		ft := w.cluster().lanes[0].table()
		if ft.used > len(ft.slots) || ft.heldBytes > fragMaxHeldBytes || ft.heldBytes < 0 || len(ft.index) != ft.used {
			t.Fatalf("fragment table: %d used, %d indexed, %d bytes held", ft.used, len(ft.index), ft.heldBytes)
		}
		// Ending a handoff answers or drops whatever was held for it.
		w.cluster().TakeOver(1, []FlowID{})
		w.cluster().TakeOver(3, nil)
		if held := w.cluster().flows.heldPackets.Load(); held != 0 {
			t.Fatalf("%d packets still held after every handoff ended", held)
		}
	})
}
