package datapath

import "encoding/binary"

const (
	protoICMP = 1

	ipv4MinHdrLen = 20
	ipFlagMF      = 0x2000
	ipFragOffMask = 0x1fff
)

// ipv4Packet is the part of an IPv4 header the ownership decision reads.
// It is filled in place on the reader's stack; l4 aliases the frame.
type ipv4Packet struct {
	src, dst uint32
	id       uint16
	fragOff  uint16 // in 8-byte units
	more     bool   // more fragments follow
	proto    uint8
	l4       []byte // payload after the header, cut to the IP total length
}

func (p *ipv4Packet) fragment() bool { return p.more || p.fragOff != 0 }

// parseIPv4 validates an IPv4 header at the start of b and fills p. It
// rejects what the kernel's ip_rcv would reject on length and version; it
// does not verify the header checksum, which the local stack does when the
// packet reaches it through the TAP.
func parseIPv4(b []byte, p *ipv4Packet) bool {
	if len(b) < ipv4MinHdrLen || b[0]>>4 != 4 {
		return false
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if ihl < ipv4MinHdrLen || total < ihl || total > len(b) {
		return false
	}
	frag := binary.BigEndian.Uint16(b[6:8])
	p.src = binary.BigEndian.Uint32(b[12:16])
	p.dst = binary.BigEndian.Uint32(b[16:20])
	p.id = binary.BigEndian.Uint16(b[4:6])
	p.fragOff = frag & ipFragOffMask
	p.more = frag&ipFlagMF != 0
	p.proto = b[9]
	p.l4 = b[ihl:total]
	return true
}

const (
	protoTCP     = 6
	protoUDP     = 17
	protoUDPLite = 136

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
