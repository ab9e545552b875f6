package datapath

import (
	"sync/atomic"
	"time"
)

// Limits of the fragment table, per worker. Past fragMaxDatagrams the
// oldest datagram is evicted for a new one, and past fragMaxHeldBytes the
// oldest held fragments go: a flood of bogus fragments then costs bounded
// memory and ages out in the order it came, while a real datagram, whose
// fragments arrive back to back, completes long before its turn.
const (
	fragTimeout            = 30 * time.Second // the kernel's ipfrag_time
	fragMaxDatagrams       = 4096
	fragMaxHeldBytes       = 4 << 20
	fragMaxHeldPerDatagram = 64
	// fragSpans is how many disjoint pieces of one datagram are tracked
	// while it is incomplete. Fragments in order merge into one; a
	// datagram torn into more pieces than this at once is left to expire.
	fragSpans = 8
)

// fragKey names one datagram to the VIP (the destination is implied). For
// IPv6, proto is the fragment header's next header, the same in every
// fragment.
type fragKey struct {
	src   addr
	id    uint32
	proto uint8
}

// fragVerdict is what the first fragment decided for its datagram.
type fragVerdict int

const (
	fragUnknown fragVerdict = iota // first fragment not seen yet
	fragAccept
	fragDrop
)

// fragPiece is where one fragment's payload lies in its datagram, in bytes.
type fragPiece struct {
	off, end uint32
	last     bool // more-fragments clear: end is the datagram's length
}

// pieceOf is the piece a fragment carries.
func pieceOf(p *ipPacket) fragPiece {
	off := uint32(p.fragOff) * 8
	return fragPiece{off: off, end: off + p.fragLen, last: !p.more}
}

type fragSpan struct{ off, end uint32 }

type fragEntry struct {
	key     fragKey
	used    bool
	verdict fragVerdict
	expires int64
	total   uint32 // the datagram's payload length once its last fragment came
	spans   [fragSpans]fragSpan
	nspans  int
	torn    bool     // more disjoint pieces than spans: only expiry ends it
	held    [][]byte // later fragments that arrived before the first
}

// cover adds a piece to what has arrived of the datagram.
func (e *fragEntry) cover(p fragPiece) {
	if p.last {
		e.total = p.end
	}
	if p.end <= p.off || e.torn {
		return
	}
	// Keep the spans sorted and disjoint: find where the piece goes,
	// swallow every span it touches, insert the union.
	s := fragSpan{p.off, p.end}
	i := 0
	for i < e.nspans && e.spans[i].end < s.off {
		i++
	}
	j := i
	for j < e.nspans && e.spans[j].off <= s.end {
		s.off = min(s.off, e.spans[j].off)
		s.end = max(s.end, e.spans[j].end)
		j++
	}
	if j == i && e.nspans == fragSpans {
		e.torn = true
		return
	}
	// Replace spans[i:j] with s.
	n := copy(e.spans[i+1:], e.spans[j:e.nspans])
	e.spans[i] = s
	e.nspans = i + 1 + n
}

// complete tells whether every byte of the datagram has arrived.
func (e *fragEntry) complete() bool {
	return !e.torn && e.total > 0 && e.nspans == 1 && e.spans[0].off == 0 && e.spans[0].end >= e.total
}

// fragTable remembers the verdict on each fragmented datagram whose owner
// only its first fragment can tell (it alone carries the ports). The
// kernel target never had this problem: conntrack reassembled before it
// hashed. Fragments that arrive before their first fragment are held (copied)
// until it comes. A datagram is forgotten as soon as all of it has passed,
// so the table holds only datagrams in flight; one that never completes is
// evicted after fragTimeout, or sooner, oldest first, when the table is
// full. Only the reader goroutine touches it, apart from the counter.
type fragTable struct {
	slots     []fragEntry // reused in the order they were taken
	index     map[fragKey]int32
	next      int // the slot to take next, the oldest taken
	used      int
	heldBytes int
	nextSweep int64

	// evicted counts held fragments dropped to make room or on expiry.
	evicted atomic.Uint64
}

