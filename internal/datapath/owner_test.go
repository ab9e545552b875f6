package datapath

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"

	"github.com/clusterip/clusterip/hash"
)

var testModes = []hash.Mode{hash.SourceIP, hash.SourceIPSourcePort, hash.SourceIPSourcePortDestPort}

// wantNode is the expected owner, computed from port numbers as written in
// configuration: hash.Config.NodeForPorts does the wire-to-raw swap itself,
// so the expectation does not go through hash.RawPorts as Owner.Node does.
func wantNode(t *testing.T, c hash.Config, src string, sport, dport uint16) int {
	t.Helper()
	n, err := c.NodeForPorts(netip.MustParseAddr(src), sport, dport)
	if err != nil {
		t.Fatalf("NodeForPorts: %v", err)
	}
	return n
}

// mustParse parses an IPv4 packet built by the test.
func mustParse(t *testing.T, b []byte) *ipPacket {
	t.Helper()
	var p ipPacket
	if !parseIPv4(b, &p) {
		t.Fatalf("parseIPv4 rejected a well-formed packet % x", b)
	}
	return &p
}

func TestOwnerNode(t *testing.T) {
	const client = "198.51.100.7"
	vip := testVIP.String()
	to := func(proto uint8, l4 []byte) []byte {
		return mkIPv4(testIPHdr{src: client, dst: vip, proto: proto}, l4)
	}

	// sport and dport are what the kernel target hashes, as big-endian
	// numbers: ports, the halves of an SPI, or zeros for protocols without
	// ports. nftSport and nftDport are what nftables' "th sport" and "th
	// dport" read: the header's first four bytes, whatever the protocol.
	tests := []struct {
		name               string
		pkt                []byte
		sport, dport       uint16
		nftSport, nftDport uint16
	}{
		{"TCP", to(testTCP, mkTCP(40000, 80)), 40000, 80, 40000, 80},
		{"TCP high ports", to(testTCP, mkTCP(65535, 443)), 65535, 443, 65535, 443},
		{"UDP", to(testUDP, mkUDP(5353, 53)), 5353, 53, 5353, 53},
		{"SCTP", to(testSCTP, mkSCTP(1234, 3868)), 1234, 3868, 1234, 3868},
		{"ESP SPI halves", to(testESP, mkESP(0x11223344)), 0x1122, 0x3344, 0x1122, 0x3344},
		{"AH SPI halves after 4 bytes", to(testAH, mkAH(0xa1b2c3d4)), 0xa1b2, 0xc3d4, 0x0601, 0x0000},
		{"ICMP echo request ports 0", to(protoICMP, mkICMP(8, 0, 0x12340001, []byte("ping"))), 0, 0, 0x0800, 0},
		{"ICMP echo reply ports 0", to(protoICMP, mkICMP(0, 0, 0x12340001, nil)), 0, 0, 0, 0},
		{"GRE ports 0", to(testGRE, mkGRE()), 0, 0, 0, 0x0800},
		{"TCP after IP options", mkIPv4(testIPHdr{src: client, dst: vip, proto: testTCP, options: []byte{1, 1, 1, 0}}, mkTCP(40000, 80)), 40000, 80, 40000, 80},
		{"TCP header cut to 3 bytes", to(testTCP, []byte{0x9c, 0x40, 0x00}), 0, 0, 0, 0},
		{"UDP exactly 4 bytes", to(testUDP, []byte{0x13, 0x89, 0x00, 0x35}), 5001, 53, 5001, 53},
		{"first fragment of UDP", mkIPv4(testIPHdr{src: client, dst: vip, proto: testUDP, flagsOff: ipFlagMF}, mkUDP(5353, 53)), 5353, 53, 5353, 53},
	}

	for _, compat := range []hash.Compat{hash.CLUSTERIP, hash.NFTables} {
		for _, m := range testModes {
			for _, total := range []uint32{1, 3, 64} {
				c := hash.Config{Mode: m, TotalNodes: total, Seed: 0x5eed, Compat: compat}
				o := Owner{Hash: c}
				distinguished := false
				for _, tt := range tests {
					t.Run(fmt.Sprintf("%s/%s/%d/%s", compat, m, total, tt.name), func(t *testing.T) {
						sport, dport := tt.sport, tt.dport
						if compat == hash.NFTables {
							sport, dport = tt.nftSport, tt.nftDport
						}
						want := wantNode(t, c, client, sport, dport)
						if got := o.Node(mustParse(t, tt.pkt)); got != want {
							t.Fatalf("Node = %d, want %d", got, want)
						}
						if want != wantNode(t, c, client, 0, 0) {
							distinguished = true
						}
					})
				}
				if m.UsesPorts() && total == 64 && !distinguished {
					t.Errorf("%s/%s/%d: no packet hashes differently from its ports-zero twin; the table cannot catch ignored ports", compat, m, total)
				}
			}
		}
	}
}

