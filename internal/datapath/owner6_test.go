package datapath

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/clusterip/clusterip/hash"
)

// IPv6 packets are owned as nftables' "jhash ip6 saddr . th sport . th
// dport" places them: the transport header's first four bytes, found past
// the extension headers, AH's own.
func TestOwnerNode6(t *testing.T) {
	const client, vip = "2001:db8:1::7", "2001:db8::10"
	to := func(exts []testExt, proto uint8, l4 []byte) []byte { return mkIPv6(client, vip, exts, proto, l4) }
	tests := []struct {
		name         string
		pkt          []byte
		sport, dport uint16
	}{
		{"TCP", to(nil, testTCP, mkTCP(40000, 80)), 40000, 80},
		{"UDP behind hop-by-hop and destination options", to([]testExt{extOpts(0, 0), extOpts(60, 1)}, testUDP, mkUDP(5353, 53)), 5353, 53},
		{"first fragment of UDP", to([]testExt{extFrag(0, true, 1)}, testUDP, mkUDP(5353, 53)), 5353, 53},
		{"ESP SPI halves", to(nil, testESP, mkESP(0x11223344)), 0x1122, 0x3344},
		{"AH first word", to(nil, testAH, mkAH(0xa1b2c3d4)), 0x0601, 0x0000},
		{"ICMPv6 echo: type, code, checksum", to(nil, protoICMPv6, mkICMPv6(client, vip, 128, 0, 0x00010001, nil)), 0x8000, 0},
		{"TCP cut to 3 bytes", to(nil, testTCP, []byte{0x9c, 0x40, 0}), 0, 0},
	}
	// The echo's checksum is the "destination port".
	echo := mkICMPv6(client, vip, 128, 0, 0x00010001, nil)
	tests[5].dport = uint16(echo[2])<<8 | uint16(echo[3])

	for _, m := range testModes {
		for _, total := range []uint32{1, 3, 64} {
			c := hash.Config{Mode: m, TotalNodes: total, Seed: 0x5eed, Compat: hash.NFTables}
			o := Owner{Hash: c}
			for _, tt := range tests {
				t.Run(fmt.Sprintf("%s/%d/%s", m, total, tt.name), func(t *testing.T) {
					var p ipPacket
					if !parseIPv6(tt.pkt, &p) {
						t.Fatal("test packet does not parse")
					}
					want, err := c.NodeForPorts(netip.MustParseAddr(client), tt.sport, tt.dport)
					if err != nil {
						t.Fatal(err)
					}
					if got := o.Node(&p); got != want {
						t.Fatalf("Node = %d, want %d", got, want)
					}
				})
			}
		}
	}
}

// An ICMPv6 error about a packet the cluster sent goes to the node that
// owns the client's flow, with extension headers in the quote and with the
// quote cut short.
func TestOwnerICMPv6Error(t *testing.T) {
	const vip, client, router = "2001:db8::10", "2001:db8:1::7", "2001:db8:ff::1"
	c := hash.Config{Mode: hash.SourceIPSourcePortDestPort, TotalNodes: 64, Seed: 9, Compat: hash.NFTables}
	o := Owner{Hash: c}
	flowNode, _ := c.NodeForPorts(netip.MustParseAddr(client), 40000, 443)
	zeroNode, _ := c.NodeForPorts(netip.MustParseAddr(client), 0, 0)
	if flowNode == zeroNode {
		t.Fatal("test flow hashes like its ports-zero twin; pick another")
	}
	quote := func(exts []testExt, l4 []byte) []byte { return mkIPv6(vip, client, exts, testTCP, l4) }
	tests := []struct {
		name string
		typ  uint8
		body []byte
		want int
	}{
		{"packet too big", 2, quote(nil, mkTCP(443, 40000)), flowNode},
		{"destination unreachable", 1, quote(nil, mkTCP(443, 40000)), flowNode},
		{"time exceeded, quote with options", 3, quote([]testExt{extOpts(60, 2)}, mkTCP(443, 40000)), flowNode},
		{"parameter problem", 4, quote(nil, mkTCP(443, 40000)), flowNode},
		{"quote cut inside its options", 2, quote([]testExt{extOpts(60, 2)}, mkTCP(443, 40000))[:50], zeroNode},
		{"quote of a later fragment", 2, quote([]testExt{extFrag(3, true, 1)}, mkTCP(443, 40000)), zeroNode},
		{"quote cut to its fixed header", 2, quote(nil, mkTCP(443, 40000))[:40], zeroNode},
		{"not an error: echo request", 128, quote(nil, mkTCP(443, 40000)), -1},
		{"quote too short to be IPv6", 2, quote(nil, nil)[:39], -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pkt := mkIPv6(router, vip, nil, protoICMPv6, mkICMPv6(router, vip, tt.typ, 0, 1280, tt.body))
			var p ipPacket
			if !parseIPv6(pkt, &p) {
				t.Fatal("test packet does not parse")
			}
			want := tt.want
			if want == -1 {
				// Hashed as the ICMPv6 message it is, from the router.
				want = o.Hash.Node6((*[16]byte)(&p.src), uint16(p.l4[1])<<8|uint16(p.l4[0]), uint16(p.l4[3])<<8|uint16(p.l4[2]))
			}
			if got := o.Node(&p); got != want {
				t.Fatalf("Node = %d, want %d", got, want)
			}
		})
	}
}

// Random IPv6 packets, extension headers and all, are owned exactly as
// hash.Config.Node6 places their source and transport bytes.
func TestOwnerNode6Random(t *testing.T) {
	rng := rand.New(rand.NewPCG(6, 6))
	for i := 0; i < 2000; i++ {
		c := hash.Config{Mode: testModes[i%3], TotalNodes: uint32(1 + rng.IntN(64)), Seed: rng.Uint32(), Compat: hash.NFTables}
		var src [16]byte
		for j := range src {
			src[j] = byte(rng.Uint32())
		}
		src[0] = 0x20
		sa := netip.AddrFrom16(src).String()
		var exts []testExt
		for range rng.IntN(3) {
			exts = append(exts, extOpts([]uint8{43, 60}[rng.IntN(2)], rng.IntN(3)))
		}
		sport, dport := uint16(rng.Uint32()), uint16(rng.Uint32())
		proto, l4 := testL4(i%8, sport, dport, rng.Uint32())
		var p ipPacket
		if !parseIPv6(mkIPv6(sa, "2001:db8::10", exts, proto, l4), &p) {
			t.Fatal("test packet does not parse")
		}
		want := c.Node6(&src, uint16(l4[1])<<8|uint16(l4[0]), uint16(l4[3])<<8|uint16(l4[2]))
		if got := (&Owner{Hash: c}).Node(&p); got != want {
			t.Fatalf("%+v proto %d from %s: Node %d, want %d", c, proto, sa, got, want)
		}
	}
}
