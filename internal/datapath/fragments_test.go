package datapath

import (
	"math/rand/v2"
	"testing"
	"time"
)

const tSec = int64(time.Second)

func fragTestKey(n int) fragKey {
	return fragKey{src: addr4(0xc6336407), id: uint32(n), proto: testUDP}
}

// pieces of a datagram of 3000 bytes in fragments of 1480, as Linux sends it
// over a 1500-byte MTU.
var (
	piece0 = fragPiece{off: 0, end: 1480}
	piece1 = fragPiece{off: 1480, end: 2960}
	piece2 = fragPiece{off: 2960, end: 3008, last: true}
)

// checkTable compares the table's bookkeeping with what its slots hold.
func checkTable(t *testing.T, ft *fragTable) {
	t.Helper()
	held, used := 0, 0
	for i := range ft.slots {
		e := &ft.slots[i]
		if !e.used {
			continue
		}
		used++
		if j, ok := ft.index[e.key]; !ok || int(j) != i {
			t.Fatalf("slot %d (%+v) not indexed", i, e.key)
		}
		for _, f := range e.held {
			held += len(f)
		}
	}
	if ft.heldBytes != held || ft.used != used || len(ft.index) != used {
		t.Fatalf("heldBytes %d (slots hold %d), used %d (slots %d), index %d", ft.heldBytes, held, ft.used, used, len(ft.index))
	}
	if held > fragMaxHeldBytes || used > fragMaxDatagrams {
		t.Fatalf("%d bytes held in %d datagrams, past the limits", held, used)
	}
}

func TestFragTableFirstThenLater(t *testing.T) {
	ft := newFragTable()
	k := fragTestKey(1)
	if v := ft.later(k, piece1); v != fragUnknown {
		t.Fatalf("later before first = %d, want unknown", v)
	}
	if held := ft.first(k, fragAccept, piece0, 0); len(held) != 0 {
		t.Fatalf("first returned %d held fragments, want none", len(held))
	}
	if v := ft.later(k, piece1); v != fragAccept {
		t.Fatalf("later = %d, want accept", v)
	}
	// The key is the whole triple: another id, source or protocol is
	// another datagram.
	for _, o := range []fragKey{
		{src: k.src, id: 2, proto: testUDP},
		{src: addr4(k.src.v4() + 1), id: 1, proto: testUDP},
		{src: k.src, id: 1, proto: testTCP},
	} {
		if v := ft.later(o, piece1); v != fragUnknown {
			t.Errorf("later(%+v) = %d, want unknown", o, v)
		}
	}
	if ft.len() != 1 {
		t.Fatalf("len = %d before the last fragment, want 1", ft.len())
	}
	if v := ft.later(k, piece2); v != fragAccept {
		t.Fatalf("last fragment = %d, want accept", v)
	}
	// Complete: forgotten at once.
	if ft.len() != 0 {
		t.Fatalf("len = %d after the datagram completed, want 0", ft.len())
	}
	checkTable(t, ft)
}

func TestFragTableLaterBeforeFirst(t *testing.T) {
	ft := newFragTable()
	k := fragTestKey(1)
	a := []byte("second fragment")
	b := []byte("third")
	if !ft.hold(k, a, piece2, 0) || !ft.hold(k, b, piece1, 0) {
		t.Fatal("hold refused a fragment in an empty table")
	}
	if v := ft.later(k, piece1); v != fragUnknown {
		t.Fatalf("later with only held fragments = %d, want unknown", v)
	}
	// hold must copy: the reader reuses its buffer for the next frame.
	a[0] = 'X'
	held := ft.first(k, fragDrop, piece0, 1)
	if len(held) != 2 || string(held[0]) != "second fragment" || string(held[1]) != "third" {
		t.Fatalf("first returned %q, want the two held fragments in order", held)
	}
	if ft.len() != 0 || ft.heldBytes != 0 {
		t.Fatalf("len %d, heldBytes %d after the whole datagram came; want it forgotten", ft.len(), ft.heldBytes)
	}
	checkTable(t, ft)
}

// Datagrams that complete leave no trace: a steady rate of fragmented
// datagrams never fills the table, however long it runs. (Keeping each
// verdict for 30 s dropped everything above 4096 datagrams per 30 s.)
func TestFragTableCompletedDatagramsFreed(t *testing.T) {
	ft := newFragTable()
	now := int64(0)
	for i := range 100_000 {
		k := fragKey{src: addr4(uint32(i / 65536)), id: uint32(uint16(i)), proto: testUDP}
		now += int64(200 * time.Microsecond) // 5,000 datagrams a second
		want := fragAccept
		if i%3 == 0 {
			want = fragDrop
		}
		ft.first(k, want, piece0, now)
		if v := ft.later(k, piece1); v != want {
			t.Fatalf("datagram %d: second fragment %d, want %d", i, v, want)
		}
		if v := ft.later(k, piece2); v != want {
			t.Fatalf("datagram %d: last fragment %d, want %d", i, v, want)
		}
	}
	if ft.len() != 0 {
		t.Fatalf("len = %d after 100,000 complete datagrams", ft.len())
	}
}

