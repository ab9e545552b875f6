package membership

import (
	"net/netip"
	"testing"
	"time"
)

func entry(vip string, version uint64, home uint64) Entry {
	return Entry{Version: version, State: ClusterState{VIP: netip.MustParseAddr(vip), Home: 1 << (home - 1)}}
}

func gone(vip string, version uint64) Entry {
	return Entry{Version: version, Gone: true, State: ClusterState{VIP: netip.MustParseAddr(vip)}}
}

// homes lists a view's clusters as VIP → home set.
func homes(v *view) map[string]uint64 {
	out := map[string]uint64{}
	for _, c := range v.clusters {
		out[c.VIP.String()] = uint64(c.Home)
	}
	return out
}

// TestViewFollowsOwn: whatever order deltas and full states arrive in, a
// view that got them all ends equal to the publisher's state and matches
// its metadata; one that missed a delta is behind until a full state comes.
func TestViewFollowsOwn(t *testing.T) {
	var o own
	started := time.Unix(0, 42)
	var deltas [][]Entry
	publish := func(states ...ClusterState) {
		deltas = append(deltas, o.update(states))
	}
	a := ClusterState{VIP: netip.MustParseAddr("10.0.0.1"), Home: 1, Serving: 1}
	b := ClusterState{VIP: netip.MustParseAddr("10.0.0.2"), Home: 2, Serving: 2}
	c := ClusterState{VIP: netip.MustParseAddr("2001:db8::3"), Home: 4}
	publish(a, b)
	a2 := a
	a2.Draining = true
	publish(a2, b, c)
	publish(a2, c) // b deleted
	publish(a2, c) // no change
	if len(deltas[3]) != 0 {
		t.Fatalf("publishing the same states changed %v", deltas[3])
	}
	meta := o.meta(started)
	if meta.Gen != 5 || meta.Count != 2 {
		t.Fatalf("meta %+v, want generation 5 and 2 clusters", meta)
	}

	apply := func(v *view, es []Entry) {
		v.apply(StateMessage{Node: "n", Started: started, Gen: meta.Gen, Entries: es})
	}
	for _, order := range [][]int{{0, 1, 2}, {2, 1, 0}, {1, 2, 0}, {2, 0, 1}} {
		v := newView(started.UnixNano())
		v.meta, v.hasMeta = meta, true
		for _, i := range order {
			apply(v, deltas[i])
		}
		v.check(time.Now())
		if !v.synced || v.behind() {
			t.Errorf("order %v: view %v not synced with %+v (gen %d, count %d, digest %x)", order, homes(v), meta, v.gen, v.count, v.digest)
		}
		if got := homes(v); len(got) != 2 || got["10.0.0.1"] != 1 || got["2001:db8::3"] != 4 {
			t.Errorf("order %v: view %v", order, got)
		}
	}

	// Missing the deletion of b: behind until a full state.
	v := newView(started.UnixNano())
	v.meta, v.hasMeta = meta, true
	apply(v, deltas[0])
	apply(v, deltas[1])
	v.check(time.Now())
	if !v.behind() || v.synced || v.behindSince.IsZero() {
		t.Fatalf("a view that missed a delta is not behind: %v", homes(v))
	}
	full, err := DecodeStateMessage(o.fullMessage("n", started))
	if err != nil {
		t.Fatal(err)
	}
	v.apply(full)
	v.check(time.Now())
	if v.behind() || !v.synced {
		t.Fatalf("after the full state: %v, behind %v", homes(v), v.behind())
	}
	// The deletion's delta coming late changes nothing, nor does the
	// first one: the full state holds both.
	if apply(v, deltas[2]); len(homes(v)) != 2 {
		t.Errorf("a late delta changed the view: %v", homes(v))
	}
	if apply(v, deltas[0]); len(homes(v)) != 2 {
		t.Errorf("an old delta brought back a deleted cluster: %v", homes(v))
	}
}

// TestViewOutOfOrder: an older version never replaces a newer one, a gone
// cluster stays gone against older deltas, and a newer start of the node
// starts the view afresh.
func TestViewOutOfOrder(t *testing.T) {
	v := newView(10)
	v.apply(StateMessage{Gen: 5, Entries: []Entry{entry("10.0.0.1", 5, 3), entry("10.0.0.2", 2, 1)}})
	v.apply(StateMessage{Gen: 4, Entries: []Entry{entry("10.0.0.1", 4, 2)}})
	if got := homes(v); got["10.0.0.1"] != 4 {
		t.Errorf("an older delta replaced a newer state: %v", got)
	}
	v.apply(StateMessage{Gen: 6, Entries: []Entry{gone("10.0.0.2", 6)}})
	v.apply(StateMessage{Gen: 3, Entries: []Entry{entry("10.0.0.2", 3, 1)}})
	if got := homes(v); len(got) != 1 {
		t.Errorf("an older delta brought back a gone cluster: %v", got)
	}
	// An older full state than one applied is ignored; a newer one
	// replaces what it covers but keeps newer deltas.
	v.apply(StateMessage{Full: true, Gen: 8, Entries: []Entry{entry("10.0.0.3", 8, 1)}})
	v.apply(StateMessage{Gen: 9, Entries: []Entry{entry("10.0.0.4", 9, 1)}})
	v.apply(StateMessage{Full: true, Gen: 7, Entries: []Entry{entry("10.0.0.1", 5, 3)}})
	if got := homes(v); len(got) != 2 || got["10.0.0.3"] == 0 || got["10.0.0.4"] == 0 {
		t.Errorf("after full states: %v, want 10.0.0.3 and 10.0.0.4", got)
	}

	m := &Membership{name: "me", views: map[string]*view{}}
	old := m.viewLocked("n", 10)
	old.apply(StateMessage{Gen: 1, Entries: []Entry{entry("10.0.0.1", 1, 1)}})
	if m.viewLocked("n", 9) != old {
		t.Errorf("an older start replaced the view")
	}
	if fresh := m.viewLocked("n", 11); fresh == old || len(fresh.clusters) != 0 {
		t.Errorf("a newer start kept the old view")
	}
}

// TestDeltaMessagesSplit: deltas fit memberlist's UDP packets, and every
// entry goes in exactly one.
func TestDeltaMessagesSplit(t *testing.T) {
	var entries []Entry
	for i := range 1000 {
		vip := netip.AddrFrom16([16]byte{0x20, 0x01, 14: byte(i >> 8), 15: byte(i)})
		entries = append(entries, Entry{Version: uint64(i + 1), State: ClusterState{VIP: vip, Home: 1 << 63, Serving: 1 << 63}})
	}
	msgs, err := deltaMessages("node-with-a-name", time.Unix(0, 1), 1000, entries)
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, b := range msgs {
		if len(b) > maxDeltaLen {
			t.Errorf("a delta of %d bytes, more than %d", len(b), maxDeltaLen)
		}
		s, err := DecodeStateMessage(b)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range s.Entries {
			if e != entries[seen] {
				t.Fatalf("entry %d: %+v, want %+v", seen, e, entries[seen])
			}
			seen++
		}
	}
	if seen != len(entries) || len(msgs) < 2 {
		t.Errorf("%d messages carried %d entries, want %d", len(msgs), seen, len(entries))
	}
}
