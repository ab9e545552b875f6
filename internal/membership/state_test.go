package membership_test

import (
	"bytes"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/clusterip/clusterip/internal/membership"
	"github.com/clusterip/clusterip/nodeset"
)

func set(t testing.TB, nodes ...int) nodeset.NodeSet {
	t.Helper()
	s, err := nodeset.Of(nodes...)
	if err != nil {
		t.Fatalf("nodeset.Of(%v): %v", nodes, err)
	}
	return s
}

func TestClusterStateAvailable(t *testing.T) {
	for _, tc := range []struct {
		draining, unhealthy, want bool
	}{
		{false, false, true},
		{true, false, false},
		{false, true, false},
		{true, true, false},
	} {
		c := membership.ClusterState{Draining: tc.draining, Unhealthy: tc.unhealthy}
		if got := c.Available(); got != tc.want {
			t.Errorf("Available() with Draining=%v Unhealthy=%v = %v, want %v", tc.draining, tc.unhealthy, got, tc.want)
		}
	}
}

// testStart is a node's start time in the messages these tests make.
var testStart = time.Unix(0, 0x0102030405060708)

// metaLen is the metadata's wire size: a version byte, the start time, a
// flags byte, the generation, the count and the digest. It is part of the
// gossip protocol, so the test pins it rather than reading it from the
// package; whatever the number of clusters, it stays far below memberlist's
// 512 bytes.
const metaLen = 1 + 8 + 1 + 8 + 4 + 8

func TestMetaLayout(t *testing.T) {
	b := membership.Meta{Started: testStart, Published: true, Gen: 0x1122, Count: 7, Digest: 0xa1a2a3a4a5a6a7a8}.Encode()
	want := []byte{
		5,                      // version
		1, 2, 3, 4, 5, 6, 7, 8, // start time, Unix nanoseconds
		1,                            // published
		0, 0, 0, 0, 0, 0, 0x11, 0x22, // generation
		0, 0, 0, 7, // count
		0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, // digest
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("Encode =\n%v\nwant\n%v", b, want)
	}
	m, err := membership.DecodeMeta(b)
	if err != nil || !m.Started.Equal(testStart) || !m.Published || m.Gen != 0x1122 || m.Count != 7 || m.Digest != 0xa1a2a3a4a5a6a7a8 {
		t.Fatalf("DecodeMeta = %+v, %v", m, err)
	}
}

func TestDecodeMeta(t *testing.T) {
	// A node that has not published yet: no metadata at all, or a header
	// without the published flag.
	for _, b := range [][]byte{nil, {}} {
		if m, err := membership.DecodeMeta(b); err != nil || m.Published {
			t.Errorf("DecodeMeta(%v) = %+v, %v; want nothing", b, m, err)
		}
	}
	good := membership.Meta{Started: testStart}.Encode()
	if m, err := membership.DecodeMeta(good); err != nil || m.Published || !m.Started.Equal(testStart) {
		t.Errorf("DecodeMeta(unpublished) = %+v, %v", m, err)
	}
	with := func(i int, v byte) []byte {
		b := bytes.Clone(good)
		b[i] = v
		return b
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"version 4 (11 clusters in the metadata)", with(0, 4), "version 4"},
		{"version 0", with(0, 0), "version 0"},
		{"version 255", with(0, 255), "version 255"},
		{"a byte short", good[:metaLen-1], "bytes"},
		{"a byte long", append(bytes.Clone(good), 0), "bytes"},
		{"unknown flag", with(9, 2), "flags"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := membership.DecodeMeta(tc.b)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("DecodeMeta = %+v, %v; want an error with %q", m, err, tc.want)
			}
		})
	}
}

// manyStates is n clusters with varied states, IPv4 and IPv6.
func manyStates(t testing.TB, n int) []membership.Entry {
	all := nodeset.NodeSet(^uint64(0))
	out := make([]membership.Entry, n)
	for i := range out {
		vip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if i%5 == 4 {
			vip = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
		}
		st := membership.ClusterState{
			VIP:        vip,
			Home:       set(t, i%64+1),
			Serving:    set(t, i%64+1, (i+7)%64+1),
			Leaving:    set(t, (i+7)%64+1),
			Kept:       set(t, (i+3)%64+1),
			Excluded:   set(t, (i+5)%64+1),
			Draining:   i%2 == 0,
			Unhealthy:  i%3 == 0,
			NotFlooded: i%7 == 0,
		}
		if i%11 == 0 {
			st.Home, st.Serving, st.Kept = all, all, all
		}
		out[i] = membership.Entry{Version: uint64(i + 1), State: st}
	}
	return out
}

