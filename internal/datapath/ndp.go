package datapath

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// Neighbour discovery (RFC 4861) for an IPv6 VIP: what ARP is to IPv4. The
// daemon answers neighbour solicitations for the VIP with the cluster MAC,
// every node alike, as every node answers ARP.
const (
	etherTypeIPv6 = 0x86dd

	ndNeighborSolicit = 135
	ndNeighborAdvert  = 136
	ndOptSourceLL     = 1
	ndOptTargetLL     = 2

	ndHopLimit = 255 // RFC 4861 7.1.1: anything else came from off-link
	ndMsgLen   = 24  // type, code, checksum, reserved/flags, target

	naFlagSolicited = 0x40
	naFlagOverride  = 0x20
)

var (
	allNodes    = netip.MustParseAddr("ff02::1")
	allNodesMAC = net.HardwareAddr{0x33, 0x33, 0x00, 0x00, 0x00, 0x01}
)

// SolicitedNode returns the solicited-node multicast group of vip
// (ff02::1:ffXX:XXXX, RFC 4291 2.7.1) and the Ethernet group it maps to:
// where neighbours send their solicitations for vip.
func SolicitedNode(vip netip.Addr) (netip.Addr, net.HardwareAddr) {
	v := vip.As16()
	g := [16]byte{0: 0xff, 1: 0x02, 11: 0x01, 12: 0xff, 13: v[13], 14: v[14], 15: v[15]}
	return netip.AddrFrom16(g), net.HardwareAddr{0x33, 0x33, 0xff, v[13], v[14], v[15]}
}

// solicitation is a neighbour solicitation for the VIP that deserves an
// answer: where the advertisement goes, and whether it answers a
// solicitation (a neighbour resolving the VIP) or a duplicate address
// detection probe (the sender has no address yet).
type solicitation struct {
	ethDst    net.HardwareAddr
	ipDst     addr
	solicited bool
}

// neighborSolicitForVIP validates frame, whose IPv6 packet p is an ICMPv6
// neighbour solicitation, as RFC 4861 7.1.1 asks, and reports whether it
// asks for vip. Anything invalid (hop limit below 255, a bad checksum or
// code, a short message, an option of length zero or past the end, a
// source link-layer option from the unspecified address, a multicast
// target or sender) is malformed; a valid solicitation for another address
// is not for us.
func neighborSolicitForVIP(frame []byte, p *ipPacket, vip addr) (s solicitation, forVIP, valid bool) {
	ip := frame[ethHdrLen:]
	msg := p.l4
	if ip[7] != ndHopLimit || p.fragment() || len(msg) < ndMsgLen || msg[1] != 0 ||
		icmpv6Checksum(&p.src, &p.dst, msg) != 0 {
		return s, false, false
	}
	var target addr
	copy(target[:], msg[8:24])
	if target[0] == 0xff || p.src[0] == 0xff {
		return s, false, false
	}
	unspecified := p.src == addr{}
	var sll net.HardwareAddr
	for opts := msg[ndMsgLen:]; len(opts) > 0; {
		if len(opts) < 2 || opts[1] == 0 || int(opts[1])*8 > len(opts) {
			return s, false, false
		}
		n := int(opts[1]) * 8
		if opts[0] == ndOptSourceLL {
			if unspecified || n != 8 {
				return s, false, false
			}
			sll = net.HardwareAddr(opts[2:8])
		}
		opts = opts[n:]
	}
	if unspecified {
		// Duplicate address detection goes to the solicited-node group.
		if p.dst[0] != 0xff || p.dst[1] != 0x02 || p.dst[11] != 0x01 || p.dst[12] != 0xff {
			return s, false, false
		}
	}
	if target != vip {
		return s, false, true
	}
	s.ethDst = net.HardwareAddr(frame[6:12])
	if sll != nil {
		s.ethDst = sll
	}
	if s.ethDst[0]&1 != 0 {
		return s, false, false
	}
	s.ipDst, s.solicited = p.src, true
	if unspecified {
		// Someone probes for the VIP before taking it: tell everyone.
		s.ethDst, s.ipDst, s.solicited = allNodesMAC, allNodes.As16(), false
	}
	return s, true, true
}

// neighborAdvertFrame builds a neighbour advertisement for target, sent
// from target itself: the target link-layer address option carries mac
// (the cluster MAC), while the Ethernet source is the NIC's own (ethSrc),
// since switches drop frames with a multicast source. The override flag
// is set, so neighbours replace what they cached; solicited as asked.
func neighborAdvertFrame(ethDst, ethSrc net.HardwareAddr, target, dst addr, mac net.HardwareAddr, solicited bool) []byte {
	const msgLen = ndMsgLen + 8
	f := make([]byte, ethHdrLen+ipv6HdrLen+msgLen)
	copy(f[0:6], ethDst)
	copy(f[6:12], ethSrc)
	binary.BigEndian.PutUint16(f[12:14], etherTypeIPv6)
	ip := f[ethHdrLen:]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:6], msgLen)
	ip[6], ip[7] = protoICMPv6, ndHopLimit
	copy(ip[8:24], target[:])
	copy(ip[24:40], dst[:])
	msg := ip[ipv6HdrLen:]
	msg[0] = ndNeighborAdvert
	msg[4] = naFlagOverride
	if solicited {
		msg[4] |= naFlagSolicited
	}
	copy(msg[8:24], target[:])
	msg[24], msg[25] = ndOptTargetLL, 1
	copy(msg[26:32], mac)
	binary.BigEndian.PutUint16(msg[2:4], icmpv6Checksum(&target, &dst, msg))
	return f
}

// unsolicitedAdvertFrame is the advertisement a node sends to all nodes
// when it starts serving an IPv6 VIP: neighbours that cached another MAC
// for it move to the cluster MAC.
func unsolicitedAdvertFrame(ethSrc net.HardwareAddr, vip addr, mac net.HardwareAddr) []byte {
	return neighborAdvertFrame(allNodesMAC, ethSrc, vip, allNodes.As16(), mac, false)
}

// icmpv6Checksum is the ICMPv6 checksum of msg between src and dst (RFC
// 4443 2.3): over the pseudo-header and msg. Over a message whose checksum
// field is filled in it is 0 when the checksum is right; over one whose
// field is zero it is the value to put there.
func icmpv6Checksum(src, dst *addr, msg []byte) uint16 {
	var sum uint64
	add := func(b []byte) {
		for len(b) >= 2 {
			sum += uint64(binary.BigEndian.Uint16(b))
			b = b[2:]
		}
		if len(b) == 1 {
			sum += uint64(b[0]) << 8
		}
	}
	add(src[:])
	add(dst[:])
	sum += uint64(len(msg)) + protoICMPv6
	add(msg)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// handleNS answers a neighbour solicitation for the VIP; frame is the
// Ethernet frame of p.
func (d *Datapath) handleNS(w *worker, frame []byte, p *ipPacket) {
	s, forVIP, valid := neighborSolicitForVIP(frame, p, d.vip)
	if !valid {
		d.stats.malformed.Add(1)
		return
	}
	if !forVIP {
		return
	}
	reply := neighborAdvertFrame(s.ethDst, w.g.ifi.HardwareAddr, d.vip, s.ipDst, d.cfg.ClusterMAC, s.solicited)
	if err := w.send(reply, s.ethDst); err != nil {
		d.log.Warn("neighbour advertisement", "to", s.ethDst.String(), "err", err)
		return
	}
	d.stats.ndReplies.Add(1)
}
