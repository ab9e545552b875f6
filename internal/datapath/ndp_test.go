package datapath

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/nodeset"
)

// nsFrame is an Ethernet frame carrying a neighbour solicitation from src
// (MAC testClientMAC) to dst for target; edit may change the IPv6 packet.
func nsFrame(src, dst, target string, opts []byte, edit func(ip []byte)) []byte {
	ip := mkIPv6(src, dst, nil, protoICMPv6, mkNS(src, dst, target, opts))
	ip[7] = ndHopLimit
	if edit != nil {
		edit(ip)
	}
	_, snMAC := SolicitedNode(netip.MustParseAddr(target))
	return mkEther(snMAC, testClientMAC, etherTypeIPv6, ip)
}

// sllOpt is a source link-layer address option.
func sllOpt(mac net.HardwareAddr) []byte { return append([]byte{ndOptSourceLL, 1}, mac...) }

func TestNeighborSolicitation(t *testing.T) {
	const client, vip = "2001:db8:1::7", "2001:db8::10"
	sn, _ := SolicitedNode(netip.MustParseAddr(vip))
	other := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x42}
	tests := []struct {
		name      string
		frame     []byte
		valid     bool
		forVIP    bool
		ethDst    net.HardwareAddr
		ipDst     string
		solicited bool
	}{
		{"resolution, with source link-layer option", nsFrame(client, sn.String(), vip, sllOpt(other), nil), true, true, other, client, true},
		{"resolution, without option: Ethernet source", nsFrame(client, sn.String(), vip, nil, nil), true, true, testClientMAC, client, true},
		{"unreachability probe to the VIP itself", nsFrame(client, vip, vip, sllOpt(testClientMAC), nil), true, true, testClientMAC, client, true},
		{"duplicate address detection: all nodes", nsFrame("::", sn.String(), vip, nil, nil), true, true, allNodesMAC, "ff02::1", false},
		{"for another address", nsFrame(client, sn.String(), "2001:db8::11", nil, nil), true, false, nil, "", false},

		{"hop limit 254", nsFrame(client, sn.String(), vip, nil, func(ip []byte) { ip[7] = 254 }), false, false, nil, "", false},
		{"bad checksum", nsFrame(client, sn.String(), vip, nil, func(ip []byte) { ip[43] ^= 1 }), false, false, nil, "", false},
		{"code 1", nsFrame(client, sn.String(), vip, nil, func(ip []byte) { ip[41] = 1; fixSum(ip) }), false, false, nil, "", false},
		{"option of length 0", nsFrame(client, sn.String(), vip, []byte{ndOptSourceLL, 0, 0, 0, 0, 0, 0, 0}, nil), false, false, nil, "", false},
		{"option past the end", nsFrame(client, sn.String(), vip, []byte{ndOptSourceLL, 2, 0, 0, 0, 0, 0, 0}, nil), false, false, nil, "", false},
		{"option cut to one byte", nsFrame(client, sn.String(), vip, []byte{ndOptSourceLL}, nil), false, false, nil, "", false},
		{"source link-layer option from ::", nsFrame("::", sn.String(), vip, sllOpt(other), nil), false, false, nil, "", false},
		{"detection probe not to the solicited-node group", nsFrame("::", vip, vip, nil, nil), false, false, nil, "", false},
		{"multicast target", nsFrame(client, sn.String(), "ff02::1", nil, nil), false, false, nil, "", false},
		{"multicast sender", nsFrame("ff02::2", sn.String(), vip, nil, nil), false, false, nil, "", false},
		{"multicast link-layer address", nsFrame(client, sn.String(), vip, sllOpt(net.HardwareAddr{0x01, 0, 0x5e, 0, 0, 1}), nil), false, false, nil, "", false},
		{"message cut", nsFrame(client, sn.String(), vip, nil, func(ip []byte) {
			binary.BigEndian.PutUint16(ip[4:6], 20)
		}), false, false, nil, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p ipPacket
			if !parseIPv6(tt.frame[ethHdrLen:], &p) || p.proto != protoICMPv6 {
				t.Fatal("test frame does not parse")
			}
			s, forVIP, valid := neighborSolicitForVIP(tt.frame, &p, mkAddr6(vip))
			if valid != tt.valid || forVIP != tt.forVIP {
				t.Fatalf("valid %v for VIP %v, want %v %v", valid, forVIP, tt.valid, tt.forVIP)
			}
			if !forVIP {
				return
			}
			if !bytes.Equal(s.ethDst, tt.ethDst) || s.ipDst != mkAddr6(tt.ipDst) || s.solicited != tt.solicited {
				t.Fatalf("answer to %s %x solicited %v, want %s %s %v", s.ethDst, s.ipDst, s.solicited, tt.ethDst, tt.ipDst, tt.solicited)
			}
		})
	}
}

