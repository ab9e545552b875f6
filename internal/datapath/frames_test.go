package datapath

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// Frame builders shared by the datapath tests. They write every field by
// hand, in wire order, so that the tests do not lean on the parsers they
// check.

const (
	testTCP  = 6
	testUDP  = 17
	testGRE  = 47
	testESP  = 50
	testAH   = 51
	testSCTP = 132
)

var (
	testVIP        = netip.MustParseAddr("192.0.2.10")
	testClusterMAC = net.HardwareAddr{0x01, 0x00, 0x5e, 0x00, 0x02, 0x0a}
	testNICMAC     = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
	testClientMAC  = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x99}
)

// testIPHdr describes an IPv4 header for mkIPv4.
type testIPHdr struct {
	src, dst string
	proto    uint8
	id       uint16
	flagsOff uint16 // flags and fragment offset, as on the wire
	options  []byte // multiple of 4 bytes
}

// mkIPv4 returns an IPv4 packet with a correct IHL and total length.
func mkIPv4(h testIPHdr, payload []byte) []byte {
	ihl := 20 + len(h.options)
	b := make([]byte, ihl, ihl+len(payload))
	b[0] = 0x40 | byte(ihl/4)
	binary.BigEndian.PutUint16(b[2:4], uint16(ihl+len(payload)))
	binary.BigEndian.PutUint16(b[4:6], h.id)
	binary.BigEndian.PutUint16(b[6:8], h.flagsOff)
	b[8] = 64
	b[9] = h.proto
	src := netip.MustParseAddr(h.src).As4()
	dst := netip.MustParseAddr(h.dst).As4()
	copy(b[12:16], src[:])
	copy(b[16:20], dst[:])
	copy(b[20:], h.options)
	return append(b, payload...)
}

// mkTCP returns a 20-byte TCP header with the SYN flag set.
func mkTCP(sport, dport uint16) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:2], sport)
	binary.BigEndian.PutUint16(b[2:4], dport)
	b[12] = 5 << 4
	b[13] = 0x02 // SYN
	return b
}

// mkUDP returns an 8-byte UDP header.
func mkUDP(sport, dport uint16) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint16(b[0:2], sport)
	binary.BigEndian.PutUint16(b[2:4], dport)
	binary.BigEndian.PutUint16(b[4:6], 8)
	return b
}

// mkSCTP returns a 12-byte SCTP common header.
func mkSCTP(sport, dport uint16) []byte {
	b := make([]byte, 12)
	binary.BigEndian.PutUint16(b[0:2], sport)
	binary.BigEndian.PutUint16(b[2:4], dport)
	return b
}

// mkESP returns an ESP header: SPI then sequence number.
func mkESP(spi uint32) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b[0:4], spi)
	binary.BigEndian.PutUint32(b[4:8], 1)
	return b
}

// mkAH returns an AH header: next header, length, reserved, SPI, sequence.
func mkAH(spi uint32) []byte {
	b := make([]byte, 12)
	b[0] = testTCP
	b[1] = 1
	binary.BigEndian.PutUint32(b[4:8], spi)
	binary.BigEndian.PutUint32(b[8:12], 1)
	return b
}

// mkGRE returns a minimal GRE header carrying IPv4.
func mkGRE() []byte { return []byte{0x00, 0x00, 0x08, 0x00} }

// mkICMP returns an ICMP message: type, code, checksum (left 0), the 4-byte
// rest of header and body.
func mkICMP(typ, code uint8, rest uint32, body []byte) []byte {
	b := make([]byte, 8, 8+len(body))
	b[0], b[1] = typ, code
	binary.BigEndian.PutUint32(b[4:8], rest)
	return append(b, body...)
}

// testL4 returns the protocol and L4 header of one of nine kinds of test
// packet: TCP (kinds 0 and 1), UDP, SCTP, ESP, AH, GRE, UDP-Lite, and an
// ICMP echo request (kind 8). spi is the SPI or echo identifier.
func testL4(kind int, sport, dport uint16, spi uint32) (uint8, []byte) {
	switch kind {
	case 0, 1:
		return testTCP, mkTCP(sport, dport)
	case 2:
		return testUDP, mkUDP(sport, dport)
	case 3:
		return testSCTP, mkSCTP(sport, dport)
	case 4:
		return testESP, mkESP(spi)
	case 5:
		return testAH, mkAH(spi)
	case 6:
		return testGRE, mkGRE()
	case 7:
		return 136, mkUDP(sport, dport) // UDP-Lite
	}
	return protoICMP, mkICMP(8, 0, spi, nil)
}

