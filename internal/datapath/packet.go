package datapath

import "encoding/binary"

const (
	protoICMP   = 1
	protoICMPv6 = 58

	ipv4MinHdrLen = 20
	ipFlagMF      = 0x2000
	ipFragOffMask = 0x1fff

	ipv6HdrLen = 40
)

// addr is an IP address as the datapath keys flows and datagrams: IPv6 as
// it is, IPv4 mapped into IPv6 (::ffff:a.b.c.d), so that one key type
// serves both families and the two can never collide.
type addr [16]byte

// addr4 is the mapped form of the IPv4 address v (host order).
func addr4(v uint32) addr {
	a := addr{10: 0xff, 11: 0xff}
	binary.BigEndian.PutUint32(a[12:], v)
	return a
}

// v4 returns the IPv4 address of a mapped addr, in host order.
func (a *addr) v4() uint32 { return binary.BigEndian.Uint32(a[12:]) }

// is4 tells whether a is a mapped IPv4 address.
func (a *addr) is4() bool {
	return binary.BigEndian.Uint64(a[0:]) == 0 && binary.BigEndian.Uint32(a[8:]) == 0xffff
}

// ipPacket is the part of an IPv4 or IPv6 packet the ownership decision
// reads. It is filled in place on the reader's stack; l4 aliases the frame.
type ipPacket struct {
	src, dst addr
	v6       bool
	id       uint32 // fragment identification
	fragOff  uint16 // in 8-byte units
	more     bool   // more fragments follow
	fragLen  uint32 // bytes of the datagram's fragmentable part this packet carries
	proto    uint8  // the transport protocol, or for IPv6 the header that ended the walk
	l4       []byte // from the transport header to the end of the packet
}

func (p *ipPacket) fragment() bool { return p.more || p.fragOff != 0 }

// isICMP tells whether p is ICMP of its own family.
func (p *ipPacket) isICMP() bool {
	if p.v6 {
		return p.proto == protoICMPv6
	}
	return p.proto == protoICMP
}

