package membership_test

import (
	"bytes"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/clusterip/clusterip/internal/membership"
	"github.com/clusterip/clusterip/nodeset"
)

// metaLen is the wire size of metadata with these clusters.
func metaLen(states []membership.ClusterState) int {
	n := headerLen
	for _, s := range states {
		n += stateLen
		if s.VIP.Is6() {
			n += 12
		}
	}
	return n
}

// stateLen is the wire size of one IPv4 ClusterState: 4 bytes of VIP, five
// 64-bit sets and a flags byte. The format is part of the gossip protocol,
// so the test pins it rather than reading it from the package.
const stateLen = 4 + 5*8 + 1

// headerLen is the metadata's header: a version byte, the node's start time
// and a flags byte.
const headerLen = 1 + 8 + 1

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

func TestMaxClusters(t *testing.T) {
	// memberlist carries at most 512 bytes of metadata; one version byte,
	// then whole clusters.
	if want := (512 - headerLen) / stateLen; membership.MaxClusters != want {
		t.Fatalf("MaxClusters = %d, want %d", membership.MaxClusters, want)
	}
	if n := headerLen + membership.MaxClusters*stateLen; n > 512 {
		t.Fatalf("MaxClusters clusters take %d bytes, more than memberlist's 512", n)
	}
	// An IPv6 cluster takes 12 bytes more: MetaFits counts them.
	v4 := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}) }
	var vips []netip.Addr
	for i := range membership.MaxClusters {
		vips = append(vips, v4(i))
	}
	if !membership.MetaFits(vips) || membership.MetaFits(append(vips, v4(99))) {
		t.Fatal("MetaFits disagrees with MaxClusters")
	}
	six := []netip.Addr{}
	for i := 0; headerLen+(i+1)*(stateLen+12) <= 512; i++ {
		six = append(six, netip.AddrFrom16([16]byte{0x20, 1, 15: byte(i)}))
	}
	if !membership.MetaFits(six) || membership.MetaFits(append(six, v4(1))) && headerLen+len(six)*(stateLen+12)+stateLen > 512 {
		t.Fatalf("MetaFits is wrong about %d IPv6 clusters", len(six))
	}
}

// testStart is a node's start time in the metadata these tests make.
var testStart = time.Unix(0, 0x0102030405060708)

// encode is the metadata of a started node that published states.
func encode(states []membership.ClusterState) ([]byte, error) {
	return membership.Meta{Started: testStart, Published: true, Clusters: states}.Encode()
}

// decode returns the cluster states of metadata, checking its header.
func decode(b []byte) ([]membership.ClusterState, error) {
	m, err := membership.DecodeMeta(b)
	if err == nil && len(b) > 0 && (!m.Published || !m.Started.Equal(testStart)) {
		return nil, fmt.Errorf("header: %+v", m)
	}
	return m.Clusters, err
}

func TestEncodeDecodeMetaRoundTrip(t *testing.T) {
	all := nodeset.NodeSet(^uint64(0))
	full := make([]membership.ClusterState, membership.MaxClusters)
	for i := range full {
		full[i] = membership.ClusterState{
			VIP:       netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}),
			Home:      set(t, i%64+1),
			Serving:   set(t, i%64+1, (i+7)%64+1),
			Leaving:   set(t, (i+7)%64+1),
			Kept:      set(t, (i+3)%64+1),
			Excluded:  set(t, (i+5)%64+1),
			Draining:  i%2 == 0,
			Unhealthy: i%3 == 0,
		}
	}
	tests := []struct {
		name   string
		states []membership.ClusterState
	}{
		{name: "no clusters", states: []membership.ClusterState{}},
		{name: "zero state", states: []membership.ClusterState{{VIP: netip.IPv4Unspecified()}}},
		{name: "one cluster", states: []membership.ClusterState{{
			VIP:     netip.MustParseAddr("192.0.2.10"),
			Home:    set(t, 1, 2),
			Serving: set(t, 1, 2, 5),
			Leaving: set(t, 5),
		}}},
		{name: "every set full and both flags", states: []membership.ClusterState{{
			VIP:       netip.MustParseAddr("255.255.255.255"),
			Home:      all,
			Serving:   all,
			Leaving:   all,
			Kept:      all,
			Excluded:  all,
			Draining:  true,
			Unhealthy: true,
		}}},
		{name: "draining only", states: []membership.ClusterState{{VIP: netip.MustParseAddr("10.1.1.1"), Draining: true}}},
		{name: "unhealthy only", states: []membership.ClusterState{{VIP: netip.MustParseAddr("10.1.1.1"), Unhealthy: true}}},
		{name: "not flooded", states: []membership.ClusterState{{VIP: netip.MustParseAddr("2001:db8::1"), NotFlooded: true, Draining: true}}},
		{name: "distinct sets", states: []membership.ClusterState{{
			VIP:      netip.MustParseAddr("10.9.8.7"),
			Home:     set(t, 1),
			Serving:  set(t, 2),
			Leaving:  set(t, 3),
			Kept:     set(t, 4),
			Excluded: set(t, 64),
		}}},
		{name: "two clusters keep their order", states: []membership.ClusterState{
			{VIP: netip.MustParseAddr("10.0.0.2"), Home: set(t, 3)},
			{VIP: netip.MustParseAddr("10.0.0.1"), Home: set(t, 4), Unhealthy: true},
		}},
		{name: "MaxClusters", states: full},
		{name: "IPv6 and IPv4", states: []membership.ClusterState{
			{VIP: netip.MustParseAddr("2001:db8::1"), Home: set(t, 1), Serving: set(t, 1, 2), Draining: true},
			{VIP: netip.MustParseAddr("10.0.0.1"), Home: set(t, 3)},
			{VIP: netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), Excluded: all, Unhealthy: true},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := encode(tc.states)
			if err != nil {
				t.Fatalf("EncodeMeta: %v", err)
			}
			if want := metaLen(tc.states); len(b) != want {
				t.Fatalf("EncodeMeta gave %d bytes, want %d", len(b), want)
			}
			if len(b) > 512 {
				t.Fatalf("EncodeMeta gave %d bytes, more than memberlist's 512", len(b))
			}
			if b[0] != 4 {
				t.Fatalf("version byte %d, want 4", b[0])
			}
			got, err := decode(b)
			if err != nil {
				t.Fatalf("DecodeMeta: %v", err)
			}
			if len(got) != len(tc.states) {
				t.Fatalf("DecodeMeta gave %d clusters, want %d", len(got), len(tc.states))
			}
			for i := range got {
				if got[i] != tc.states[i] {
					t.Errorf("cluster %d: got %+v, want %+v", i, got[i], tc.states[i])
				}
			}
		})
	}
}