// mkEther returns an Ethernet II frame.
func mkEther(dst, src net.HardwareAddr, etherType uint16, payload []byte) []byte {
	b := make([]byte, 14, 14+len(payload))
	copy(b[0:6], dst)
	copy(b[6:12], src)
	binary.BigEndian.PutUint16(b[12:14], etherType)
	return append(b, payload...)
}

// mkARP returns an Ethernet/IPv4 ARP packet.
func mkARP(op uint16, sha net.HardwareAddr, spa string, tha net.HardwareAddr, tpa string) []byte {
	b := make([]byte, 28)
	binary.BigEndian.PutUint16(b[0:2], 1)
	binary.BigEndian.PutUint16(b[2:4], 0x0800)
	b[4], b[5] = 6, 4
	binary.BigEndian.PutUint16(b[6:8], op)
	copy(b[8:14], sha)
	s := netip.MustParseAddr(spa).As4()
	copy(b[14:18], s[:])
	copy(b[18:24], tha)
	t := netip.MustParseAddr(tpa).As4()
	copy(b[24:28], t[:])
	return b
}

// mkAddr4 returns the IPv4 address a as parseIPv4 fills ipPacket: mapped.
func mkAddr4(a string) addr {
	return netip.MustParseAddr(a).As16()
}

var (
	testVIP6        = netip.MustParseAddr("2001:db8::10")
	testClusterMAC6 = net.HardwareAddr{0x33, 0x33, 0x00, 0x00, 0x00, 0x10}
)

// testExt is an IPv6 extension header for mkIPv6: its type and its bytes
// after the next-header field (for all but the fragment header, padded to
// a multiple of 8 with the length field filled in by mkIPv6).
type testExt struct {
	typ  uint8
	body []byte
}

// extFrag is a fragment header: offset in 8-byte units, more flag, id.
func extFrag(off uint16, more bool, id uint32) testExt {
	b := make([]byte, 7)
	fo := off << 3
	if more {
		fo |= 1
	}
	binary.BigEndian.PutUint16(b[1:3], fo)
	binary.BigEndian.PutUint32(b[3:7], id)
	return testExt{typ: 44, body: b}
}

// extOpts is an empty hop-by-hop (0) or destination options (60) header,
// or a routing header (43), of 8*(n+1) bytes.
func extOpts(typ uint8, n int) testExt {
	b := make([]byte, 7+8*n)
	b[0] = byte(n)
	if typ != 43 {
		b[1] = 1 // PadN over the rest
		b[2] = byte(len(b) - 3)
	}
	return testExt{typ: typ, body: b}
}

// mkIPv6 returns an IPv6 packet from src to dst with the extension headers
// exts, then a transport header of protocol proto.
func mkIPv6(src, dst string, exts []testExt, proto uint8, payload []byte) []byte {
	b := make([]byte, 40)
	b[0] = 0x60
	b[7] = 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
	next := &b[6]
	for _, e := range exts {
		*next = e.typ
		at := len(b)
		b = append(b, 0)
		b = append(b, e.body...)
		next = &b[at]
	}
	*next = proto
	b = append(b, payload...)
	binary.BigEndian.PutUint16(b[4:6], uint16(len(b)-40))
	return b
}

// mkICMPv6 returns an ICMPv6 message from src to dst with a correct
// checksum: type, code, checksum, the 4-byte rest of header and body.
func mkICMPv6(src, dst string, typ, code uint8, rest uint32, body []byte) []byte {
	b := make([]byte, 8, 8+len(body))
	b[0], b[1] = typ, code
	binary.BigEndian.PutUint32(b[4:8], rest)
	b = append(b, body...)
	s, d := addr(netip.MustParseAddr(src).As16()), addr(netip.MustParseAddr(dst).As16())
	binary.BigEndian.PutUint16(b[2:4], icmpv6Checksum(&s, &d, b))
	return b
}

// mkNS returns a neighbour solicitation's ICMPv6 message for target, with
// the given options, its checksum right for src and dst.
func mkNS(src, dst, target string, opts []byte) []byte {
	t := netip.MustParseAddr(target).As16()
	return mkICMPv6(src, dst, ndNeighborSolicit, 0, 0, append(t[:], opts...))
}