func TestStateMessageRoundTrip(t *testing.T) {
	many := manyStates(t, membership.MaxClusters)
	gone := membership.Entry{Version: 9, Gone: true, State: membership.ClusterState{VIP: netip.MustParseAddr("2001:db8::9")}}
	for _, tc := range []struct {
		name string
		msg  membership.StateMessage
	}{
		{"empty full", membership.StateMessage{Full: true, Node: "n1", Started: testStart, Entries: []membership.Entry{}}},
		{"one delta", membership.StateMessage{Node: "node-a", Started: testStart, Gen: 3, Entries: many[2:3]}},
		{"a gone cluster", membership.StateMessage{Node: "node-a", Started: testStart, Gen: 9, Entries: []membership.Entry{gone}}},
		{"MaxClusters, full", membership.StateMessage{Full: true, Node: strings.Repeat("x", 255), Started: testStart, Gen: uint64(len(many)), Entries: many}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.msg.Encode()
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			got, err := membership.DecodeStateMessage(b)
			if err != nil {
				t.Fatalf("DecodeStateMessage: %v", err)
			}
			if !got.Started.Equal(tc.msg.Started) {
				t.Fatalf("Started %v, want %v", got.Started, tc.msg.Started)
			}
			got.Started = tc.msg.Started
			if !reflect.DeepEqual(got, tc.msg) {
				t.Fatalf("round trip changed the message:\n%+v\nwant\n%+v", got, tc.msg)
			}
			if tc.msg.Full && len(b) > 1<<20 {
				t.Errorf("a full state of %d clusters takes %d bytes, more than a stream may carry", len(tc.msg.Entries), len(b))
			}
		})
	}
	// Compact: a thousand IPv4 clusters with typical sets (a number or
	// two each) take about 16 KB.
	var typical []membership.Entry
	for i := range 1000 {
		typical = append(typical, membership.Entry{Version: uint64(i + 1), State: membership.ClusterState{
			VIP: netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), Home: set(t, i%3+1), Serving: set(t, i%3+1)}})
	}
	b, err := membership.StateMessage{Full: true, Node: "node-a", Started: testStart, Gen: 1000, Entries: typical}.Encode()
	if err != nil || len(b) > 16*1024 {
		t.Errorf("1000 typical clusters: %d bytes, %v; want at most 16 KiB", len(b), err)
	}
}

func TestStateMessageLayout(t *testing.T) {
	b, err := membership.StateMessage{Node: "ab", Started: testStart, Gen: 300, Entries: []membership.Entry{
		{Version: 300, State: membership.ClusterState{
			VIP:       netip.MustParseAddr("192.0.2.1"),
			Home:      set(t, 1),  // 1
			Serving:   set(t, 64), // 1<<63: ten bytes
			Leaving:   set(t, 9),  // 0x100: two bytes
			Excluded:  set(t, 2),
			Draining:  true,
			Unhealthy: true,
		}},
		{Version: 5, Gone: true, State: membership.ClusterState{VIP: netip.MustParseAddr("192.0.2.2")}},
	}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		'S', 1, // a delta, version 1
		2, 'a', 'b', // the node's name
		1, 2, 3, 4, 5, 6, 7, 8, // start time
		0xac, 0x02, // generation 300, uvarint
		2,          // clusters
		0xac, 0x02, // version 300
		3,            // Draining | Unhealthy
		192, 0, 2, 1, // VIP
		1,                                                          // Home
		0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, // Serving
		0x80, 0x02, // Leaving
		0,            // Kept
		2,            // Excluded
		5,            // version 5
		0x10,         // gone
		192, 0, 2, 2, // VIP, and no sets
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("Encode =\n%v\nwant\n%v", b, want)
	}
}

func TestStateMessageRefused(t *testing.T) {
	ok := membership.StateMessage{Node: "n1", Started: testStart, Gen: 1, Entries: []membership.Entry{{Version: 1, State: membership.ClusterState{VIP: netip.MustParseAddr("10.0.0.1")}}}}
	for _, tc := range []struct {
		name string
		edit func(*membership.StateMessage)
		want string
	}{
		{"no name", func(s *membership.StateMessage) { s.Node = "" }, "name"},
		{"long name", func(s *membership.StateMessage) { s.Node = strings.Repeat("n", 256) }, "name"},
		{"zero VIP", func(s *membership.StateMessage) { s.Entries[0].State.VIP = netip.Addr{} }, "neither IPv4 nor IPv6"},
		{"mapped VIP", func(s *membership.StateMessage) { s.Entries[0].State.VIP = netip.MustParseAddr("::ffff:10.0.0.1") }, "neither IPv4 nor IPv6"},
		{"gone in a full state", func(s *membership.StateMessage) { s.Full, s.Entries[0].Gone = true, true }, "gone"},
		{"too many", func(s *membership.StateMessage) { s.Entries = manyStates(t, membership.MaxClusters+1) }, "clusters"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := ok
			s.Entries = append([]membership.Entry(nil), ok.Entries...)
			tc.edit(&s)
			b, err := s.Encode()
			if err == nil || b != nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Encode = %d bytes, %v; want an error with %q", len(b), err, tc.want)
			}
		})
	}
}