// TestOwnerICMPError checks that an ICMP error about a packet the cluster
// sent (VIP to client) goes to the node that owns the client's flow.
func TestOwnerICMPError(t *testing.T) {
	const (
		client     = "198.51.100.7"
		router     = "203.0.113.1"
		clientPort = 40000
		serverPort = 443
	)
	vip := testVIP.String()

	types := []struct {
		name      string
		typ, code uint8
	}{
		{"fragmentation needed", 3, 4},
		{"port unreachable", 3, 3},
		{"source quench", 4, 0},
		{"redirect", 5, 1},
		{"time exceeded", 11, 0},
		{"parameter problem", 12, 0},
	}
	quoted := []struct {
		name  string
		proto uint8
		l4    []byte
	}{
		// Errors quote the IP header and the first 8 bytes of its payload.
		{"TCP", testTCP, mkTCP(serverPort, clientPort)[:8]},
		{"UDP", testUDP, mkUDP(serverPort, clientPort)},
		{"SCTP", testSCTP, mkSCTP(serverPort, clientPort)[:8]},
	}

	for _, m := range testModes {
		for _, q := range quoted {
			inner := mkIPv4(testIPHdr{src: vip, dst: client, proto: q.proto, id: 7}, q.l4)
			for _, ty := range types {
				t.Run(fmt.Sprintf("%s/%s/%s", m, q.name, ty.name), func(t *testing.T) {
					c, want := icmpConfig(t, m, router, client, vip, clientPort, serverPort)
					pkt := mkIPv4(testIPHdr{src: router, dst: vip, proto: protoICMP}, mkICMP(ty.typ, ty.code, 1400, inner))
					o := Owner{Hash: c}
					if got := o.Node(mustParse(t, pkt)); got != want {
						t.Fatalf("Node = %d, want %d (the client's flow); router's node is %d",
							got, want, wantNode(t, c, router, 0, 0))
					}
				})
			}
		}
	}
}

// icmpConfig finds a seed for which the client's flow is owned by another
// node than every wrong reading of an ICMP error: the router's address, the
// quoted source, or the client with its ports swapped. It returns that
// config and the node of the client's flow.
func icmpConfig(t *testing.T, m hash.Mode, router, client, vip string, clientPort, serverPort uint16) (hash.Config, int) {
	t.Helper()
	for seed := uint32(0); seed < 1000; seed++ {
		c := hash.Config{Mode: m, TotalNodes: 8, Seed: seed}
		want := wantNode(t, c, client, clientPort, serverPort)
		wrong := []int{
			wantNode(t, c, router, 0, 0),
			wantNode(t, c, vip, serverPort, clientPort),
		}
		if m == hash.SourceIPSourcePortDestPort {
			wrong = append(wrong, wantNode(t, c, client, serverPort, clientPort))
		}
		if m.UsesPorts() {
			wrong = append(wrong, wantNode(t, c, client, 0, 0))
		}
		ok := true
		for _, w := range wrong {
			ok = ok && w != want
		}
		if ok {
			return c, want
		}
	}
	t.Fatalf("no seed tells the client's flow from the wrong readings in mode %s", m)
	return hash.Config{}, 0
}