// Completion is exact whatever the order and however the pieces overlap or
// repeat: a datagram is forgotten when, and only when, every byte came.
func TestFragTableCompletion(t *testing.T) {
	tests := []struct {
		name   string
		pieces []fragPiece
		done   int // index of the piece that completes it; -1: never
	}{
		{"in order", []fragPiece{piece0, piece1, piece2}, 2},
		{"last first", []fragPiece{piece0, piece2, piece1}, 2},
		{"duplicate middle", []fragPiece{piece0, piece1, piece1, piece2}, 3},
		{"duplicate does not complete", []fragPiece{piece0, piece2, piece2}, -1},
		{"overlapping", []fragPiece{{0, 1000, false}, {800, 2000, false}, {1990, 3008, true}}, 2},
		{"gap", []fragPiece{{0, 1000, false}, {1008, 3008, true}}, -1},
		{"empty last", []fragPiece{{0, 1480, false}, {1480, 1480, true}}, 1},
		{"only first", []fragPiece{piece0}, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ft := newFragTable()
			k := fragTestKey(7)
			for i, p := range tt.pieces {
				if i == 0 {
					ft.first(k, fragAccept, p, 0)
				} else if v := ft.later(k, p); v != fragAccept && i <= tt.done {
					t.Fatalf("piece %d: verdict %d before completion", i, v)
				}
				if gone, want := ft.len() == 0, tt.done >= 0 && i >= tt.done; gone != want {
					t.Fatalf("after piece %d: forgotten %v, want completion at %d", i, gone, tt.done)
				}
			}
			if tt.done < 0 && ft.len() != 1 {
				t.Fatal("an incomplete datagram was forgotten")
			}
		})
	}
}

// A datagram torn into more disjoint pieces than the table tracks is never
// taken for complete; it is forgotten when it expires.
func TestFragTableTorn(t *testing.T) {
	ft := newFragTable()
	k := fragTestKey(3)
	ft.first(k, fragAccept, fragPiece{0, 8, false}, 0)
	for i := 1; i <= fragSpans+2; i++ {
		ft.later(k, fragPiece{uint32(16 * i), uint32(16*i + 8), i == fragSpans+2})
	}
	for i := 0; i <= fragSpans+2; i++ {
		ft.later(k, fragPiece{uint32(16*i + 8), uint32(16*i + 16), false})
	}
	if ft.len() != 1 || ft.later(k, piece0) != fragAccept {
		t.Fatal("a torn datagram was forgotten before it expired")
	}
	ft.sweep(int64(fragTimeout) + 1)
	if ft.len() != 0 {
		t.Fatal("a torn datagram outlived its timeout")
	}
	checkTable(t, ft)
}

// A flood of spoofed later fragments whose first never comes fills the
// table, but ages out in the order it came: a real datagram, whose
// fragments come back to back, still gets through between them, and memory
// stays bounded. (First come, first kept: 4096 bogus fragments blocked all
// fragmented traffic for 30 s.)
func TestFragTableSpoofedFlood(t *testing.T) {
	ft := newFragTable()
	rng := rand.New(rand.NewPCG(1, 2))
	junk := make([]byte, 1500)
	now := int64(0)
	ok := 0
	const legit = 2000
	for i := range legit {
		for range 100 { // line rate of bogus fragments between two real datagrams
			k := fragKey{src: addr4(rng.Uint32()), id: uint32(uint16(rng.Uint32())), proto: testUDP}
			ft.hold(k, junk, fragPiece{off: 1480, end: 2960}, now)
			now += int64(time.Microsecond)
		}
		k := fragKey{src: addr4(0xc6336407), id: uint32(uint16(i)), proto: testUDP}
		ft.first(k, fragAccept, piece0, now)
		if ft.later(k, piece1) == fragAccept && ft.later(k, piece2) == fragAccept {
			ok++
		}
	}
	if ok != legit {
		t.Errorf("%d of %d real datagrams got through the flood", ok, legit)
	}
	checkTable(t, ft)
	if ft.evicted.Load() == 0 {
		t.Error("no bogus fragment was ever evicted")
	}
	// Out of order, a real datagram's later fragments are held and
	// released by the first, in the middle of the flood too.
	k := fragKey{src: addr4(0xc6336408), id: 1, proto: testUDP}
	ft.hold(k, []byte("later"), piece2, now)
	for range 1000 {
		ft.hold(fragKey{src: addr4(rng.Uint32()), id: 9, proto: testUDP}, junk[:100], piece1, now)
	}
	if held := ft.first(k, fragAccept, piece0, now); len(held) != 1 {
		t.Errorf("held fragment lost to %d bogus ones since", 1000)
	}
}

