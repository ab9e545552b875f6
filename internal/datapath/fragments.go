package datapath

import "time"

// Limits of the fragment table. They bound what a flood of bogus fragments
// can cost: past them new datagrams are dropped, as the kernel's own
// reassembly drops past ipfrag_high_thresh.
const (
	fragTimeout            = 30 * time.Second // the kernel's ipfrag_time
	fragMaxDatagrams       = 4096
	fragMaxHeldBytes       = 4 << 20
	fragMaxHeldPerDatagram = 64
)

// fragKey names one IPv4 datagram to the VIP (the destination is implied).
type fragKey struct {
	src   uint32
	id    uint16
	proto uint8
}

// fragVerdict is what the first fragment decided for its datagram.
type fragVerdict int

const (
	fragUnknown fragVerdict = iota // first fragment not seen yet
	fragAccept
	fragDrop
)

type fragEntry struct {
	verdict fragVerdict
	expires int64
	held    [][]byte // later fragments that arrived before the first
}

// fragTable remembers the verdict on each fragmented datagram whose owner
// only its first fragment can tell (it alone carries the ports). The
// kernel target never had this problem: conntrack reassembled before it
// hashed. Fragments that arrive before their first fragment are held (copied)
// until it comes or the entry expires. Only the reader goroutine touches it.
type fragTable struct {
	entries   map[fragKey]*fragEntry
	heldBytes int
	nextSweep int64
}

func newFragTable() *fragTable { return &fragTable{entries: make(map[fragKey]*fragEntry)} }

// first records the verdict on a datagram from its first fragment and
// returns the fragments held for it, to be delivered or dropped by the caller.
func (t *fragTable) first(k fragKey, v fragVerdict, now int64) [][]byte {
	t.sweep(now)
	e := t.entries[k]
	if e == nil {
		if len(t.entries) >= fragMaxDatagrams {
			return nil
		}
		e = &fragEntry{}
		t.entries[k] = e
	}
	e.verdict = v
	e.expires = now + int64(fragTimeout)
	held := e.held
	e.held = nil
	for _, f := range held {
		t.heldBytes -= len(f)
	}
	return held
}

// lookup returns the verdict on a later fragment's datagram.
func (t *fragTable) lookup(k fragKey) fragVerdict {
	if e := t.entries[k]; e != nil {
		return e.verdict
	}
	return fragUnknown
}

// hold keeps a copy of a fragment until its datagram's owner is known. It
// reports false when the table is full and the fragment must be dropped.
func (t *fragTable) hold(k fragKey, frame []byte, now int64) bool {
	t.sweep(now)
	e := t.entries[k]
	if e == nil {
		if len(t.entries) >= fragMaxDatagrams {
			return false
		}
		e = &fragEntry{expires: now + int64(fragTimeout)}
		t.entries[k] = e
	}
	if len(e.held) >= fragMaxHeldPerDatagram || t.heldBytes+len(frame) > fragMaxHeldBytes {
		return false
	}
	e.held = append(e.held, append([]byte(nil), frame...))
	t.heldBytes += len(frame)
	return true
}

// sweep drops expired datagrams, at most once a second.
func (t *fragTable) sweep(now int64) {
	if now < t.nextSweep {
		return
	}
	t.nextSweep = now + int64(time.Second)
	for k, e := range t.entries {
		if now >= e.expires {
			for _, f := range e.held {
				t.heldBytes -= len(f)
			}
			delete(t.entries, k)
		}
	}
}

func (t *fragTable) len() int { return len(t.entries) }
