package hash

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
)

// MaxNodes is the largest cluster a Config may describe. The kernel target
// stops at 16 (CLUSTERIP_MAX_NODES); 64 is what fits a nodeset.NodeSet and
// a single classic BPF ownership test.
const MaxNodes = 64

// A Mode selects which packet fields feed the hash, as iptables'
// --hashmode option does.
//
// The zero Mode is invalid so that a forgotten field is caught by Validate.
// Mode values are not the kernel's CLUSTERIP_HASHMODE_* numbers, which
// start at 0; the kernel number is m-1. They do equal the number of 32-bit
// words hashed.
type Mode uint8

// Possible Mode values.
const (
	// SourceIP hashes the source address only.
	SourceIP Mode = iota + 1
	// SourceIPSourcePort adds the source port.
	SourceIPSourcePort
	// SourceIPSourcePortDestPort adds the source and destination ports.
	SourceIPSourcePortDestPort
)

// modeNames are iptables' spellings, so configuration can be copied from
// existing CLUSTERIP rules.
var modeNames = [...]string{
	SourceIP:                   "sourceip",
	SourceIPSourcePort:         "sourceip-sourceport",
	SourceIPSourcePortDestPort: "sourceip-sourceport-destport",
}

// ParseMode parses a Mode from its iptables name, such as
// "sourceip-sourceport". Names are case sensitive, as in iptables.
func ParseMode(s string) (Mode, error) {
	for m := SourceIP; m <= SourceIPSourcePortDestPort; m++ {
		if s == modeNames[m] {
			return m, nil
		}
	}

	return 0, fmt.Errorf("hash: unknown mode %q (valid: %s, %s, %s)", s,
		modeNames[SourceIP], modeNames[SourceIPSourcePort], modeNames[SourceIPSourcePortDestPort])
}

// String returns the iptables name of m, or "Mode(N)" when m is unknown.
func (m Mode) String() string {
	if !m.valid() {
		return fmt.Sprintf("Mode(%d)", uint8(m))
	}
	return modeNames[m]
}

// UsesPorts reports whether packets of m are hashed with port fields, and
// so whether the caller needs to look past the IP header at all.
func (m Mode) UsesPorts() bool {
	return m == SourceIPSourcePort || m == SourceIPSourcePortDestPort
}

func (m Mode) valid() bool {
	return m >= SourceIP && m <= SourceIPSourcePortDestPort
}

// IP protocol numbers PortsOffset knows.
const (
	protoTCP     = 6
	protoUDP     = 17
	protoDCCP    = 33
	protoESP     = 50
	protoAH      = 51
	protoSCTP    = 132
	protoUDPLite = 136
)

// PortsOffset returns where the 4 bytes hashed as "ports" start inside the
// L4 header for an IP protocol number, or -1 when the kernel hashes the
// protocol with both ports zero. It mirrors proto_ports_offset: for ESP and
// AH the "ports" are really the two halves of the SPI.
func PortsOffset(proto uint8) int {
	switch proto {
	case protoTCP, protoUDP, protoDCCP, protoESP, protoSCTP, protoUDPLite:
		return 0
	case protoAH:
		return 4
	default:
		return -1
	}
}

// RawPorts returns the raw port fields the kernel hashes for a packet of
// protocol proto whose L4 header (everything after the IP header) is l4.
// Like the kernel, it yields zeros for protocols without ports and for
// headers too short to hold them, rather than failing.
//
// The fields are read little-endian because that is how an x86-64 kernel
// loads them, whatever the byte order of the machine running this code.
func RawPorts(proto uint8, l4 []byte) (sportRaw, dportRaw uint16) {
	return Config{}.RawPorts(proto, l4)
}

// Config is one cluster's hashing parameters.
type Config struct {
	// Mode selects the hashed fields.
	Mode Mode
	// TotalNodes is the number of nodes in the cluster, 1..MaxNodes.
	TotalNodes uint32
	// Seed is iptables' --hash-init. All nodes must use the same value.
	Seed uint32
	// Compat is whose hash: the CLUSTERIP target's (the zero value) or
	// nftables' jhash expression's.
	Compat Compat
}

