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
	stateVersion   = 2
	stateLen       = 4 + 5*8 + 1
	flagDraining   = 1 << 0
	flagUnhealthy  = 1 << 1
	flagPublished  = 1 << 0
	metaHeaderLen  = 1 + 8 + 1 // version, start time, flags
	maxMetaLen     = 512       // memberlist's MetaMaxSize
	MaxClusters    = (maxMetaLen - metaHeaderLen) / stateLen
	errMetaVersion = "membership: metadata version %d, want %d"
)

// Encode packs the metadata: a version byte, the start time (Unix
// nanoseconds, big endian), a flags byte, then 45 bytes per cluster.
// memberlist carries at most 512 bytes, so at most MaxClusters clusters can
// take part in membership.
func (m Meta) Encode() ([]byte, error) {
	states := m.Clusters
	if len(states) > MaxClusters {
		return nil, fmt.Errorf("membership: %d clusters, at most %d fit in gossip metadata", len(states), MaxClusters)
	}
	b := make([]byte, metaHeaderLen, metaHeaderLen+len(states)*stateLen)
	b[0] = stateVersion
	binary.BigEndian.PutUint64(b[1:9], uint64(m.Started.UnixNano()))
	if m.Published {
		b[9] = flagPublished
	}
	for _, s := range states {
		if !s.VIP.Is4() {
			return nil, fmt.Errorf("membership: VIP %s is not IPv4", s.VIP)
		}
		v := s.VIP.As4()
		b = append(b, v[:]...)
		for _, set := range []nodeset.NodeSet{s.Home, s.Serving, s.Leaving, s.Kept, s.Excluded} {
			b = binary.BigEndian.AppendUint64(b, uint64(set))
		}
		var flags byte
		if s.Draining {
			flags |= flagDraining
		}
		if s.Unhealthy {
			flags |= flagUnhealthy
		}
		b = append(b, flags)
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
	if len(b)%stateLen != 0 {
		return Meta{}, errors.New("membership: metadata length is not a whole number of clusters")
	}
	m.Clusters = make([]ClusterState, 0, len(b)/stateLen)
	for ; len(b) > 0; b = b[stateLen:] {
		s := ClusterState{VIP: netip.AddrFrom4([4]byte(b[0:4]))}
		sets := []*nodeset.NodeSet{&s.Home, &s.Serving, &s.Leaving, &s.Kept, &s.Excluded}
		for i, p := range sets {
			*p = nodeset.NodeSet(binary.BigEndian.Uint64(b[4+8*i:]))
		}
		flags := b[stateLen-1]
		if flags&^(flagDraining|flagUnhealthy) != 0 {
			return Meta{}, fmt.Errorf("membership: unknown flags %#x (a newer version's metadata needs a new version byte)", flags)
		}
		s.Draining = flags&flagDraining != 0
		s.Unhealthy = flags&flagUnhealthy != 0
		m.Clusters = append(m.Clusters, s)
	}
	return m, nil
}
