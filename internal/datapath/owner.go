package datapath

import (
	"encoding/binary"

	"github.com/clusterip/clusterip/hash"
)

// ICMP types that carry the header of the packet they complain about.
func icmpIsError(typ uint8) bool {
	switch typ {
	case 3, 4, 5, 11, 12: // unreachable, source quench, redirect, time exceeded, parameter problem
		return true
	}
	return false
}

// ICMPv6 errors (RFC 4443): destination unreachable, packet too big, time
// exceeded, parameter problem. Every one quotes the packet it is about.
func icmpv6IsError(typ uint8) bool { return typ >= 1 && typ <= 4 }

// Owner is the ownership decision for one cluster.
type Owner struct {
	Hash hash.Config
}

// needsFragmentTable tells whether p is a fragment whose owner depends on
// fields that only its datagram's first fragment carries (ports, or the
// quoted flow of an ICMP error).
func (o *Owner) needsFragmentTable(p *ipPacket) bool {
	return p.fragment() && (o.Hash.Mode.UsesPorts() || p.isICMP())
}

// viaFragmentTable tells whether p is judged through the fragment table.
// With flow tracking every fragment is: a later fragment's "ports" are
// payload, and must not be judged as a flow.
func (d *Datapath) viaFragmentTable(p *ipPacket) bool {
	return d.owner.needsFragmentTable(p) || (p.fragment() && d.policy.Load().Track)
}

// packetFlow is what the ownership decision needs to know about a packet:
// the number it hashes to and the connection it belongs to.
type packetFlow struct {
	node   int
	key    flowKey
	opens  bool // may start a connection: a TCP SYN, or any packet of a connectionless protocol
	syn    bool // a TCP SYN without ACK
	closes bool // a TCP FIN or RST
}

// Node returns the node (1..total) that owns a packet to the VIP. For a
// first fragment the answer holds for the whole datagram; later fragments
// that needsFragmentTable names are resolved through the fragment table.
func (o *Owner) Node(p *ipPacket) int { return o.flow(p).node }

// node hashes a packet from client src with raw ports sport and dport.
func (o *Owner) node(src *addr, v6 bool, sport, dport uint16) int {
	if v6 {
		return o.Hash.Node6((*[16]byte)(src), sport, dport)
	}
	return o.Hash.Node(src.v4(), sport, dport)
}

// flow hashes a packet and names its connection.
//
// ICMP errors are owned by whoever owns the flow they quote. The quoted
// packet is one the cluster sent (VIP to client), so the flow is read back to
// front: the client is the quoted destination, its port the quoted
// destination port. Without this, "fragmentation needed" from a router would
// land on the node the router's address hashes to and path-MTU discovery
// would break for every other node's connections.
func (o *Owner) flow(p *ipPacket) packetFlow {
	switch {
	case p.v6 && p.proto == protoICMPv6:
		if f, ok := o.icmpv6ErrorFlow(p.l4); ok {
			return f
		}
	case !p.v6 && p.proto == protoICMP:
		if f, ok := o.icmpErrorFlow(p.l4); ok {
			return f
		}
	}
	sport, dport := o.Hash.RawPorts(p.proto, p.l4)
	f := packetFlow{
		node:  o.node(&p.src, p.v6, sport, dport),
		key:   flowKey{src: p.src, sport: sport, dport: dport, proto: p.proto},
		opens: true,
	}
	if p.proto == protoTCP {
		flags := tcpFlags(p.l4)
		f.syn = flags&(tcpFlagSYN|tcpFlagACK) == tcpFlagSYN
		f.opens = f.syn
		f.closes = flags&(tcpFlagFIN|tcpFlagRST) != 0
	}
	return f
}

func (o *Owner) icmpErrorFlow(icmp []byte) (packetFlow, bool) {
	if len(icmp) < 8+ipv4MinHdrLen || !icmpIsError(icmp[0]) {
		return packetFlow{}, false
	}
	inner := icmp[8:]
	if inner[0]>>4 != 4 {
		return packetFlow{}, false
	}
	ihl := int(inner[0]&0x0f) * 4
	if ihl < ipv4MinHdrLen || ihl > len(inner) {
		return packetFlow{}, false
	}
	client := addr4(binary.BigEndian.Uint32(inner[16:20]))
	proto := inner[9]
	var serverPort, clientPort uint16
	if binary.BigEndian.Uint16(inner[6:8])&ipFragOffMask == 0 {
		serverPort, clientPort = o.Hash.RawPorts(proto, inner[ihl:])
	}
	return packetFlow{
		node: o.node(&client, false, clientPort, serverPort),
		key:  flowKey{src: client, sport: clientPort, dport: serverPort, proto: proto},
	}, true
}

// icmpv6ErrorFlow is icmpErrorFlow for ICMPv6: the quoted packet's
// extension headers are walked as far as the quote goes (routers cut it
// to fit 1280 bytes); if the walk cannot reach the transport header, or
// the quote is a later fragment, the ports hash as zeros.
func (o *Owner) icmpv6ErrorFlow(icmp []byte) (packetFlow, bool) {
	if len(icmp) < 8+ipv6HdrLen || !icmpv6IsError(icmp[0]) {
		return packetFlow{}, false
	}
	inner := icmp[8:]
	if inner[0]>>4 != 6 {
		return packetFlow{}, false
	}
	var client addr
	copy(client[:], inner[24:40])
	var serverPort, clientPort uint16
	proto, l4, ok := quotedTransport(inner)
	if ok {
		serverPort, clientPort = o.Hash.RawPorts(proto, l4)
	}
	return packetFlow{
		node: o.node(&client, true, clientPort, serverPort),
		key:  flowKey{src: client, sport: clientPort, dport: serverPort, proto: proto},
	}, true
}

// accept is the ownership decision: whether this node answers a packet (or
// the datagram whose first fragment it is). Without flow tracking it is the
// kernel target's rule, "is the packet's number one of mine". With tracking
// (automatic failover), a number can be moving between nodes, and the rule
// keeps each connection on the node that has it:
//
//  1. a connection this node serves stays here, whatever its number (a SYN
//     on a connection past its handshake is a new connection on a reused
//     port, and is judged afresh);
//  2. a connection another node had while its number moved here stays
//     there while that node is alive and holds the number's flows, unless
//     it never got past its SYN: a retransmitted SYN means nobody answered;
//  3. while a number is about to move here, its connections are noted as
//     the other node's and not answered; a packet that opens a connection
//     (a SYN, a connectionless flow's first packet) is held instead, until
//     the other node's release says whether it answered it;
//  4. otherwise a packet is answered if its number is served here, except
//     one that cannot open a connection while another live node may hold it:
//     nobody resets a connection it does not own.
//
// A dead node holds nothing, so its connections reach rule 4 and are reset
// by the new owner's stack at their next packet.
//
// now is the time the packet's batch was read: one clock read per batch.
// frame is the packet as read (virtio-net header first), kept if held.
func (d *Datapath) accept(p *ipPacket, frame []byte, now int64) verdict {
	f := d.owner.flow(p)
	if pol := d.policy.Load(); !pol.Track {
		if pol.Serve.Contains(f.node) {
			return verdictAnswer
		}
		return verdictDrop
	}
	return d.flows.judge(f, &d.policy, &d.servingSince, frame, now)
}
