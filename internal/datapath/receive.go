package datapath

import (
	"encoding/binary"
	"net"
	"net/netip"
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

// worker is one reader of a capture group: its own capture socket (one of
// the fanout group of its EtherType), writing what it accepts to queue
// index of each cluster's TAP, and using lane index of each cluster's
// fragment tables (the fanout hashes every fragment of a datagram to the
// same worker). The flow tables are the clusters'.
type worker struct {
	g     *captureGroup
	index int
	beat  atomic.Int64 // when the reader last came round its loop (Unix ns)
	sock  *captureSocket
	// send writes a frame out of the interface: the socket's, or in tests
	// a recorder.
	send  func(frame []byte, dst net.HardwareAddr) error
	batch *batch
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

// newWorker makes reader index of g for frames of up to maxFrame bytes.
func newWorker(g *captureGroup, index int, sock *captureSocket, maxFrame int) *worker {
	return &worker{g: g, index: index, sock: sock, send: sock.send, batch: newBatch(vnetHdrLen + maxFrame)}
}

// run reads batches of frames until its group closes; each frame is
// decided and either written to a TAP or dropped. It keeps its OS thread:
// the thread sleeps in recvmmsg and the kernel wakes it directly.
func (w *worker) run() {
	defer w.g.wg.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for !w.g.stop.Load() {
		// The read times out every readTimeout: a reader that does not
		// come round for much longer is stuck (see Datapath.Stalled).
		w.beat.Store(time.Now().UnixNano())
		n, err := w.batch.recv(w.sock.fd)
		switch err {
		case nil:
		case unix.EAGAIN, unix.EINTR:
			// Quiet for a read timeout: a good moment to let go of
			// fragments whose datagram never completed.
			w.g.sweepFragments(w.index, time.Now().UnixNano())
			continue
		default:
			// The interface went down (the socket resumes when it comes
			// up) or away (the daemon attaches anew when it comes back):
			// the daemon's link watch reports either.
			time.Sleep(100 * time.Millisecond)
			continue
		}
		now := time.Now().UnixNano()
		w.g.batches.RLock()
		for i := 0; i < n; i++ {
			if w.batch.truncated(i) {
				w.g.strays.Add(1)
				continue
			}
			w.handle(w.batch.frame(i), now)
		}
		w.g.batches.RUnlock()
	}
}

// handle takes one virtio-net header plus frame, read at now, to the
// cluster it is for. It must not retain b.
func (w *worker) handle(b []byte, now int64) {
	if len(b) < vnetHdrLen+ethHdrLen {
		w.g.strays.Add(1)
		return
	}
	frame := b[vnetHdrLen:]
	// The cluster is the one the destination names, read from where the
	// capture filter read it: a packet that does not parse is counted as
	// that cluster's malformed.
	var p ipPacket
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case etherTypeIPv4:
		var dst addr
		if len(frame) >= ethHdrLen+ipv4MinHdrLen {
			dst = netip.AddrFrom4([4]byte(frame[ethHdrLen+16 : ethHdrLen+20])).As16()
		}
		if d := w.g.cluster(dst); d == nil || d.v6 {
			w.g.strays.Add(1)
		} else if !parseIPv4(frame[ethHdrLen:], &p) {
			d.stats.malformed.Add(1)
		} else {
			d.handleIP(w, &p, b, now)
		}
	case etherTypeIPv6:
		ok := parseIPv6(frame[ethHdrLen:], &p)
		if ok && p.proto == protoICMPv6 && len(p.l4) >= 24 && p.l4[0] == ndNeighborSolicit {
			if d := w.g.cluster(addr(p.l4[8:24])); d != nil && d.v6 {
				d.handleNS(w, frame, &p)
				return
			}
		}
		var dst addr
		if len(frame) >= ethHdrLen+ipv6HdrLen {
			dst = addr(frame[ethHdrLen+24 : ethHdrLen+40])
		}
		if d := w.g.cluster(dst); d == nil || !d.v6 {
			w.g.strays.Add(1)
		} else if !ok {
			d.stats.malformed.Add(1)
		} else {
			d.handleIP(w, &p, b, now)
		}
	case etherTypeARP:
		var target addr
		if len(frame) >= ethHdrLen+28 {
			target = netip.AddrFrom4([4]byte(frame[ethHdrLen+24 : ethHdrLen+28])).As16()
		}
		if d := w.g.cluster(target); d != nil && !d.v6 {
			d.handleARP(w, frame)
		} else {
			w.g.strays.Add(1)
		}
	default:
		w.g.strays.Add(1)
	}
}

// handleIP decides one IPv4 or IPv6 packet to the VIP: the per-packet path.
func (d *Datapath) handleIP(w *worker, p *ipPacket, b []byte, now int64) {
	if p.proto == protoFloodProbe && !p.fragment() {
		// Another node's flood check (flood.go), never delivered.
		if !d.sawFlood(p.l4, net.HardwareAddr(b[vnetHdrLen+6:vnetHdrLen+12]), floodProbe) {
			d.stats.notOwned.Add(1)
		}
		return
	}
	if !d.viaFragmentTable(p) {
		switch d.accept(p, b, now) {
		case verdictAnswer:
			d.deliver(w, b, true)
		case verdictHold:
			d.stats.held.Add(1)
		default:
			d.stats.notOwned.Add(1)
		}
		return
	}
	frags := d.lanes[w.index%len(d.lanes)].table()
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
		held := frags.first(k, v, piece, now)
		d.deliver(w, b, ok)
		for _, h := range held {
			d.deliver(w, h, ok)
		}
		return
	}
	if v := frags.later(k, piece); v != fragUnknown {
		d.deliver(w, b, v == fragAccept)
		return
	}
	if frags.hold(k, b, piece, now) {
		d.stats.heldFrags.Add(1)
	} else {
		d.stats.droppedFrag.Add(1)
	}
}

// deliver writes b to the TAP queue of reader w if accepted, else drops it.
func (d *Datapath) deliver(w *worker, b []byte, accepted bool) {
	if !accepted {
		d.stats.notOwned.Add(1)
		return
	}
	d.tap.deliver(d.tap.queues[w.index%len(d.tap.queues)], b, &d.stats)
}

// lane is a cluster's state for one reader: its fragment table, made when
// the first fragment comes (most clusters never see one).
type lane struct {
	frags atomic.Pointer[fragTable]
	size  int // datagrams the table holds; 0: fragMaxDatagrams
}

// table returns the lane's fragment table, made at first use. Only the
// lane's reader calls it.
func (l *lane) table() *fragTable {
	t := l.frags.Load()
	if t == nil {
		n := l.size
		if n == 0 {
			n = fragMaxDatagrams
		}
		t = newFragTableOf(n)
		l.frags.Store(t)
	}
	return t
}

// handleARP answers requests for the VIP with the cluster MAC. Every node
// answers, with identical replies, as every node did with the kernel target:
// the client learns one MAC whoever replies first.
func (d *Datapath) handleARP(w *worker, frame []byte) {
	sha, spa, ok := arpRequestForVIP(frame, d.vip4)
	if !ok {
		return
	}
	reply, err := arpFrame(sha, w.g.ifi.HardwareAddr, arpOpReply, d.cfg.ClusterMAC, d.vip4, sha, spa)
	if err == nil {
		err = w.send(reply, sha)
	}
	if err != nil {
		d.log.Warn("ARP reply", "to", sha.String(), "err", err)
		return
	}
	d.stats.arpReplies.Add(1)
}
