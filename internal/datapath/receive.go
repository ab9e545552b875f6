package datapath

import (
	"encoding/binary"
	"net"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// maxFrame is the largest frame the socket hands over: a 64 KB GSO
// super-frame plus its Ethernet header and some slack for VLAN tags.
const maxFrame = 65536 + ethHdrLen + 8

// maxARPFrame is the largest frame the ARP socket reads: a jumbo frame.
const maxARPFrame = 9216

// worker is one reader: its own capture socket (one of the fanout group),
// its own TAP queue, and its own fragment table (the fanout hashes every
// fragment of a datagram to the same worker). The flow table is shared.
type worker struct {
	d    *Datapath
	att  *attachment
	beat atomic.Int64 // when the reader last came round its loop (Unix ns)
	sock *captureSocket
	// send writes a frame out of the interface: the socket's, or in tests
	// a recorder.
	send  func(frame []byte, dst net.HardwareAddr) error
	tap   int
	frags *fragTable
	batch *batch
	stats counters
}

type counters struct {
	owned, notOwned, held, malformed, arpReplies, ndReplies, heldFrags, droppedFrag, tapErrors atomic.Uint64
}

// addTo adds the counters to s.
func (c *counters) addTo(s *Stats) {
	s.Owned += c.owned.Load()
	s.NotOwned += c.notOwned.Load()
	s.Held += c.held.Load()
	s.Malformed += c.malformed.Load()
	s.ARPReplies += c.arpReplies.Load()
	s.NDReplies += c.ndReplies.Load()
	s.HeldFrags += c.heldFrags.Load()
	s.DroppedFrag += c.droppedFrag.Load()
	s.TapErrors += c.tapErrors.Load()
}

// addStats adds the worker's counters to s.
func (w *worker) addStats(s *Stats) {
	w.stats.addTo(s)
	s.DroppedFrag += w.frags.evicted.Load()
}

// newWorker makes a worker for frames of up to maxFrame bytes that writes to
// the TAP queue tapFD (-1 for the ARP worker, which never does).
func newWorker(d *Datapath, a *attachment, sock *captureSocket, tapFD, maxFrame int) *worker {
	return &worker{d: d, att: a, sock: sock, send: sock.send, tap: tapFD, frags: newFragTable(), batch: newBatch(vnetHdrLen + maxFrame)}
}

// run reads batches of frames until its attachment ends; each frame is
// decided and either written to the TAP or dropped. It keeps its OS thread:
// the thread sleeps in recvmmsg and the kernel wakes it directly.
func (w *worker) run() {
	defer w.att.wg.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for !w.att.stop.Load() {
		// The read times out every readTimeout: a reader that does not
		// come round for much longer is stuck (see Datapath.Stalled).
		w.beat.Store(time.Now().UnixNano())
		n, err := w.batch.recv(w.sock.fd)
		switch err {
		case nil:
		case unix.EAGAIN, unix.EINTR:
			// Quiet for a read timeout: a good moment to let go of
			// fragments whose datagram never completed.
			w.frags.sweep(time.Now().UnixNano())
			continue
		default:
			// The interface went down (the socket resumes when it comes
			// up) or away (the daemon attaches anew when it comes back):
			// the daemon's link watch reports either.
			w.d.log.Debug("capture read", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		now := time.Now().UnixNano()
		for i := 0; i < n; i++ {
			if w.batch.truncated(i) {
				w.stats.malformed.Add(1)
				continue
			}
			w.handle(w.batch.frame(i), now)
		}
	}
}

// handle takes one virtio-net header plus frame, read at now. It must not
// retain b.
func (w *worker) handle(b []byte, now int64) {
	if len(b) < vnetHdrLen+ethHdrLen {
		w.stats.malformed.Add(1)
		return
	}
	frame := b[vnetHdrLen:]
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case etherTypeIPv4:
		var p ipPacket
		if w.d.v6 || !parseIPv4(frame[ethHdrLen:], &p) || p.dst != w.d.vip {
			w.stats.malformed.Add(1)
			return
		}
		w.handleIP(&p, b, now)
	case etherTypeIPv6:
		var p ipPacket
		if !w.d.v6 || !parseIPv6(frame[ethHdrLen:], &p) {
			w.stats.malformed.Add(1)
			return
		}
		if p.proto == protoICMPv6 && len(p.l4) > 0 && p.l4[0] == ndNeighborSolicit {
			w.handleNS(frame, &p)
			return
		}
		if p.dst != w.d.vip {
			w.stats.malformed.Add(1)
			return
		}
		w.handleIP(&p, b, now)
	case etherTypeARP:
		w.handleARP(frame)
	default:
		w.stats.malformed.Add(1)
	}
}

// handleIP decides one IPv4 or IPv6 packet to the VIP: the per-packet path.
func (w *worker) handleIP(p *ipPacket, b []byte, now int64) {
	d := w.d
	if p.proto == protoFloodProbe && !p.fragment() {
		// Another node's flood check (flood.go), never delivered.
		if !d.sawFlood(p.l4, net.HardwareAddr(b[vnetHdrLen+6:vnetHdrLen+12]), floodProbe) {
			w.stats.notOwned.Add(1)
		}
		return
	}
	if !d.viaFragmentTable(p) {
		switch d.accept(p, b, now) {
		case verdictAnswer:
			w.deliver(b, true)
		case verdictHold:
			w.stats.held.Add(1)
		default:
			w.stats.notOwned.Add(1)
		}
		return
	}
	k := fragKey{src: p.src, id: p.id, proto: p.proto}
	piece := pieceOf(p)
	if p.fragOff == 0 {
		// A fragmented datagram is never held: its later fragments would
		// have to be held with it.
		ok := d.accept(p, nil, now) == verdictAnswer
		v := fragDrop
		if ok {
			v = fragAccept
		}
		held := w.frags.first(k, v, piece, now)
		w.deliver(b, ok)
		for _, h := range held {
			w.deliver(h, ok)
		}
		return
	}
	if v := w.frags.later(k, piece); v != fragUnknown {
		w.deliver(b, v == fragAccept)
		return
	}
	if w.frags.hold(k, b, piece, now) {
		w.stats.heldFrags.Add(1)
	} else {
		w.stats.droppedFrag.Add(1)
	}
}

// deliver writes b to the worker's TAP queue if accepted, else drops it.
func (w *worker) deliver(b []byte, accepted bool) {
	if !accepted {
		w.stats.notOwned.Add(1)
		return
	}
	w.d.tap.deliver(w.tap, b, &w.stats)
}

// handleARP answers requests for the VIP with the cluster MAC. Every node
// answers, with identical replies, as every node did with the kernel target:
// the client learns one MAC whoever replies first.
func (w *worker) handleARP(frame []byte) {
	d := w.d
	if d.v6 {
		return
	}
	sha, spa, ok := arpRequestForVIP(frame, d.vip4)
	if !ok {
		return
	}
	reply, err := arpFrame(sha, w.att.ifi.HardwareAddr, arpOpReply, d.cfg.ClusterMAC, d.vip4, sha, spa)
	if err == nil {
		err = w.send(reply, sha)
	}
	if err != nil {
		d.log.Warn("ARP reply", "to", sha.String(), "err", err)
		return
	}
	w.stats.arpReplies.Add(1)
}