// TestOwnerICMPFallback covers ICMP whose quoted packet cannot be read:
// those are hashed like any other ICMP, on the outer source with ports 0.
// Quotes whose IP header is fine but whose L4 header is not hash the client
// with ports 0.
func TestOwnerICMPFallback(t *testing.T) {
	const (
		client = "198.51.100.7"
		router = "203.0.113.1"
	)
	vip := testVIP.String()
	good := mkIPv4(testIPHdr{src: vip, dst: client, proto: testTCP}, mkTCP(443, 40000)[:8])
	withIHL := func(ihl byte) []byte {
		b := bytes.Clone(good)
		b[0] = 0x40 | ihl
		return b
	}
	withVersion := func(v byte) []byte {
		b := bytes.Clone(good)
		b[0] = v<<4 | 5
		return b
	}
	laterFragment := mkIPv4(testIPHdr{src: vip, dst: client, proto: testTCP, flagsOff: 185}, mkTCP(443, 40000)[:8])

	tests := []struct {
		name  string
		icmp  []byte
		src   string // the address hashed
		sport uint16
		dport uint16
	}{
		{"no quote", mkICMP(3, 3, 0, nil), router, 0, 0},
		{"quote shorter than an IP header", mkICMP(3, 3, 0, good[:19]), router, 0, 0},
		{"quote of IPv6", mkICMP(3, 3, 0, withVersion(6)), router, 0, 0},
		{"quote with IHL 4", mkICMP(3, 3, 0, withIHL(4)), router, 0, 0},
		{"quote with IHL 0", mkICMP(3, 3, 0, withIHL(0)), router, 0, 0},
		{"quote with IHL past its end", mkICMP(3, 3, 0, withIHL(15)), router, 0, 0},
		{"not an error: echo request", mkICMP(8, 0, 0, good), router, 0, 0},
		{"not an error: timestamp", mkICMP(13, 0, 0, good), router, 0, 0},
		{"not an error: router advertisement", mkICMP(9, 0, 0, good), router, 0, 0},
		{"quote exactly an IP header", mkICMP(3, 3, 0, good[:20]), client, 0, 0},
		{"quote with 3 bytes of TCP", mkICMP(3, 3, 0, good[:23]), client, 0, 0},
		{"quote of a later fragment", mkICMP(3, 3, 0, laterFragment), client, 0, 0},
		{"quote with options", mkICMP(3, 4, 0, mkIPv4(testIPHdr{src: vip, dst: client, proto: testUDP, options: []byte{1, 1, 1, 0}}, mkUDP(53, 5353))), client, 5353, 53},
	}

	for _, m := range testModes {
		c := hash.Config{Mode: m, TotalNodes: 64, Seed: 1}
		o := Owner{Hash: c}
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/%s", m, tt.name), func(t *testing.T) {
				pkt := mkIPv4(testIPHdr{src: router, dst: vip, proto: protoICMP}, tt.icmp)
				want := wantNode(t, c, tt.src, tt.sport, tt.dport)
				if got := o.Node(mustParse(t, pkt)); got != want {
					t.Fatalf("Node = %d, want %d", got, want)
				}
			})
		}
	}
}

func TestNeedsFragmentTable(t *testing.T) {
	const (
		notFragment   = 0
		dontFragment  = 0x4000
		firstFragment = ipFlagMF
		middle        = ipFlagMF | 185
		last          = 370
	)
	tests := []struct {
		name     string
		proto    uint8
		flagsOff uint16
		// want for SourceIP; the port testModes need the table for every
		// fragment.
		sourceIP bool
	}{
		{"TCP whole", testTCP, notFragment, false},
		{"TCP DF", testTCP, dontFragment, false},
		{"TCP first fragment", testTCP, firstFragment, false},
		{"TCP middle fragment", testTCP, middle, false},
		{"TCP last fragment", testTCP, last, false},
		{"UDP first fragment", testUDP, firstFragment, false},
		{"UDP last fragment", testUDP, last, false},
		{"GRE last fragment", testGRE, last, false},
		{"ICMP whole", protoICMP, notFragment, false},
		{"ICMP first fragment", protoICMP, firstFragment, true},
		{"ICMP middle fragment", protoICMP, middle, true},
		{"ICMP last fragment", protoICMP, last, true},
	}
	for _, m := range testModes {
		o := Owner{Hash: hash.Config{Mode: m, TotalNodes: 2}}
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/%s", m, tt.name), func(t *testing.T) {
				p := mustParse(t, mkIPv4(testIPHdr{src: "198.51.100.7", dst: testVIP.String(), proto: tt.proto, flagsOff: tt.flagsOff}, make([]byte, 16)))
				want := tt.sourceIP
				if m.UsesPorts() {
					want = tt.flagsOff&^dontFragment != 0
				}
				if got := o.needsFragmentTable(p); got != want {
					t.Fatalf("needsFragmentTable = %v, want %v", got, want)
				}
			})
		}
	}
}