// fixSum recomputes the ICMPv6 checksum of an IPv6 packet without
// extension headers.
func fixSum(ip []byte) {
	var src, dst addr
	copy(src[:], ip[8:24])
	copy(dst[:], ip[24:40])
	ip[42], ip[43] = 0, 0
	binary.BigEndian.PutUint16(ip[42:44], icmpv6Checksum(&src, &dst, ip[40:]))
}

func TestNeighborAdvertFrame(t *testing.T) {
	vip, client := mkAddr6("2001:db8::10"), mkAddr6("2001:db8:1::7")
	for _, solicited := range []bool{true, false} {
		f := neighborAdvertFrame(testClientMAC, testNICMAC, vip, client, testClusterMAC6, solicited)
		if !bytes.Equal(f[0:6], testClientMAC) || !bytes.Equal(f[6:12], testNICMAC) || binary.BigEndian.Uint16(f[12:14]) != etherTypeIPv6 {
			t.Fatalf("Ethernet header % x", f[:14])
		}
		var p ipPacket
		if !parseIPv6(f[ethHdrLen:], &p) || p.proto != protoICMPv6 || p.src != vip || p.dst != client {
			t.Fatalf("IPv6 header % x", f[ethHdrLen:ethHdrLen+40])
		}
		if hl := f[ethHdrLen+7]; hl != 255 {
			t.Fatalf("hop limit %d", hl)
		}
		msg := p.l4
		if icmpv6Checksum(&p.src, &p.dst, msg) != 0 {
			t.Fatal("bad checksum")
		}
		wantFlags := byte(naFlagOverride)
		if solicited {
			wantFlags |= naFlagSolicited
		}
		if msg[0] != ndNeighborAdvert || msg[1] != 0 || msg[4] != wantFlags || addr(msg[8:24]) != vip {
			t.Fatalf("advertisement % x", msg[:24])
		}
		if len(msg) != 32 || msg[24] != ndOptTargetLL || msg[25] != 1 || !bytes.Equal(msg[26:32], testClusterMAC6) {
			t.Fatalf("target link-layer option % x", msg[24:])
		}
	}
	u := unsolicitedAdvertFrame(testNICMAC, vip, testClusterMAC6)
	if !bytes.Equal(u[0:6], allNodesMAC) || addr(u[ethHdrLen+24:ethHdrLen+40]) != mkAddr6("ff02::1") || u[ethHdrLen+44]&naFlagSolicited != 0 {
		t.Fatalf("unsolicited advertisement % x", u)
	}
}

func TestSolicitedNode(t *testing.T) {
	g, mac := SolicitedNode(netip.MustParseAddr("2001:db8::1:2345:6789"))
	if g.String() != "ff02::1:ff45:6789" || mac.String() != "33:33:ff:45:67:89" {
		t.Fatalf("SolicitedNode = %s %s", g, mac)
	}
}

