package datapath

import (
	"bytes"
	"encoding/binary"
	"net"

	"github.com/mdlayher/ethernet"
)

const (
	arpLen       = 28
	arpOpRequest = 1
	arpOpReply   = 2
)

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// arpRequestForVIP returns the requester's hardware and protocol address if
// frame is an Ethernet/IPv4 ARP request for vip that this node should answer.
// Requests that claim the VIP as their sender are other nodes' announcements
// and get no answer; neither do requests from multicast senders.
func arpRequestForVIP(frame []byte, vip [4]byte) (sha net.HardwareAddr, spa [4]byte, ok bool) {
	if len(frame) < ethHdrLen+arpLen {
		return nil, spa, false
	}
	a := frame[ethHdrLen:]
	if binary.BigEndian.Uint16(a[0:2]) != 1 || binary.BigEndian.Uint16(a[2:4]) != etherTypeIPv4 ||
		a[4] != 6 || a[5] != 4 || binary.BigEndian.Uint16(a[6:8]) != arpOpRequest {
		return nil, spa, false
	}
	sha = net.HardwareAddr(a[8:14])
	copy(spa[:], a[14:18])
	if !bytes.Equal(a[24:28], vip[:]) || spa == vip || sha[0]&1 != 0 {
		return nil, spa, false
	}
	return sha, spa, true
}

// arpFrame builds an Ethernet/IPv4 ARP frame. The Ethernet source is always
// the NIC's own unicast MAC: bridges and switches drop frames with a multicast
// source. Only the ARP sender hardware address carries the cluster MAC, which
// is what makes clients send to it.
func arpFrame(ethDst, ethSrc net.HardwareAddr, op uint16, sha net.HardwareAddr, spa [4]byte, tha net.HardwareAddr, tpa [4]byte) ([]byte, error) {
	a := make([]byte, arpLen)
	binary.BigEndian.PutUint16(a[0:2], 1)
	binary.BigEndian.PutUint16(a[2:4], etherTypeIPv4)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:8], op)
	copy(a[8:14], sha)
	copy(a[14:18], spa[:])
	copy(a[18:24], tha)
	copy(a[24:28], tpa[:])
	f := ethernet.Frame{Destination: ethDst, Source: ethSrc, EtherType: ethernet.EtherTypeARP, Payload: a}
	return f.MarshalBinary()
}
