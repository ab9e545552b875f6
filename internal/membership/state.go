package membership

import (
	"bytes"
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

// A cluster's flags byte in a state message.
const (
	flagDraining   = 1 << 0
	flagUnhealthy  = 1 << 1
	flagIPv6       = 1 << 2 // the VIP is 16 bytes, not 4
	flagNotFlooded = 1 << 3
)

// Meta is what a node gossips about itself in memberlist's node metadata:
// who it is and a summary of its cluster states, not the states themselves,
// which travel in messages of their own (see StateMessage): memberlist
// carries at most 512 bytes of metadata, 11 clusters' worth.
type Meta struct {
	// Started is when the node's membership started. Of two nodes that
	// claim one name, the one that started first keeps it; states are
	// versioned within one start.
	Started time.Time
	// Published is false until the daemon has said what it serves: until
	// then nobody can know, and the node is Pending.
	Published bool
	// Gen is the version of the node's newest state change, Count the
	// number of clusters it has and Digest a sum over their VIPs and
	// versions (see digestOf): a node whose view of another has the same
	// three holds every state that node has.
	Gen    uint64
	Count  uint32
	Digest uint64
}

const (
	metaVersion    = 5
	metaLen        = 1 + 8 + 1 + 8 + 4 + 8 // version, start time, flags, gen, count, digest
	flagPublished  = 1 << 0
	errMetaVersion = "membership: metadata version %d, want %d"
)

// Encode packs the metadata: a version byte, the start time (Unix
// nanoseconds), a flags byte, the generation, the count and the digest, all
// big endian: 30 bytes, whatever the number of clusters.
func (m Meta) Encode() []byte {
	b := make([]byte, 0, metaLen)
	b = append(b, metaVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(m.Started.UnixNano()))
	var flags byte
	if m.Published {
		flags |= flagPublished
	}
	b = append(b, flags)
	b = binary.BigEndian.AppendUint64(b, m.Gen)
	b = binary.BigEndian.AppendUint32(b, m.Count)
	return binary.BigEndian.AppendUint64(b, m.Digest)
}

// DecodeMeta is the inverse of Encode. Metadata from the wire is untrusted:
// anything malformed is an error, never a panic. Empty metadata is a node
// that has said nothing yet.
func DecodeMeta(b []byte) (Meta, error) {
	if len(b) == 0 {
		return Meta{}, nil
	}
	if b[0] != metaVersion {
		return Meta{}, fmt.Errorf(errMetaVersion, b[0], metaVersion)
	}
	if len(b) != metaLen {
		return Meta{}, fmt.Errorf("membership: metadata of %d bytes, want %d", len(b), metaLen)
	}
	if b[9]&^flagPublished != 0 {
		return Meta{}, fmt.Errorf("membership: unknown metadata flags %#x (a newer version's metadata needs a new version byte)", b[9])
	}
	return Meta{
		Started:   time.Unix(0, int64(binary.BigEndian.Uint64(b[1:9]))),
		Published: b[9]&flagPublished != 0,
		Gen:       binary.BigEndian.Uint64(b[10:18]),
		Count:     binary.BigEndian.Uint32(b[18:22]),
		Digest:    binary.BigEndian.Uint64(b[22:30]),
	}, nil
}

// Entry is one cluster's state as a node published it, with the version
// (of the node's counter, within one start) at which it last changed. A
// Gone entry says the node no longer has the cluster.
type Entry struct {
	Version uint64
	Gone    bool
	State   ClusterState
}

// digestTerm is an entry's part of a digest: a digest is the sum of its
// clusters' terms, so it is the same in whatever order the states came.
func digestTerm(vip netip.Addr, version uint64) uint64 {
	a := vip.As16()
	x := binary.BigEndian.Uint64(a[:8])*0x9e3779b97f4a7c15 ^ binary.BigEndian.Uint64(a[8:])
	return mix64(x ^ mix64(version+0x632be59bd9b4e019))
}

// StateMessage carries cluster states of one node (one start of it) from
// node to node: the changed ones, sent to every member the moment they
// change (a delta), or all of them (Full), in answer to a member that found
// its view behind the node's metadata and in memberlist's push/pull.
type StateMessage struct {
	Full    bool
	Node    string
	Started time.Time
	// Gen is the node's newest version when the message was made: a full
	// message holds every cluster the node had then.
	Gen     uint64
	Entries []Entry
}

// Message kinds: the first byte of every message the membership sends
// itself. The daemon's messages start with other letters ('R').
const (
	kindDelta   = 'S'
	kindFull    = 'F'
	kindRequest = 'Q'

	stateMsgVersion = 1
	entryGone       = 1 << 4 // in an entry's flags byte
	// maxEntries bounds the clusters one message may carry (and so one
	// node may have, with --peers): a full message of that many IPv6
	// clusters stays under the 1 MiB the transport takes in one stream.
	maxEntries = 8192
	// maxDeltaLen is how long a delta may grow: it goes in one UDP packet
	// of memberlist's 1400 bytes, with memberlist's headers and encryption.
	maxDeltaLen = 1100
)

// MaxClusters is how many clusters one daemon may have with --peers.
const MaxClusters = maxEntries

// Encode packs the message: its kind, a version byte, the node's name (a
// length byte, then the name), its start time (8 bytes, big endian), the
// generation and the number of entries (uvarints), then each entry: its
// version (uvarint), a flags byte, the VIP (4 bytes, or 16 with flagIPv6)
// and, unless it is gone, the five node sets as uvarints (mostly one or two
// bytes: a set is a few low bits).
func (s StateMessage) Encode() ([]byte, error) {
	if len(s.Node) == 0 || len(s.Node) > 255 {
		return nil, fmt.Errorf("membership: node name of %d bytes (want 1-255)", len(s.Node))
	}
	if len(s.Entries) > maxEntries {
		return nil, fmt.Errorf("membership: %d clusters, more than the %d one node may gossip", len(s.Entries), maxEntries)
	}
	kind := byte(kindDelta)
	if s.Full {
		kind = kindFull
	}
	b := s.header(kind)
	b = binary.AppendUvarint(b, uint64(len(s.Entries)))
	for _, e := range s.Entries {
		var err error
		if b, err = appendEntry(b, e, s.Full); err != nil {
			return nil, err
		}
	}
	return b, nil
}

func (s StateMessage) header(kind byte) []byte {
	b := make([]byte, 0, 64)
	b = append(b, kind, stateMsgVersion, byte(len(s.Node)))
	b = append(b, s.Node...)
	b = binary.BigEndian.AppendUint64(b, uint64(s.Started.UnixNano()))
	return binary.AppendUvarint(b, s.Gen)
}

func appendEntry(b []byte, e Entry, full bool) ([]byte, error) {
	st := e.State
	if !st.VIP.IsValid() || st.VIP.Is4In6() || st.VIP.Zone() != "" {
		return nil, fmt.Errorf("membership: VIP %s is neither IPv4 nor IPv6", st.VIP)
	}
	if full && e.Gone {
		return nil, fmt.Errorf("membership: a full state lists %s as gone", st.VIP)
	}
	b = binary.AppendUvarint(b, e.Version)
	var flags byte
	if st.Draining {
		flags |= flagDraining
	}
	if st.Unhealthy {
		flags |= flagUnhealthy
	}
	if st.VIP.Is6() {
		flags |= flagIPv6
	}
	if st.NotFlooded {
		flags |= flagNotFlooded
	}
	if e.Gone {
		flags = entryGone
		if st.VIP.Is6() {
			flags |= flagIPv6
		}
	}
	b = append(b, flags)
	b = append(b, st.VIP.AsSlice()...)
	if !e.Gone {
		for _, set := range []nodeset.NodeSet{st.Home, st.Serving, st.Leaving, st.Kept, st.Excluded} {
			b = binary.AppendUvarint(b, uint64(set))
		}
	}
	return b, nil
}

// deltaMessages packs entries into delta messages of at most maxDeltaLen
// bytes each.
func deltaMessages(node string, started time.Time, gen uint64, entries []Entry) ([][]byte, error) {
	s := StateMessage{Node: node, Started: started, Gen: gen}
	var out [][]byte
	var body []byte
	n := 0
	flush := func() {
		if n == 0 {
			return
		}
		b := s.header(kindDelta)
		b = binary.AppendUvarint(b, uint64(n))
		out = append(out, append(b, body...))
		body, n = nil, 0
	}
	overhead := len(s.header(kindDelta)) + binary.MaxVarintLen16
	for _, e := range entries {
		var err error
		mark := len(body)
		if body, err = appendEntry(body, e, false); err != nil {
			return nil, err
		}
		if overhead+len(body) > maxDeltaLen && n > 0 {
			one := bytes.Clone(body[mark:])
			body = body[:mark]
			flush()
			body = one
		}
		n++
	}
	flush()
	return out, nil
}

// DecodeStateMessage is the inverse of Encode, for a delta or a full
// message. Messages from the wire are untrusted: anything malformed is an
// error, never a panic.
func DecodeStateMessage(b []byte) (StateMessage, error) {
	var s StateMessage
	if len(b) < 3 {
		return s, errors.New("membership: state message shorter than its header")
	}
	switch b[0] {
	case kindDelta:
	case kindFull:
		s.Full = true
	default:
		return s, fmt.Errorf("membership: message kind %#x is not a state", b[0])
	}
	if b[1] != stateMsgVersion {
		return s, fmt.Errorf("membership: state message version %d, want %d", b[1], stateMsgVersion)
	}
	nameLen := int(b[2])
	b = b[3:]
	if nameLen == 0 || len(b) < nameLen+8 {
		return StateMessage{}, errors.New("membership: state message shorter than its header")
	}
	s.Node = string(b[:nameLen])
	s.Started = time.Unix(0, int64(binary.BigEndian.Uint64(b[nameLen:])))
	b = b[nameLen+8:]
	var err error
	if s.Gen, b, err = uvarint(b, "generation"); err != nil {
		return StateMessage{}, err
	}
	count, b, err := uvarint(b, "count")
	if err != nil {
		return StateMessage{}, err
	}
	if count > maxEntries || count > uint64(len(b)) {
		return StateMessage{}, fmt.Errorf("membership: state message claims %d clusters", count)
	}
	s.Entries = make([]Entry, 0, count)
	seen := make(map[netip.Addr]bool, count)
	for range count {
		var e Entry
		if e, b, err = decodeEntry(b); err != nil {
			return StateMessage{}, err
		}
		if seen[e.State.VIP] {
			return StateMessage{}, fmt.Errorf("membership: state message lists %s twice", e.State.VIP)
		}
		if s.Full && e.Gone {
			return StateMessage{}, fmt.Errorf("membership: a full state lists %s as gone", e.State.VIP)
		}
		if e.Version > s.Gen {
			return StateMessage{}, fmt.Errorf("membership: %s at version %d, past the message's %d", e.State.VIP, e.Version, s.Gen)
		}
		seen[e.State.VIP] = true
		s.Entries = append(s.Entries, e)
	}
	if len(b) != 0 {
		return StateMessage{}, fmt.Errorf("membership: %d bytes after the last cluster", len(b))
	}
	return s, nil
}

func uvarint(b []byte, what string) (uint64, []byte, error) {
	v, n := binary.Uvarint(b)
	if n <= 0 {
		return 0, nil, fmt.Errorf("membership: state message cut in its %s", what)
	}
	// Only the shortest form: a value has one encoding, so a state
	// re-encodes to the bytes it came in.
	if n > 1 && b[n-1] == 0 {
		return 0, nil, fmt.Errorf("membership: %s not in its shortest form", what)
	}
	return v, b[n:], nil
}

func decodeEntry(b []byte) (Entry, []byte, error) {
	var e Entry
	var err error
	if e.Version, b, err = uvarint(b, "cluster version"); err != nil {
		return Entry{}, nil, err
	}
	if len(b) < 1 {
		return Entry{}, nil, errors.New("membership: state message cut before a cluster's flags")
	}
	flags := b[0]
	b = b[1:]
	known := byte(flagDraining | flagUnhealthy | flagIPv6 | flagNotFlooded)
	if flags&entryGone != 0 {
		known = entryGone | flagIPv6
	}
	if flags&^known != 0 {
		return Entry{}, nil, fmt.Errorf("membership: unknown cluster flags %#x (a newer version's state needs a new version byte)", flags)
	}
	alen := 4
	if flags&flagIPv6 != 0 {
		alen = 16
	}
	if len(b) < alen {
		return Entry{}, nil, errors.New("membership: state message cut in a VIP")
	}
	vip, _ := netip.AddrFromSlice(b[:alen])
	if vip.Is4In6() {
		return Entry{}, nil, errors.New("membership: an IPv4-mapped VIP in a state message")
	}
	b = b[alen:]
	e.Gone = flags&entryGone != 0
	e.State = ClusterState{VIP: vip, Draining: flags&flagDraining != 0, Unhealthy: flags&flagUnhealthy != 0, NotFlooded: flags&flagNotFlooded != 0}
	if e.Gone {
		e.State.Draining, e.State.Unhealthy, e.State.NotFlooded = false, false, false
		return e, b, nil
	}
	for _, p := range []*nodeset.NodeSet{&e.State.Home, &e.State.Serving, &e.State.Leaving, &e.State.Kept, &e.State.Excluded} {
		var v uint64
		if v, b, err = uvarint(b, "node set"); err != nil {
			return Entry{}, nil, err
		}
		*p = nodeset.NodeSet(v)
	}
	return e, b, nil
}

// requestMessage asks a node for its full state, to be sent to from.
func requestMessage(from string) []byte {
	return append([]byte{kindRequest, stateMsgVersion, byte(len(from))}, from...)
}

// parseRequest returns the name of the node that sent a request.
func parseRequest(b []byte) (string, error) {
	if len(b) < 4 || b[0] != kindRequest || b[1] != stateMsgVersion || int(b[2]) != len(b)-3 {
		return "", errors.New("membership: malformed state request")
	}
	return string(b[3:]), nil
}
