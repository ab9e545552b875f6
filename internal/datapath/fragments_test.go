package datapath

import (
	"bytes"
	"testing"
	"time"
)

const tSec = int64(time.Second)

func fragTestKey(n int) fragKey { return fragKey{src: 0xc6336407, id: uint16(n), proto: testUDP} }

// checkHeldBytes compares heldBytes with the bytes the entries really hold.
func checkHeldBytes(t *testing.T, ft *fragTable) {
	t.Helper()
	n := 0
	for _, e := range ft.entries {
		for _, f := range e.held {
			n += len(f)
		}
	}
	if ft.heldBytes != n {
		t.Fatalf("heldBytes = %d, entries hold %d", ft.heldBytes, n)
	}
}

func TestFragTableFirstThenLater(t *testing.T) {
	ft := newFragTable()
	if n := ft.lookup(fragTestKey(1)); n != 0 {
		t.Fatalf("lookup before first = %d, want 0", n)
	}
	if held := ft.first(fragTestKey(1), 3, 0); len(held) != 0 {
		t.Fatalf("first returned %d held fragments, want none", len(held))
	}
	if n := ft.lookup(fragTestKey(1)); n != 3 {
		t.Fatalf("lookup = %d, want 3", n)
	}
	// The key is the whole triple: another id, source or protocol is
	// another datagram.
	for _, k := range []fragKey{
		{src: fragTestKey(1).src, id: 2, proto: testUDP},
		{src: fragTestKey(1).src + 1, id: 1, proto: testUDP},
		{src: fragTestKey(1).src, id: 1, proto: testTCP},
	} {
		if n := ft.lookup(k); n != 0 {
			t.Errorf("lookup(%+v) = %d, want 0", k, n)
		}
	}
}

func TestFragTableLaterBeforeFirst(t *testing.T) {
	ft := newFragTable()
	a := []byte("second fragment")
	b := []byte("third")
	if !ft.hold(fragTestKey(1), a, 0) || !ft.hold(fragTestKey(1), b, 1) {
		t.Fatal("hold refused a fragment in an empty table")
	}
	if n := ft.lookup(fragTestKey(1)); n != 0 {
		t.Fatalf("lookup with only held fragments = %d, want 0", n)
	}
	if ft.heldBytes != len(a)+len(b) {
		t.Fatalf("heldBytes = %d, want %d", ft.heldBytes, len(a)+len(b))
	}
	// hold must copy: the reader reuses its buffer for the next frame.
	a[0] = 'X'

	held := ft.first(fragTestKey(1), 2, 2)
	if len(held) != 2 || string(held[0]) != "second fragment" || string(held[1]) != "third" {
		t.Fatalf("first returned %q, want the two held fragments in order", held)
	}
	if ft.heldBytes != 0 {
		t.Fatalf("heldBytes after first = %d, want 0", ft.heldBytes)
	}
	if n := ft.lookup(fragTestKey(1)); n != 2 {
		t.Fatalf("lookup after first = %d, want 2", n)
	}
	if again := ft.first(fragTestKey(1), 2, 3); len(again) != 0 {
		t.Fatalf("a second first returned %q again", again)
	}
	checkHeldBytes(t, ft)
}

func TestFragTableMaxDatagrams(t *testing.T) {
	ft := newFragTable()
	for i := range fragMaxDatagrams {
		if !ft.hold(fragTestKey(i), []byte{1}, 0) {
			t.Fatalf("hold of datagram %d refused below the limit", i)
		}
	}
	if ft.len() != fragMaxDatagrams {
		t.Fatalf("len = %d, want %d", ft.len(), fragMaxDatagrams)
	}
	if ft.hold(fragTestKey(fragMaxDatagrams), []byte{1}, 0) {
		t.Fatal("hold of a new datagram accepted in a full table")
	}
	if ft.first(fragTestKey(fragMaxDatagrams), 1, 0); ft.lookup(fragTestKey(fragMaxDatagrams)) != 0 {
		t.Fatal("first recorded a new datagram in a full table")
	}
	// Datagrams already in the table go on.
	if !ft.hold(fragTestKey(0), []byte{2}, 0) {
		t.Fatal("hold of a known datagram refused in a full table")
	}
	if held := ft.first(fragTestKey(0), 1, 0); len(held) != 2 {
		t.Fatalf("first of a known datagram returned %d fragments, want 2", len(held))
	}
	if ft.len() > fragMaxDatagrams {
		t.Fatalf("len = %d, above the limit %d", ft.len(), fragMaxDatagrams)
	}
	checkHeldBytes(t, ft)
}