func TestFragTableMaxHeldPerDatagram(t *testing.T) {
	ft := newFragTable()
	k := fragTestKey(1)
	for i := range fragMaxHeldPerDatagram {
		if !ft.hold(k, []byte{byte(i)}, fragPiece{uint32(8 * (i + 1)), uint32(8*(i+1) + 1), false}, 0) {
			t.Fatalf("hold %d refused below the limit", i)
		}
	}
	if ft.hold(k, []byte{0xff}, piece1, 0) {
		t.Fatal("hold accepted one fragment past fragMaxHeldPerDatagram")
	}
	if held := ft.first(k, fragAccept, piece0, 0); len(held) != fragMaxHeldPerDatagram {
		t.Fatalf("first returned %d fragments, want %d", len(held), fragMaxHeldPerDatagram)
	}
	checkTable(t, ft)
}

// Held bytes are bounded: the oldest datagrams' fragments go first.
func TestFragTableMaxHeldBytes(t *testing.T) {
	ft := newFragTable()
	big := make([]byte, 64<<10)
	n := fragMaxHeldBytes/len(big) + 10
	for i := range n {
		if !ft.hold(fragTestKey(i), big, piece1, 0) {
			t.Fatalf("hold %d refused: the oldest should make room", i)
		}
		checkTable(t, ft)
	}
	if held := ft.first(fragTestKey(0), fragAccept, piece0, 0); len(held) != 0 {
		t.Error("the oldest datagram kept its fragments past the byte limit")
	}
	if held := ft.first(fragTestKey(n-1), fragAccept, piece0, 0); len(held) != 1 {
		t.Error("the newest datagram lost its fragment")
	}
	if ft.hold(fragTestKey(n), make([]byte, fragMaxHeldBytes+1), piece1, 0) {
		t.Error("hold took one fragment larger than the whole budget")
	}
	checkTable(t, ft)
}

// The table holds at most fragMaxDatagrams; a new one evicts the oldest.
func TestFragTableEvictsOldest(t *testing.T) {
	ft := newFragTable()
	for i := range fragMaxDatagrams + 10 {
		ft.first(fragTestKey(i), fragAccept, piece0, int64(i))
	}
	if ft.len() != fragMaxDatagrams {
		t.Fatalf("len = %d, want %d", ft.len(), fragMaxDatagrams)
	}
	for i := range 10 {
		if v := ft.later(fragTestKey(i), piece1); v != fragUnknown {
			t.Errorf("datagram %d, among the oldest, still known", i)
		}
	}
	if v := ft.later(fragTestKey(fragMaxDatagrams+9), piece1); v != fragAccept {
		t.Error("the newest datagram was evicted")
	}
	checkTable(t, ft)
}

func TestFragTableExpiry(t *testing.T) {
	ft := newFragTable()
	ft.first(fragTestKey(1), fragAccept, piece0, 0)
	ft.hold(fragTestKey(2), []byte("x"), piece1, 0)
	ft.sweep(int64(fragTimeout) - 1)
	if ft.len() != 2 {
		t.Fatalf("len = %d before the timeout, want 2", ft.len())
	}
	ft.sweep(int64(fragTimeout) + tSec)
	if ft.len() != 0 || ft.heldBytes != 0 {
		t.Fatalf("len %d, heldBytes %d after the timeout", ft.len(), ft.heldBytes)
	}
	if ft.evicted.Load() != 1 {
		t.Errorf("evicted = %d, want the one held fragment", ft.evicted.Load())
	}
	checkTable(t, ft)
}

// The first fragment renews a datagram whose later fragments were held.
func TestFragTableFirstRenewsExpiry(t *testing.T) {
	ft := newFragTable()
	ft.hold(fragTestKey(1), []byte("x"), piece1, 0)
	ft.first(fragTestKey(1), fragAccept, piece0, int64(fragTimeout)-tSec)
	ft.sweep(int64(fragTimeout) + tSec)
	if v := ft.later(fragTestKey(1), piece2); v != fragAccept {
		t.Fatal("the first fragment did not renew its datagram")
	}
}

// Expiry is checked at most once a second, from first and hold.
func TestFragTableExpiryBySweepingCalls(t *testing.T) {
	ft := newFragTable()
	ft.hold(fragTestKey(1), []byte("x"), piece1, 0)
	ft.hold(fragTestKey(2), []byte("y"), piece1, int64(fragTimeout)+tSec)
	if ft.later(fragTestKey(1), piece1) != fragUnknown || ft.len() != 1 {
		t.Fatalf("len = %d: the expired datagram stayed", ft.len())
	}
}