// parseIPv4 validates an IPv4 header at the start of b and fills p. It
// rejects what the kernel's ip_rcv would reject on length and version; it
// does not verify the header checksum, which the local stack does when the
// packet reaches it through the TAP.
func parseIPv4(b []byte, p *ipPacket) bool {
	if len(b) < ipv4MinHdrLen || b[0]>>4 != 4 {
		return false
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if ihl < ipv4MinHdrLen || total < ihl || total > len(b) {
		return false
	}
	frag := binary.BigEndian.Uint16(b[6:8])
	p.src = addr4(binary.BigEndian.Uint32(b[12:16]))
	p.dst = addr4(binary.BigEndian.Uint32(b[16:20]))
	p.v6 = false
	p.id = uint32(binary.BigEndian.Uint16(b[4:6]))
	p.fragOff = frag & ipFragOffMask
	p.more = frag&ipFlagMF != 0
	p.proto = b[9]
	p.l4 = b[ihl:total]
	p.fragLen = uint32(len(p.l4))
	return true
}

// IPv6 extension headers (RFC 8200) and the other next-header values the
// walk stops at.
const (
	nextHopByHop  = 0
	nextRouting   = 43
	nextFragment  = 44
	nextAH        = 51
	nextNone      = 59
	nextDestOpts  = 60
	ipv6FragMore  = 0x0001
	ipv6FragShift = 3

	// maxExtHeaders bounds the walk: no real packet carries more than a
	// handful, and a chain of many empty ones is an attack on the walker.
	maxExtHeaders = 16
)

// parseIPv6 validates an IPv6 header at the start of b, walks its
// extension headers (see walkIPv6) and fills p. A zero payload length (a
// jumbogram) is refused: it cannot arrive on Ethernet.
func parseIPv6(b []byte, p *ipPacket) bool {
	if len(b) < ipv6HdrLen || b[0]>>4 != 6 {
		return false
	}
	plen := int(binary.BigEndian.Uint16(b[4:6]))
	end := ipv6HdrLen + plen
	if plen == 0 || end > len(b) {
		return false
	}
	c, ok := walkIPv6(b, end)
	if !ok {
		return false
	}
	copy(p.src[:], b[8:24])
	copy(p.dst[:], b[24:40])
	p.v6 = true
	p.id, p.fragOff, p.more = c.id, c.fragOff, c.more
	p.fragLen = 0
	if c.fragStart > 0 {
		p.fragLen = uint32(end - c.fragStart)
	}
	p.proto, p.l4 = c.proto, b[c.off:end]
	return true
}

// ipv6Chain is where the walk of an IPv6 packet's headers ended.
type ipv6Chain struct {
	proto     uint8 // the header that ended the walk
	off       int   // where it starts
	id        uint32
	fragOff   uint16 // in 8-byte units
	more      bool
	fragStart int // where the fragmentable part starts; 0 when not a fragment
}

// walkIPv6 walks the extension headers of the IPv6 packet b, which ends
// at end: hop-by-hop (only first, as the kernel wants it), routing,
// destination options and fragment headers, up to the first other header.
// AH ends the walk too: nftables' "th" reads AH's own first bytes
// (nft_set_pktinfo_ipv6 stops at AH), and the nftables hash is the only
// one IPv6 has. A later fragment ends it at the fragment header, since
// what follows is the datagram's middle; an atomic fragment (RFC 6946) is
// walked over as the whole packet it is.
//
// A chain that runs past end, a hop-by-hop header out of place, a second
// fragment header or more than maxExtHeaders headers fail the walk.
func walkIPv6(b []byte, end int) (c ipv6Chain, ok bool) {
	next, off := b[6], ipv6HdrLen
	fragmented := false
	for n := 0; n <= maxExtHeaders; n++ {
		switch next {
		case nextHopByHop, nextRouting, nextDestOpts:
			if next == nextHopByHop && n != 0 || off+2 > end {
				return c, false
			}
			hl := (int(b[off+1]) + 1) * 8
			if off+hl > end {
				return c, false
			}
			next, off = b[off], off+hl
			continue
		case nextFragment:
			if fragmented || off+8 > end {
				return c, false
			}
			fragmented = true
			fo := binary.BigEndian.Uint16(b[off+2:])
			id := binary.BigEndian.Uint32(b[off+4:])
			next, off = b[off], off+8
			if fo>>ipv6FragShift == 0 && fo&ipv6FragMore == 0 {
				continue
			}
			c.id, c.fragOff, c.more, c.fragStart = id, fo>>ipv6FragShift, fo&ipv6FragMore != 0, off
			if c.fragOff != 0 {
				c.proto, c.off = next, off
				return c, true
			}
			continue
		}
		c.proto, c.off = next, off
		if next == nextNone {
			c.off = end
		}
		return c, true
	}
	return c, false
}

// quotedTransport finds the transport header of the packet an ICMPv6
// error quotes (cut to what fits in the error). ok is false when the quote
// ends before it, or the quoted packet is a later fragment.
func quotedTransport(inner []byte) (proto uint8, l4 []byte, ok bool) {
	c, ok := walkIPv6(inner, len(inner))
	if !ok {
		return inner[6], nil, false
	}
	if c.fragOff != 0 {
		return c.proto, nil, false
	}
	return c.proto, inner[c.off:], true
}

const (
	protoTCP     = 6
	protoUDP     = 17
	protoUDPLite = 136

	// protoFloodProbe carries the flood check's probes (flood.go): the
	// protocol number RFC 3692 leaves for experiments, which no stack
	// delivers to anything.
	protoFloodProbe = 253

	tcpFlagFIN = 0x01
	tcpFlagSYN = 0x02
	tcpFlagRST = 0x04
	tcpFlagACK = 0x10
)

// tcpFlags returns the flags of a TCP segment, or 0 when l4 is too short.
func tcpFlags(l4 []byte) uint8 {
	if len(l4) < 14 {
		return 0
	}
	return l4[13]
}