func TestFragTableMaxHeldPerDatagram(t *testing.T) {
	ft := newFragTable()
	for i := range fragMaxHeldPerDatagram {
		if !ft.hold(fragTestKey(1), []byte{byte(i)}, 0) {
			t.Fatalf("hold %d refused below the limit", i)
		}
	}
	if ft.hold(fragTestKey(1), []byte{0xff}, 0) {
		t.Fatal("hold accepted one fragment past fragMaxHeldPerDatagram")
	}
	if !ft.hold(fragTestKey(2), []byte{0xff}, 0) {
		t.Fatal("the per-datagram limit refused another datagram")
	}
	if held := ft.first(fragTestKey(1), 1, 0); len(held) != fragMaxHeldPerDatagram {
		t.Fatalf("first returned %d fragments, want %d", len(held), fragMaxHeldPerDatagram)
	}
	checkHeldBytes(t, ft)
}

func TestFragTableMaxHeldBytes(t *testing.T) {
	ft := newFragTable()
	const size = 60000
	frame := make([]byte, size)
	fit := fragMaxHeldBytes / size
	// One fragment per datagram keeps the per-datagram limit out of the way.
	for i := range fit {
		if !ft.hold(fragTestKey(i), frame, 0) {
			t.Fatalf("hold %d (%d bytes held) refused below the limit", i, ft.heldBytes)
		}
	}
	if ft.hold(fragTestKey(fit), frame, 0) {
		t.Fatalf("hold accepted %d bytes with %d of %d held", size, ft.heldBytes, fragMaxHeldBytes)
	}
	// A fragment that still fits is taken.
	small := make([]byte, fragMaxHeldBytes-ft.heldBytes)
	if !ft.hold(fragTestKey(fit+1), small, 0) {
		t.Fatalf("hold refused %d bytes that exactly fill the table", len(small))
	}
	if ft.heldBytes != fragMaxHeldBytes {
		t.Fatalf("heldBytes = %d, want %d", ft.heldBytes, fragMaxHeldBytes)
	}
	// Handing held fragments back frees their bytes.
	ft.first(fragTestKey(0), 1, 0)
	if !ft.hold(fragTestKey(fit), frame, 0) {
		t.Fatal("hold refused after first freed a fragment's bytes")
	}
	checkHeldBytes(t, ft)
}

func TestFragTableExpiry(t *testing.T) {
	timeout := int64(fragTimeout)
	ft := newFragTable()
	ft.hold(fragTestKey(1), []byte("held"), 0)
	ft.first(fragTestKey(2), 4, 0)

	ft.sweep(timeout - 1)
	if ft.len() != 2 {
		t.Fatalf("len = %d just before the timeout, want 2", ft.len())
	}
	// Sweeps run at most once a second: this one is skipped.
	ft.sweep(timeout)
	if ft.len() != 2 {
		t.Fatalf("len = %d after a sweep within a second of the last, want 2", ft.len())
	}
	ft.sweep(timeout - 1 + tSec)
	if ft.len() != 0 {
		t.Fatalf("len = %d after the timeout, want 0", ft.len())
	}
	if ft.heldBytes != 0 {
		t.Fatalf("heldBytes = %d after expiry, want 0", ft.heldBytes)
	}
	if n := ft.lookup(fragTestKey(2)); n != 0 {
		t.Fatalf("lookup of an expired datagram = %d, want 0", n)
	}
}

func TestFragTableFirstRenewsExpiry(t *testing.T) {
	timeout := int64(fragTimeout)
	ft := newFragTable()
	ft.hold(fragTestKey(1), []byte("held"), 0)
	ft.first(fragTestKey(1), 5, 20*tSec) // expires at 20s + timeout

	ft.sweep(timeout + tSec)
	if n := ft.lookup(fragTestKey(1)); n != 5 {
		t.Fatalf("lookup = %d after the held fragment's timeout, want 5: first must restart the clock", n)
	}
	ft.sweep(20*tSec + timeout)
	if ft.len() != 0 {
		t.Fatalf("len = %d after the first fragment's timeout, want 0", ft.len())
	}
}

func TestFragTableExpiryBySweepingCalls(t *testing.T) {
	// hold and first sweep themselves: a flood of new datagrams keeps
	// removing the old ones without a timer.
	timeout := int64(fragTimeout)
	ft := newFragTable()
	for i := range 10 {
		ft.hold(fragTestKey(i), bytes.Repeat([]byte{1}, 100), int64(i)*tSec)
	}
	ft.hold(fragTestKey(100), []byte{1}, timeout+4*tSec) // sweeps datagrams 0..4
	if ft.len() != 6 {
		t.Fatalf("len = %d, want 6 (datagrams 5..9 and 100)", ft.len())
	}
	checkHeldBytes(t, ft)
	ft.first(fragTestKey(200), 1, timeout+100*tSec) // sweeps everything else
	if ft.len() != 1 || ft.heldBytes != 0 {
		t.Fatalf("len = %d, heldBytes = %d; want 1 and 0", ft.len(), ft.heldBytes)
	}
}
