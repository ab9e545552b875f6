package membership

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

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

const (
	stateVersion   = 1
	stateLen       = 4 + 5*8 + 1
	flagDraining   = 1 << 0
	flagUnhealthy  = 1 << 1
	metaHeaderLen  = 1
	maxMetaLen     = 512 // memberlist's MetaMaxSize
	MaxClusters    = (maxMetaLen - metaHeaderLen) / stateLen
	errMetaVersion = "membership: metadata version %d, want %d"
)

// EncodeMeta packs a node's cluster states into memberlist metadata:
// a version byte, then 45 bytes per cluster. memberlist carries at most 512
// bytes, so at most MaxClusters clusters can take part in membership.
func EncodeMeta(states []ClusterState) ([]byte, error) {
	if len(states) > MaxClusters {
		return nil, fmt.Errorf("membership: %d clusters, at most %d fit in gossip metadata", len(states), MaxClusters)
	}
	b := make([]byte, metaHeaderLen, metaHeaderLen+len(states)*stateLen)
	b[0] = stateVersion
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

// DecodeMeta is the inverse of EncodeMeta. Metadata from the wire is
// untrusted: anything malformed is an error, never a panic.
func DecodeMeta(b []byte) ([]ClusterState, error) {
	if len(b) == 0 {
		return nil, nil // a node that has not published yet
	}
	if b[0] != stateVersion {
		return nil, fmt.Errorf(errMetaVersion, b[0], stateVersion)
	}
	b = b[metaHeaderLen:]
	if len(b)%stateLen != 0 {
		return nil, errors.New("membership: metadata length is not a whole number of clusters")
	}
	out := make([]ClusterState, 0, len(b)/stateLen)
	for ; len(b) > 0; b = b[stateLen:] {
		s := ClusterState{VIP: netip.AddrFrom4([4]byte(b[0:4]))}
		sets := []*nodeset.NodeSet{&s.Home, &s.Serving, &s.Leaving, &s.Kept, &s.Excluded}
		for i, p := range sets {
			*p = nodeset.NodeSet(binary.BigEndian.Uint64(b[4+8*i:]))
		}
		flags := b[stateLen-1]
		if flags&^(flagDraining|flagUnhealthy) != 0 {
			return nil, fmt.Errorf("membership: unknown flags %#x (a newer version's metadata needs a new version byte)", flags)
		}
		s.Draining = flags&flagDraining != 0
		s.Unhealthy = flags&flagUnhealthy != 0
		out = append(out, s)
	}
	return out, nil
}