func TestDecodeStateMessageErrors(t *testing.T) {
	good, err := membership.StateMessage{Full: true, Node: "n1", Started: testStart, Gen: 4, Entries: []membership.Entry{
		{Version: 3, State: membership.ClusterState{VIP: netip.MustParseAddr("10.0.0.1"), Home: 1}},
		{Version: 4, State: membership.ClusterState{VIP: netip.MustParseAddr("10.0.0.2"), Home: 2}},
	}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	with := func(i int, v byte) []byte {
		b := bytes.Clone(good)
		b[i] = v
		return b
	}
	hdr := 3 + 2 + 8 // kind, version, name length, name, start time
	twice := bytes.Clone(good[:hdr+2])
	twice = append(twice, good[hdr+2:hdr+2+1+1+4+5]...)
	twice = append(twice, good[hdr+2:hdr+2+1+1+4+5]...)
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "shorter"},
		{"another kind", with(0, 'R'), "not a state"},
		{"version 2", with(1, 2), "version 2"},
		{"no name", with(2, 0), "shorter"},
		{"cut in the header", good[:hdr-1], "shorter"},
		{"cut after the header", good[:hdr], "generation"},
		{"cut in a cluster", good[:len(good)-1], "cut"},
		{"a byte long", append(bytes.Clone(good), 0), "after the last cluster"},
		{"count past the bytes", with(hdr+1, 100), "claims 100"},
		{"unknown flag", with(hdr+3, 0x20), "flags"},
		{"a version past the generation", with(hdr+2, 9), "past"},
		{"listed twice", twice, "twice"},
		{"gone in a full state", with(hdr+3, 0x10), "gone"},
		{"a long uvarint", append(append(bytes.Clone(good[:hdr]), 0x84, 0x00), good[hdr+1:]...), "shortest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := membership.DecodeStateMessage(tc.b)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("DecodeStateMessage = %+v, %v; want an error with %q", s, err, tc.want)
			}
			if s.Entries != nil || s.Node != "" {
				t.Errorf("DecodeStateMessage returned %+v with its error", s)
			}
		})
	}
}

func FuzzDecodeMeta(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{5})
	f.Add(membership.Meta{Started: testStart, Published: true, Gen: 9, Count: 3, Digest: 77}.Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := membership.DecodeMeta(b)
		if err != nil || len(b) == 0 {
			return
		}
		if again := m.Encode(); !bytes.Equal(again, b) {
			t.Fatalf("Encode(DecodeMeta(%x)) = %x", b, again)
		}
	})
}

func FuzzDecodeStateMessage(f *testing.F) {
	f.Add([]byte{'S', 1, 1, 'n', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	for _, s := range []membership.StateMessage{
		{Node: "n1", Started: testStart, Gen: 9, Entries: manyStates(f, 9)},
		{Full: true, Node: "node-b", Started: testStart, Gen: 3, Entries: manyStates(f, 3)},
		{Node: "n", Started: testStart, Gen: 7, Entries: []membership.Entry{{Version: 7, Gone: true, State: membership.ClusterState{VIP: netip.MustParseAddr("2001:db8::1")}}}},
	} {
		b, err := s.Encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)-1])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := membership.DecodeStateMessage(b)
		if err != nil {
			if s.Entries != nil {
				t.Fatalf("DecodeStateMessage(%x) returned entries with error %v", b, err)
			}
			return
		}
		for _, e := range s.Entries {
			if !e.State.VIP.IsValid() || e.State.VIP.Is4In6() || e.Version > s.Gen {
				t.Fatalf("DecodeStateMessage gave %+v", e)
			}
		}
		// Whatever decodes encodes back to the same bytes.
		again, err := s.Encode()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("Encode(DecodeStateMessage(%x)) = %x, %v", b, again, err)
		}
	})
}
