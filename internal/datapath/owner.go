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

// Owner is the ownership decision for one cluster.
type Owner struct {
	Hash hash.Config
}

// needsFragmentTable tells whether p is a fragment whose owner depends on
// fields that only its datagram's first fragment carries (ports, or the
// quoted flow of an ICMP error).
func (o *Owner) needsFragmentTable(p *ipv4Packet) bool {
	return p.fragment() && (o.Hash.Mode.UsesPorts() || p.proto == protoICMP)
}

// Node returns the node (1..total) that owns an IPv4 packet to the VIP. For
// a first fragment the answer holds for the whole datagram; later fragments
// that needsFragmentTable names are resolved through the fragment table.
//
// ICMP errors are owned by whoever owns the flow they quote. The quoted
// packet is one the cluster sent (VIP to client), so the flow is read back to
// front: the client is the quoted destination, its port the quoted
// destination port. Without this, "fragmentation needed" from a router would
// land on the node the router's address hashes to and path-MTU discovery
// would break for every other node's connections.
func (o *Owner) Node(p *ipv4Packet) int {
	if p.proto == protoICMP {
		if node := o.icmpErrorNode(p.l4); node != 0 {
			return node
		}
	}
	sport, dport := hash.RawPorts(p.proto, p.l4)
	return o.Hash.Node(p.src, sport, dport)
}

func (o *Owner) icmpErrorNode(icmp []byte) int {
	if len(icmp) < 8+ipv4MinHdrLen || !icmpIsError(icmp[0]) {
		return 0
	}
	inner := icmp[8:]
	if inner[0]>>4 != 4 {
		return 0
	}
	ihl := int(inner[0]&0x0f) * 4
	if ihl < ipv4MinHdrLen || ihl > len(inner) {
		return 0
	}
	client := binary.BigEndian.Uint32(inner[16:20])
	var serverPort, clientPort uint16
	if binary.BigEndian.Uint16(inner[6:8])&ipFragOffMask == 0 {
		serverPort, clientPort = hash.RawPorts(inner[9], inner[ihl:])
	}
	return o.Hash.Node(client, clientPort, serverPort)
}