func TestEncodeMetaLayout(t *testing.T) {
	b, err := encode([]membership.ClusterState{{
		VIP:       netip.MustParseAddr("192.0.2.1"),
		Home:      set(t, 1),  // 0x...01
		Serving:   set(t, 64), // 0x80...
		Leaving:   set(t, 9),  // 0x...0100
		Kept:      0,
		Excluded:  set(t, 2),
		Draining:  true,
		Unhealthy: true,
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		4,                      // version
		1, 2, 3, 4, 5, 6, 7, 8, // start time, Unix nanoseconds
		1,            // published
		3,            // Draining | Unhealthy, not IPv6
		192, 0, 2, 1, // VIP
		0, 0, 0, 0, 0, 0, 0, 1, // Home, big endian
		0x80, 0, 0, 0, 0, 0, 0, 0, // Serving
		0, 0, 0, 0, 0, 0, 1, 0, // Leaving
		0, 0, 0, 0, 0, 0, 0, 0, // Kept
		0, 0, 0, 0, 0, 0, 0, 2, // Excluded
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("EncodeMeta =\n%v\nwant\n%v", b, want)
	}
}

func TestDecodeMetaEmpty(t *testing.T) {
	// A node that has not published yet has no metadata at all.
	for _, b := range [][]byte{nil, {}} {
		got, err := decode(b)
		if err != nil || got != nil {
			t.Errorf("DecodeMeta(%v) = %v, %v; want nil, nil", b, got, err)
		}
	}
	// A header alone is a node that serves no cluster; unpublished, it is
	// one that has not said so yet.
	hdr := []byte{4, 0, 0, 0, 0, 0, 0, 0, 9, 0}
	m, err := membership.DecodeMeta(hdr)
	if err != nil || len(m.Clusters) != 0 || m.Published || m.Started.UnixNano() != 9 {
		t.Errorf("DecodeMeta(%v) = %+v, %v; want an unpublished node started at 9ns", hdr, m, err)
	}
	hdr[9] = 1
	if m, err := membership.DecodeMeta(hdr); err != nil || !m.Published {
		t.Errorf("DecodeMeta(%v) = %+v, %v; want published", hdr, m, err)
	}
	hdr[9] = 2
	if m, err := membership.DecodeMeta(hdr); err == nil {
		t.Errorf("DecodeMeta with an unknown header flag = %+v, want an error", m)
	}
}

func TestEncodeMetaTooManyClusters(t *testing.T) {
	states := make([]membership.ClusterState, membership.MaxClusters+1)
	for i := range states {
		states[i].VIP = netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})
	}
	b, err := encode(states)
	if err == nil {
		t.Fatalf("EncodeMeta(%d clusters) = %d bytes, want an error", len(states), len(b))
	}
	if b != nil {
		t.Errorf("EncodeMeta returned %d bytes with its error", len(b))
	}
	if !strings.Contains(err.Error(), "clusters") {
		t.Errorf("error %q does not say what is wrong", err)
	}
	if _, err := encode(states[:membership.MaxClusters]); err != nil {
		t.Errorf("EncodeMeta(MaxClusters): %v", err)
	}
}

