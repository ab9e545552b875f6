package datapath

import (
	"bytes"
	"testing"

	"github.com/clusterip/clusterip/hash"
)

func TestParseIPv6(t *testing.T) {
	const src, dst = "2001:db8:1::7", "2001:db8::10"
	tcp := mkTCP(40000, 80)
	tests := []struct {
		name     string
		b        []byte
		ok       bool
		proto    uint8
		l4       []byte
		id       uint32
		fragOff  uint16
		more     bool
		fragLen  uint32
		fragment bool
	}{
		{name: "TCP", b: mkIPv6(src, dst, nil, testTCP, tcp), ok: true, proto: testTCP, l4: tcp},
		{name: "hop-by-hop, routing, destination options", ok: true, proto: testTCP, l4: tcp,
			b: mkIPv6(src, dst, []testExt{extOpts(0, 0), extOpts(43, 1), extOpts(60, 0)}, testTCP, tcp)},
		{name: "first fragment, options after it", ok: true, proto: testUDP, l4: mkUDP(1, 2), id: 0xdeadbeef, more: true, fragLen: 8 + 8, fragment: true,
			b: mkIPv6(src, dst, []testExt{extFrag(0, true, 0xdeadbeef), extOpts(60, 0)}, testUDP, mkUDP(1, 2))},
		{name: "later fragment stops at the fragment header", ok: true, proto: testUDP, l4: []byte("middle!!"), id: 7, fragOff: 5, fragLen: 8, fragment: true,
			b: mkIPv6(src, dst, []testExt{extOpts(0, 0), extFrag(5, false, 7)}, testUDP, []byte("middle!!"))},
		{name: "atomic fragment is whole", ok: true, proto: testTCP, l4: tcp,
			b: mkIPv6(src, dst, []testExt{extFrag(0, false, 9)}, testTCP, tcp)},
		{name: "AH ends the walk", ok: true, proto: testAH, l4: mkAH(0x1234),
			b: mkIPv6(src, dst, nil, testAH, mkAH(0x1234))},
		{name: "ESP", ok: true, proto: testESP, l4: mkESP(0x1234), b: mkIPv6(src, dst, nil, testESP, mkESP(0x1234))},
		{name: "no next header", ok: true, proto: 59, l4: []byte{}, b: mkIPv6(src, dst, nil, 59, []byte("ignored"))},
		{name: "trailing bytes cut to payload length", ok: true, proto: testTCP, l4: tcp,
			b: append(mkIPv6(src, dst, nil, testTCP, tcp), 1, 2, 3)},

		{name: "empty"},
		{name: "39 bytes", b: mkIPv6(src, dst, nil, testTCP, tcp)[:39]},
		{name: "version 4", b: func() []byte { b := mkIPv6(src, dst, nil, testTCP, tcp); b[0] = 0x40; return b }()},
		{name: "payload length 0 (jumbogram)", b: func() []byte { b := mkIPv6(src, dst, nil, testTCP, tcp); b[4], b[5] = 0, 0; return b }()},
		{name: "payload length past the buffer", b: mkIPv6(src, dst, nil, testTCP, tcp)[:50]},
		{name: "extension header past the end", b: func() []byte {
			b := mkIPv6(src, dst, []testExt{extOpts(60, 0)}, testTCP, nil)
			b[41] = 3 // 32 bytes, only 8 there
			return b
		}()},
		{name: "hop-by-hop not first", b: mkIPv6(src, dst, []testExt{extOpts(60, 0), extOpts(0, 0)}, testTCP, tcp)},
		{name: "two fragment headers", b: mkIPv6(src, dst, []testExt{extFrag(0, true, 1), extFrag(0, true, 1)}, testTCP, tcp)},
		{name: "fragment header cut", b: mkIPv6(src, dst, []testExt{extFrag(0, true, 1)}, testTCP, nil)[:44]},
		{name: "too many headers", b: func() []byte {
			var exts []testExt
			for range maxExtHeaders + 1 {
				exts = append(exts, extOpts(60, 0))
			}
			return mkIPv6(src, dst, exts, testTCP, tcp)
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p ipPacket
			ok := parseIPv6(tt.b, &p)
			if ok != tt.ok {
				t.Fatalf("parseIPv6 = %v, want %v", ok, tt.ok)
			}
			if !ok {
				return
			}
			if p.src != mkAddr6(src) || p.dst != mkAddr6(dst) || !p.v6 {
				t.Errorf("addresses %x -> %x (v6 %v)", p.src, p.dst, p.v6)
			}
			if p.proto != tt.proto || !bytes.Equal(p.l4, tt.l4) {
				t.Errorf("proto %d l4 % x, want %d % x", p.proto, p.l4, tt.proto, tt.l4)
			}
			if p.id != tt.id || p.fragOff != tt.fragOff || p.more != tt.more || p.fragLen != tt.fragLen || p.fragment() != tt.fragment {
				t.Errorf("fragment id %#x off %d more %v len %d (%v), want %#x %d %v %d (%v)",
					p.id, p.fragOff, p.more, p.fragLen, p.fragment(), tt.id, tt.fragOff, tt.more, tt.fragLen, tt.fragment)
			}
		})
	}
}

func mkAddr6(a string) addr { return mkAddr4(a) }

func FuzzParseIPv6(f *testing.F) {
	const src, dst = "2001:db8:1::7", "2001:db8::10"
	f.Add(mkIPv6(src, dst, nil, testTCP, mkTCP(1, 2)))
	f.Add(mkIPv6(src, dst, []testExt{extOpts(0, 1), extFrag(0, true, 3), extOpts(60, 0)}, testUDP, mkUDP(1, 2)))
	f.Add(mkIPv6(src, dst, []testExt{extFrag(9, false, 3)}, testUDP, []byte("x")))
	f.Add(mkIPv6(dst, src, nil, protoICMPv6, mkICMPv6(dst, src, 2, 0, 1280, mkIPv6(dst, src, []testExt{extOpts(60, 0)}, testTCP, mkTCP(80, 40000)))))
	f.Fuzz(func(t *testing.T, b []byte) {
		var p ipPacket
		if !parseIPv6(b, &p) {
			return
		}
		end := 40 + (int(b[4])<<8 | int(b[5]))
		if len(p.l4) > end-40 || !p.v6 {
			t.Fatalf("l4 of %d bytes in a payload of %d", len(p.l4), end-40)
		}
		if p.fragment() && int(p.fragLen) > end-40 {
			t.Fatalf("fragment of %d bytes in a payload of %d", p.fragLen, end-40)
		}
		if p.proto == protoICMPv6 {
			o := Owner{Hash: hash.Config{Mode: hash.SourceIPSourcePortDestPort, TotalNodes: 7, Compat: hash.NFTables}}
			if n := o.Node(&p); n < 1 || n > 7 {
				t.Fatalf("node %d", n)
			}
		}
	})
}
