package datapath

import (
	"fmt"
	"net"
	"net/netip"
)

// MACMode is how the cluster MAC reaches every node through the switch.
type MACMode uint8

const (
	// MACMulticast is the kernel target's way: a multicast cluster MAC,
	// flooded by switches that do not snoop (or have no querier).
	MACMulticast MACMode = iota
	// MACUnicast is a unicast cluster MAC that no frame ever carries as
	// its source: switches never learn it and flood it as unknown
	// unicast, through any IGMP or MLD snooping.
	MACUnicast
	// MACIGMP is a multicast cluster MAC mapped from an administratively
	// scoped group that every node joins (IGMP or MLD), for switches that
	// forward multicast by MAC once they have snooped the joins.
	MACIGMP
)

var macModeNames = [...]string{MACMulticast: "multicast", MACUnicast: "unicast", MACIGMP: "igmp"}

func (m MACMode) String() string {
	if int(m) < len(macModeNames) {
		return macModeNames[m]
	}
	return fmt.Sprintf("MACMode(%d)", m)
}

// ParseMACMode parses the names String returns.
func ParseMACMode(s string) (MACMode, error) {
	for m, name := range macModeNames {
		if s == name {
			return MACMode(m), nil
		}
	}
	return 0, fmt.Errorf("%q: want multicast, unicast or igmp", s)
}

// IGMPGroup is the group an igmp-mode node joins for the cluster MAC mac:
// 239.255.X.Y for 01:00:5e:7f:X:Y (IPv4), ff15::AABB:CCDD for
// 33:33:AA:BB:CC:DD (IPv6; transient, site-local scope). It is false for a
// MAC that is not such a mapping.
func IGMPGroup(mac net.HardwareAddr, v6 bool) (netip.Addr, bool) {
	if len(mac) != 6 {
		return netip.Addr{}, false
	}
	if v6 {
		if mac[0] != 0x33 || mac[1] != 0x33 {
			return netip.Addr{}, false
		}
		return netip.AddrFrom16([16]byte{0: 0xff, 1: 0x15, 12: mac[2], 13: mac[3], 14: mac[4], 15: mac[5]}), true
	}
	if mac[0] != 0x01 || mac[1] != 0x00 || mac[2] != 0x5e || mac[3] != 0x7f {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte{239, 255, mac[4], mac[5]}), true
}