func TestParseIPv4(t *testing.T) {
	const src, dst = "198.51.100.7", "192.0.2.10"
	valid := mkIPv4(testIPHdr{src: src, dst: dst, proto: testUDP, id: 0xbeef, flagsOff: ipFlagMF | 3}, mkUDP(1, 2))
	withOptions := mkIPv4(testIPHdr{src: src, dst: dst, proto: testTCP, options: []byte{0x94, 0x04, 0, 0, 1, 1, 1, 0}}, mkTCP(1, 2))
	edit := func(b []byte, f func(b []byte)) []byte {
		b = bytes.Clone(b)
		f(b)
		return b
	}
	setTotal := func(n uint16) func([]byte) {
		return func(b []byte) { b[2], b[3] = byte(n>>8), byte(n) }
	}

	tests := []struct {
		name string
		b    []byte
		ok   bool
		want ipPacket
	}{
		{
			name: "UDP first fragment",
			b:    valid,
			ok:   true,
			want: ipPacket{src: mkAddr4(src), dst: mkAddr4(dst), id: 0xbeef, fragOff: 3, more: true, proto: testUDP, l4: mkUDP(1, 2)},
		},
		{
			name: "options skipped",
			b:    withOptions,
			ok:   true,
			want: ipPacket{src: mkAddr4(src), dst: mkAddr4(dst), proto: testTCP, l4: mkTCP(1, 2)},
		},
		{
			name: "trailing bytes cut to total length",
			b:    append(bytes.Clone(valid), 0xde, 0xad, 0xbe, 0xef, 0, 0),
			ok:   true,
			want: ipPacket{src: mkAddr4(src), dst: mkAddr4(dst), id: 0xbeef, fragOff: 3, more: true, proto: testUDP, l4: mkUDP(1, 2)},
		},
		{
			name: "total length equal to IHL",
			b:    edit(valid, setTotal(20)),
			ok:   true,
			want: ipPacket{src: mkAddr4(src), dst: mkAddr4(dst), id: 0xbeef, fragOff: 3, more: true, proto: testUDP, l4: []byte{}},
		},
		{
			name: "DF and the reserved bit are not fragment bits",
			b:    edit(valid, func(b []byte) { b[6], b[7] = 0xc0, 0 }),
			ok:   true,
			want: ipPacket{src: mkAddr4(src), dst: mkAddr4(dst), id: 0xbeef, proto: testUDP, l4: mkUDP(1, 2)},
		},
		{name: "empty"},
		{name: "19 bytes", b: valid[:19]},
		{name: "version 6", b: edit(valid, func(b []byte) { b[0] = 0x65 })},
		{name: "version 0", b: edit(valid, func(b []byte) { b[0] = 0x05 })},
		{name: "IHL 4", b: edit(valid, func(b []byte) { b[0] = 0x44 })},
		{name: "IHL 0", b: edit(valid, func(b []byte) { b[0] = 0x40 })},
		{name: "IHL past total length", b: edit(valid, func(b []byte) { b[0] = 0x48 })},
		{name: "total length past buffer", b: edit(valid, setTotal(uint16(len(valid)+1)))},
		{name: "total length below IHL", b: edit(valid, setTotal(19))},
		{name: "total length below options", b: edit(withOptions, setTotal(24))},
		{name: "total length 0", b: edit(valid, setTotal(0))},
		{name: "buffer cut inside options", b: withOptions[:26]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p ipPacket
			ok := parseIPv4(tt.b, &p)
			if ok != tt.ok {
				t.Fatalf("parseIPv4 = %v, want %v", ok, tt.ok)
			}
			if !ok {
				return
			}
			if p.src != tt.want.src || p.dst != tt.want.dst || p.id != tt.want.id ||
				p.fragOff != tt.want.fragOff || p.more != tt.want.more || p.proto != tt.want.proto {
				t.Errorf("header = %+v\nwant     %+v", p, tt.want)
			}
			if !bytes.Equal(p.l4, tt.want.l4) {
				t.Errorf("l4 = % x, want % x", p.l4, tt.want.l4)
			}
			if p.fragment() != (tt.want.more || tt.want.fragOff != 0) {
				t.Errorf("fragment() = %v", p.fragment())
			}
		})
	}
}