// A worker answers a solicitation for its VIP with one advertisement, and
// counts a malformed one.
func TestWorkerAnswersSolicitation(t *testing.T) {
	const client, vip = "2001:db8:1::7", "2001:db8::10"
	w := fuzzWorker(t, netip.MustParseAddr(vip), 1, Policy{Serve: 1})
	var sent [][]byte
	w.send = func(f []byte, dst net.HardwareAddr) error {
		sent = append(sent, f)
		return nil
	}
	sn, _ := SolicitedNode(netip.MustParseAddr(vip))
	w.handle(append(make([]byte, vnetHdrLen), nsFrame(client, sn.String(), vip, nil, nil)...), 1)
	w.handle(append(make([]byte, vnetHdrLen), nsFrame(client, sn.String(), vip, nil, func(ip []byte) { ip[7] = 1 })...), 1)
	w.handle(append(make([]byte, vnetHdrLen), nsFrame(client, sn.String(), "2001:db8::99", nil, nil)...), 1)
	if len(sent) != 1 || w.cluster().stats.ndReplies.Load() != 1 || w.cluster().stats.malformed.Load() != 1 {
		t.Fatalf("%d sent, %d replies counted, %d malformed", len(sent), w.cluster().stats.ndReplies.Load(), w.cluster().stats.malformed.Load())
	}
}

func FuzzNeighborSolicitation(f *testing.F) {
	const client, vip = "2001:db8:1::7", "2001:db8::10"
	sn, _ := SolicitedNode(netip.MustParseAddr(vip))
	f.Add(nsFrame(client, sn.String(), vip, sllOpt(testClientMAC), nil))
	f.Add(nsFrame("::", sn.String(), vip, nil, nil))
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < ethHdrLen {
			return
		}
		var p ipPacket
		if !parseIPv6(frame[ethHdrLen:], &p) || p.proto != protoICMPv6 || len(p.l4) == 0 || p.l4[0] != ndNeighborSolicit {
			return
		}
		s, forVIP, valid := neighborSolicitForVIP(frame, &p, mkAddr6(vip))
		if forVIP && (!valid || len(s.ethDst) != 6 || s.ethDst[0]&1 != 0 && s.solicited) {
			t.Fatalf("answer to %s (solicited %v, valid %v)", s.ethDst, s.solicited, valid)
		}
	})
}

// Every fragment of an IPv6 datagram follows its first fragment, which
// alone carries the ports: all answered where the first is, none where it
// is not, also when a later fragment comes first.
func TestWorkerIPv6Fragments(t *testing.T) {
	const client, vip = "2001:db8:1::7", "2001:db8::10"
	eth := func(ip []byte) []byte {
		return append(make([]byte, vnetHdrLen), mkEther(testClusterMAC6, testClientMAC, etherTypeIPv6, ip)...)
	}
	first := eth(mkIPv6(client, vip, []testExt{extFrag(0, true, 77)}, testUDP, append(mkUDP(5353, 53), make([]byte, 8)...)))
	later := eth(mkIPv6(client, vip, []testExt{extFrag(2, false, 77)}, testUDP, []byte("the rest")))
	var p ipPacket
	parseIPv6(first[vnetHdrLen+ethHdrLen:], &p)
	o := Owner{Hash: hash.Config{Mode: hash.SourceIPSourcePort, TotalNodes: 3, Seed: 7, Compat: hash.NFTables}}
	owner := o.Node(&p)
	for _, order := range [][][]byte{{first, later}, {later, first}} {
		for n := 1; n <= 3; n++ {
			w := fuzzWorker(t, testVIP6, hash.SourceIPSourcePort, Policy{Serve: nodeset.NodeSet(0).Add(n)})
			for _, f := range order {
				w.handle(bytes.Clone(f), 1)
			}
			wantOwned := uint64(0)
			if n == owner {
				wantOwned = 2
			}
			if got := w.cluster().stats.owned.Load() + w.cluster().stats.tapErrors.Load(); got != wantOwned {
				t.Fatalf("serving %d (owner %d): %d fragments delivered, want %d", n, owner, got, wantOwned)
			}
		}
	}
}