// Validate reports whether c describes a cluster Node can serve.
func (c Config) Validate() error {
	if !c.Mode.valid() {
		return fmt.Errorf("hash: invalid mode %s", c.Mode)
	}
	if c.TotalNodes < 1 || c.TotalNodes > MaxNodes {
		return fmt.Errorf("hash: total nodes %d out of range 1..%d", c.TotalNodes, MaxNodes)
	}
	if !c.Compat.valid() {
		return fmt.Errorf("hash: invalid compatibility %s", c.Compat)
	}

	return nil
}

// Hash returns the 32-bit hash clusterip_hashfn (with NFTables,
// nft_jhash_eval) computes before scaling it to a node number. Its
// arguments are those of Node. An invalid Mode hashes to 0, the value the
// kernel assigns just before it calls BUG().
func (c Config) Hash(src uint32, sportRaw, dportRaw uint16) uint32 {
	if c.Compat == NFTables {
		return c.hashNFT4(src, sportRaw, dportRaw)
	}
	switch c.Mode {
	case SourceIP:
		return Jhash1Word(src, c.Seed)
	case SourceIPSourcePort:
		return Jhash2Words(src, uint32(sportRaw), c.Seed)
	case SourceIPSourcePortDestPort:
		return Jhash3Words(src, uint32(sportRaw), uint32(dportRaw), c.Seed)
	default:
		return 0
	}
}

// Node returns the 1-based node owning a packet from src (the IPv4 source
// address as a host-order integer, ntohl(saddr)) with raw port fields
// sportRaw and dportRaw exactly as loaded little-endian from the wire; see
// RawPorts. Ports the Mode does not use are ignored.
//
// Node is meant for the per-packet path: it does not allocate and does not
// check c. Validate c once beforehand; an invalid c yields a node number
// that is meaningless, but never a panic.
func (c Config) Node(src uint32, sportRaw, dportRaw uint16) int {
	return int(ReciprocalScale(c.Hash(src, sportRaw, dportRaw), c.TotalNodes)) + 1
}

// NodeForPorts is Node (or Node6) for humans and tests: it takes an
// address and port numbers as written in configuration (80, not its wire
// form), and checks c. IPv6 needs the NFTables hash.
func (c Config) NodeForPorts(src netip.Addr, sport, dport uint16) (int, error) {
	if err := c.Validate(); err != nil {
		return 0, err
	}
	if src.Is6() && !src.Is4In6() {
		if c.Compat != NFTables {
			return 0, fmt.Errorf("hash: source address %s is IPv6, which only the nftables hash covers", src)
		}
		a := src.As16()
		return c.Node6(&a, bits.ReverseBytes16(sport), bits.ReverseBytes16(dport)), nil
	}
	if !src.Is4() {
		return 0, fmt.Errorf("hash: source address %s is not IPv4", src)
	}

	a := src.As4()
	return c.Node(
		binary.BigEndian.Uint32(a[:]),
		bits.ReverseBytes16(sport),
		bits.ReverseBytes16(dport),
	), nil
}

// Range returns the inclusive range [lo, hi] of hash values h for which
// ReciprocalScale(h, total)+1 == node. The ranges of nodes 1..total tile
// the whole 32-bit space in order, so ownership of a set of nodes can be
// tested with unsigned comparisons alone, as classic BPF requires.
//
// For total 0 or node outside 1..total, Range returns the empty range
// lo=1, hi=0, which matches no h.
func Range(total, node uint32) (lo, hi uint32) {
	if total == 0 || node < 1 || node > total {
		return 1, 0
	}

	// Node n owns h exactly when (n-1)*2^32 <= h*total < n*2^32, so the
	// bounds are ceilings of those quotients. For node == total, the upper
	// ceiling is 2^32, whose predecessor fits in 32 bits.
	t := uint64(total)
	lo64 := (uint64(node-1)<<32 + t - 1) / t
	hi64 := (uint64(node)<<32+t-1)/t - 1

	return uint32(lo64), uint32(hi64)
}
