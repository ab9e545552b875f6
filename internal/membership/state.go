package membership

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/clusterip/clusterip/nodeset"
)

// ClusterState is what one node says about one cluster.
type ClusterState struct {
	VIP       netip.Addr
	Home      nodeset.NodeSet // numbers this node serves when healthy (its --local-node)
	Serving   nodeset.NodeSet // numbers it accepts new connections for now
	Leaving   nodeset.NodeSet // subset of Serving being handed to another node
	Kept      nodeset.NodeSet // numbers it no longer serves but still has connections for
	Excluded  nodeset.NodeSet // numbers it must not be given (an operator's -N)
	Draining  bool
	Unhealthy bool
	// NotFlooded says that frames sent to the cluster MAC do not reach the
	// node (its flood check); it changes nothing in the assignment.
	NotFlooded bool
}

// Available tells whether the node should be given numbers.
func (c ClusterState) Available() bool { return !c.Draining && !c.Unhealthy }

// Meta is what a node gossips about itself in memberlist's node metadata.
type Meta struct {
	// Started is when the node's membership started. Of two nodes that
	// claim one name, the one that started first keeps it.
	Started time.Time
	// Published is false until the daemon has said what it serves: until
	// then nobody can know, and the node is Pending.
	Published bool
	Clusters  []ClusterState
}

const (
	stateVersion   = 4
	stateSetsLen   = 5 * 8
	flagDraining   = 1 << 0
	flagUnhealthy  = 1 << 1
	flagIPv6       = 1 << 2 // the VIP is 16 bytes, not 4
	flagNotFlooded = 1 << 3
	flagPublished  = 1 << 0
	metaHeaderLen  = 1 + 8 + 1 // version, start time, flags
	maxMetaLen     = 512       // memberlist's MetaMaxSize
	errMetaVersion = "membership: metadata version %d, want %d"

	// MaxClusters is how many IPv4 clusters fit in the metadata; an IPv6
	// one takes 12 bytes more (see MetaFits).
	MaxClusters = (maxMetaLen - metaHeaderLen) / stateLen4
	stateLen4   = 1 + 4 + stateSetsLen
	stateLen6   = 1 + 16 + stateSetsLen
)

func stateLen(vip netip.Addr) int {
	if vip.Is6() {
		return stateLen6
	}
	return stateLen4
}

// MetaFits tells whether clusters with these VIPs fit in the metadata.
func MetaFits(vips []netip.Addr) bool {
	n := metaHeaderLen
	for _, v := range vips {
		n += stateLen(v)
	}
	return n <= maxMetaLen
}

// Encode packs the metadata: a version byte, the start time (Unix
// nanoseconds, big endian), a flags byte, then per cluster a flags byte,
// the VIP (4 bytes, or 16 with flagIPv6) and its five node sets (8 bytes
// each). memberlist carries at most 512 bytes (see MetaFits).
func (m Meta) Encode() ([]byte, error) {
	states := m.Clusters
	b := make([]byte, metaHeaderLen, maxMetaLen)
	b[0] = stateVersion
	binary.BigEndian.PutUint64(b[1:9], uint64(m.Started.UnixNano()))
	if m.Published {
		b[9] = flagPublished
	}
	for _, s := range states {
		if !s.VIP.IsValid() || s.VIP.Is4In6() {
			return nil, fmt.Errorf("membership: VIP %s is neither IPv4 nor IPv6", s.VIP)
		}
		var flags byte
		if s.Draining {
			flags |= flagDraining
		}
		if s.Unhealthy {
			flags |= flagUnhealthy
		}
		if s.VIP.Is6() {
			flags |= flagIPv6
		}
		if s.NotFlooded {
			flags |= flagNotFlooded
		}
		b = append(b, flags)
		b = append(b, s.VIP.AsSlice()...)
		for _, set := range []nodeset.NodeSet{s.Home, s.Serving, s.Leaving, s.Kept, s.Excluded} {
			b = binary.BigEndian.AppendUint64(b, uint64(set))
		}
	}
	if len(b) > maxMetaLen {
		return nil, fmt.Errorf("membership: %d clusters take %d bytes, more than the %d gossip metadata holds", len(states), len(b), maxMetaLen)
	}
	return b, nil
}

// DecodeMeta is the inverse of Encode. Metadata from the wire is untrusted:
// anything malformed is an error, never a panic. Empty metadata is a node
// that has said nothing yet.
func DecodeMeta(b []byte) (Meta, error) {
	if len(b) == 0 {
		return Meta{}, nil
	}
	if b[0] != stateVersion {
		return Meta{}, fmt.Errorf(errMetaVersion, b[0], stateVersion)
	}
	if len(b) < metaHeaderLen {
		return Meta{}, errors.New("membership: metadata shorter than its header")
	}
	m := Meta{Started: time.Unix(0, int64(binary.BigEndian.Uint64(b[1:9])))}
	if b[9]&^flagPublished != 0 {
		return Meta{}, fmt.Errorf("membership: unknown metadata flags %#x (a newer version's metadata needs a new version byte)", b[9])
	}
	m.Published = b[9]&flagPublished != 0
	b = b[metaHeaderLen:]
	m.Clusters = make([]ClusterState, 0, len(b)/stateLen4)
	for len(b) > 0 {
		flags := b[0]
		if flags&^(flagDraining|flagUnhealthy|flagIPv6|flagNotFlooded) != 0 {
			return Meta{}, fmt.Errorf("membership: unknown flags %#x (a newer version's metadata needs a new version byte)", flags)
		}
		alen := 4
		if flags&flagIPv6 != 0 {
			alen = 16
		}
		if len(b) < 1+alen+stateSetsLen {
			return Meta{}, errors.New("membership: metadata length is not a whole number of clusters")
		}
		vip, _ := netip.AddrFromSlice(b[1 : 1+alen])
		if vip.Is4In6() {
			return Meta{}, errors.New("membership: an IPv4-mapped VIP in metadata")
		}
		s := ClusterState{VIP: vip, Draining: flags&flagDraining != 0, Unhealthy: flags&flagUnhealthy != 0, NotFlooded: flags&flagNotFlooded != 0}
		sets := []*nodeset.NodeSet{&s.Home, &s.Serving, &s.Leaving, &s.Kept, &s.Excluded}
		for i, p := range sets {
			*p = nodeset.NodeSet(binary.BigEndian.Uint64(b[1+alen+8*i:]))
		}
		m.Clusters = append(m.Clusters, s)
		b = b[1+alen+stateSetsLen:]
	}
	return m, nil
}