func TestEncodeMetaBadVIP(t *testing.T) {
	for _, vip := range []netip.Addr{
		{},                                     // the zero Addr
		netip.MustParseAddr("::ffff:10.0.0.1"), // IPv4-mapped: which family?
	} {
		states := []membership.ClusterState{
			{VIP: netip.MustParseAddr("10.0.0.1")},
			{VIP: vip},
		}
		b, err := encode(states)
		if err == nil {
			t.Errorf("EncodeMeta with VIP %v = %v, want an error", vip, b)
			continue
		}
		if b != nil {
			t.Errorf("EncodeMeta with VIP %v returned bytes with its error", vip)
		}
		if !strings.Contains(err.Error(), "neither IPv4 nor IPv6") {
			t.Errorf("EncodeMeta with VIP %v: error %q does not say what is wrong", vip, err)
		}
	}
}

func TestDecodeMetaErrors(t *testing.T) {
	good, err := encode([]membership.ClusterState{
		{VIP: netip.MustParseAddr("10.0.0.1"), Home: 1},
		{VIP: netip.MustParseAddr("10.0.0.2"), Home: 2},
	})
	if err != nil {
		t.Fatal(err)
	}
	withVersion := func(v byte) []byte {
		b := bytes.Clone(good)
		b[0] = v
		return b
	}
	tests := []struct {
		name string
		b    []byte
		want string // part of the error
	}{
		{"version 0", withVersion(0), "version 0"},
		{"version 1", withVersion(1), "version 1"},
		{"version 255", withVersion(255), "version 255"},
		{"version 2", withVersion(2), "version 2"},
		{"version 3", withVersion(3), "version 3"},
		{"version 4 alone", []byte{4}, "shorter than its header"},
		{"header cut", good[:headerLen-1], "shorter than its header"},
		{"one byte short", good[:len(good)-1], "whole number"},
		{"one byte long", append(bytes.Clone(good), 0), "whole number"},
		{"header and a partial cluster", good[:headerLen+1], "whole number"},
		{"cluster without its last byte", good[:headerLen+stateLen-1], "whole number"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decode(tc.b)
			if err == nil {
				t.Fatalf("DecodeMeta = %+v, want an error", got)
			}
			if got != nil {
				t.Errorf("DecodeMeta returned %+v with its error", got)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

// TestDecodeMetaUnknownFlags: DecodeMeta promises that anything malformed
// is an error, and the version byte exists so that format changes are
// detected. A version-1 flags byte with bits other than draining and
// unhealthy set is not something any version-1 encoder writes; DecodeMeta
// silently drops those bits instead, so different metadata decodes to the
// same state and re-encodes to different bytes.
func TestDecodeMetaUnknownFlags(t *testing.T) {
	b, err := encode([]membership.ClusterState{{VIP: netip.MustParseAddr("10.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	for bit := 4; bit < 8; bit++ {
		bad := bytes.Clone(b)
		bad[headerLen] |= 1 << bit
		if got, err := decode(bad); err == nil {
			t.Errorf("DecodeMeta with unknown flag bit %d = %+v, want an error", bit, got)
		}
	}
}

func FuzzDecodeMeta(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Add([]byte{0})
	f.Add([]byte{4, 1, 2, 3})
	f.Add([]byte{4, 0, 0, 0, 0, 0, 0, 0, 1, 0})
	for _, states := range [][]membership.ClusterState{
		{{VIP: netip.MustParseAddr("10.0.0.1"), Home: 3, Serving: 7, Leaving: 4, Kept: 8, Excluded: 16, Draining: true}},
		{
			{VIP: netip.MustParseAddr("192.0.2.1"), Home: nodeset.NodeSet(^uint64(0)), Unhealthy: true},
			{VIP: netip.MustParseAddr("192.0.2.2")},
		},
		{{VIP: netip.MustParseAddr("2001:db8::1"), Serving: 1}},
	} {
		b, err := encode(states)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)-1])
	}

	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := membership.DecodeMeta(b)
		states := m.Clusters
		if err != nil {
			if states != nil {
				t.Fatalf("DecodeMeta(%x) returned states with error %v", b, err)
			}
			return
		}
		if len(b) == 0 {
			if states != nil || m.Published {
				t.Fatalf("DecodeMeta(empty) = %+v, want nothing", m)
			}
			return
		}
		if want := metaLen(states); len(b) != want {
			t.Fatalf("DecodeMeta(%d bytes) gave clusters of %d bytes", len(b), want)
		}
		for _, s := range states {
			if !s.VIP.IsValid() || s.VIP.Is4In6() {
				t.Fatalf("DecodeMeta gave VIP %v", s.VIP)
			}
		}
		// Whatever decodes (and fits in memberlist's metadata) encodes
		// back to the same bytes.
		again, err := m.Encode()
		if len(b) > 512 {
			if err == nil {
				t.Fatalf("Encode(%d clusters) succeeded in more than 512 bytes", len(states))
			}
			return
		}
		if err != nil {
			t.Fatalf("Encode(DecodeMeta(%x)): %v", b, err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("Encode(DecodeMeta(%x)) = %x", b, again)
		}
		back, err := membership.DecodeMeta(again)
		if err != nil || !reflect.DeepEqual(back, m) {
			t.Fatalf("second DecodeMeta = %+v, %v; want %+v", back, err, m)
		}
	})
}