func newFragTable() *fragTable { return newFragTableOf(fragMaxDatagrams) }

// newFragTableOf makes a table of n datagrams.
func newFragTableOf(n int) *fragTable {
	return &fragTable{slots: make([]fragEntry, n), index: make(map[fragKey]int32)}
}

// entry returns the datagram's entry, or nil.
func (t *fragTable) entry(k fragKey) *fragEntry {
	i, ok := t.index[k]
	if !ok {
		return nil
	}
	return &t.slots[i]
}

// take returns a fresh entry for k, evicting the oldest datagram if the
// slot that is next in turn is still in use.
func (t *fragTable) take(k fragKey, now int64) *fragEntry {
	e := &t.slots[t.next]
	if e.used {
		t.free(e)
	}
	t.index[k] = int32(t.next)
	t.next = (t.next + 1) % len(t.slots)
	t.used++
	*e = fragEntry{key: k, used: true, expires: now + int64(fragTimeout), held: e.held[:0]}
	return e
}

// free forgets an entry; fragments it still holds are dropped.
func (t *fragTable) free(e *fragEntry) {
	for i, f := range e.held {
		t.heldBytes -= len(f)
		e.held[i] = nil
	}
	t.evicted.Add(uint64(len(e.held)))
	e.held = e.held[:0]
	delete(t.index, e.key)
	e.used = false
	t.used--
}

// first records the verdict on a datagram from its first fragment and
// returns the fragments held for it, to be delivered or dropped by the
// caller.
func (t *fragTable) first(k fragKey, v fragVerdict, p fragPiece, now int64) [][]byte {
	t.sweep(now)
	e := t.entry(k)
	if e == nil {
		e = t.take(k, now)
	}
	e.verdict = v
	e.expires = now + int64(fragTimeout)
	e.cover(p)
	var held [][]byte
	if len(e.held) > 0 {
		held = make([][]byte, len(e.held))
		copy(held, e.held)
		for i, f := range e.held {
			t.heldBytes -= len(f)
			e.held[i] = nil
		}
		e.held = e.held[:0]
	}
	if e.complete() {
		t.free(e)
	}
	return held
}

// later returns the verdict on a later fragment's datagram, and forgets the
// datagram once this fragment completes it.
func (t *fragTable) later(k fragKey, p fragPiece) fragVerdict {
	e := t.entry(k)
	if e == nil || e.verdict == fragUnknown {
		return fragUnknown
	}
	v := e.verdict
	e.cover(p)
	if e.complete() {
		t.free(e)
	}
	return v
}

// hold keeps a copy of a fragment until its datagram's owner is known. It
// reports false when the fragment must be dropped: its datagram holds too
// many already.
func (t *fragTable) hold(k fragKey, frame []byte, p fragPiece, now int64) bool {
	t.sweep(now)
	if len(frame) > fragMaxHeldBytes {
		return false
	}
	e := t.entry(k)
	if e == nil {
		e = t.take(k, now)
	}
	if len(e.held) >= fragMaxHeldPerDatagram {
		return false
	}
	// Make room by dropping the oldest datagrams' held fragments, never
	// this one's.
	for i, n := t.next, 0; t.heldBytes+len(frame) > fragMaxHeldBytes; i, n = (i+1)%len(t.slots), n+1 {
		if n == len(t.slots) {
			return false
		}
		if o := &t.slots[i]; o.used && o != e && len(o.held) > 0 {
			t.free(o)
		}
	}
	e.held = append(e.held, append([]byte(nil), frame...))
	t.heldBytes += len(frame)
	e.cover(p)
	return true
}

// sweep drops expired datagrams, at most once a second.
func (t *fragTable) sweep(now int64) {
	if now < t.nextSweep {
		return
	}
	t.nextSweep = now + int64(time.Second)
	for i := range t.slots {
		if e := &t.slots[i]; e.used && now >= e.expires {
			t.free(e)
		}
	}
}

func (t *fragTable) len() int { return t.used }
