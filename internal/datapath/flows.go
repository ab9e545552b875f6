package datapath

import (
	"cmp"
	"encoding/binary"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterip/clusterip/nodeset"
)

// Idle timeouts of tracked flows. A kept flow (one whose number moved to
// another node) that stays idle longer is forgotten: its next packet goes to
// the number's new owner, whose stack resets it.
const (
	flowIdleTCP     = 5 * time.Minute
	flowIdleClosing = 10 * time.Second // after a FIN or RST from the client
	flowIdleUDP     = time.Minute
	flowIdleOther   = 30 * time.Second

	// DefaultMaxFlows bounds the flow table: about 64 bytes each.
	DefaultMaxFlows = 1 << 18

	// foreignGrace is how much longer than its owner a node remembers
	// another node's flow. Both see its every packet, but the clock of a
	// flow listed in a release starts on the receiver when the release
	// arrives, a little after the sender's: the receiver must forget it
	// last, or both might answer a packet that comes at the end of its
	// idle time.
	foreignGrace = time.Second
)

// Limits on the packets held for numbers moving here (see judge): a
// handoff lasts about a second, so a few per flow and a thousand in all
// cover every real client, and bound what a flood can make the node keep.
const (
	maxHeldPackets = 1024
	maxHeldBytes   = 4 << 20
	maxHeldPerFlow = 4
	// heldTimeout drops packets held for a handoff that never completed
	// (the number went elsewhere, the release never came).
	heldTimeout = 5 * time.Second
)

// flowKey is a connection as the client sends it. Ports are raw, as hashed.
type flowKey struct {
	src          addr
	sport, dport uint16
	proto        uint8
}

// FlowID names a connection in a handoff message: the client's address
// (IPv6, or IPv4 mapped into IPv6), the ports as the client sends them
// (raw, as hashed) and the protocol.
type FlowID struct {
	Src          [16]byte
	SPort, DPort uint16
	Proto        uint8
}

func (k flowKey) id() FlowID {
	return FlowID{Src: k.src, SPort: k.sport, DPort: k.dport, Proto: k.proto}
}

type flow struct {
	created  int64
	lastSeen int64
	node     uint8 // the number the flow hashes to
	foreign  bool  // seen while another node served its number: that node's
	closing  bool
	opened   bool // a packet other than a SYN was seen: somebody answered the SYN
	// adopted flows were read from the local socket table: the stack
	// really holds them. Packets alone can be spoofed; these cannot, so
	// they are never evicted to make room.
	adopted bool
	held    bool // its new-flow packets are held until the handoff settles
}

// verdict is what the datapath does with one packet.
type verdict uint8

const (
	verdictDrop   verdict = iota
	verdictAnswer         // deliver to the local stack
	// verdictHold keeps the packet: it opens a connection of a number
	// moving here, and only the handoff's end tells whether the node
	// giving the number up answered it (then it is dropped) or not (then
	// this node answers it, late by a few milliseconds rather than by the
	// client's one-second SYN retransmission).
	verdictHold
)

// flowTable remembers the connections this node serves, so that it keeps
// serving them when their number moves to another node (drain, rejoin), and
// the connections another node served while a number was moving here
// (foreign), so that this node leaves them alone. The workers share it (the
// fanout sends a flow's fragments and its whole packets to different
// workers, which must agree on it), split into shards with a lock each, so
// that workers rarely meet and a sweep holds up one shard at a time.
//
// When a shard is full, a new flow takes the place of one seen only in
// packets (which anyone can spoof), never of one the socket table vouches
// for; when nothing can go, the new connection is still served but not
// tracked: a later move of its number cuts it. FlowStats.Untracked counts
// those.
type flowTable struct {
	shards [flowShards]flowShard
	// lastUntracked is when a flow last found no room: a handoff message
	// listing this node's flows is incomplete if it happened since.
	lastUntracked atomic.Int64
	heldPackets   atomic.Int64
	heldBytes     atomic.Int64
}

const flowShards = 64

type flowShard struct {
	mu        sync.Mutex
	m         map[flowKey]flow
	held      map[flowKey][][]byte // packets held for flows with flow.held
	max       int
	untracked uint64
	evicted   uint64
}

func newFlowTable(max int) *flowTable {
	t := &flowTable{}
	for i := range t.shards {
		t.shards[i] = flowShard{m: make(map[flowKey]flow), held: make(map[flowKey][][]byte), max: max/flowShards + 1}
	}
	return t
}

// shard returns the shard of k (a multiplicative hash of its fields).
func (t *flowTable) shard(k flowKey) *flowShard {
	src := binary.LittleEndian.Uint32(k.src[0:]) ^ binary.LittleEndian.Uint32(k.src[4:]) ^
		binary.LittleEndian.Uint32(k.src[8:]) ^ binary.LittleEndian.Uint32(k.src[12:])
	h := (src ^ uint32(k.sport)<<16 ^ uint32(k.dport) ^ uint32(k.proto)<<8) * 0x9e3779b1
	return &t.shards[h>>(32-6)]
}

func idleTimeout(f flow, proto uint8) int64 {
	switch {
	case f.closing, proto == protoTCP && !f.opened:
		// A SYN nobody completed (a scan, a flood) must not hold a slot
		// for minutes.
		return int64(flowIdleClosing)
	case proto == protoTCP:
		return int64(flowIdleTCP)
	case proto == protoUDP || proto == protoUDPLite:
		return int64(flowIdleUDP)
	}
	return int64(flowIdleOther)
}

// forgetAfter is how long f may stay idle before this node forgets it: its
// idle timeout, and for another node's flow foreignGrace more, so that its
// owner has forgotten it first.
func forgetAfter(f flow, proto uint8) int64 {
	if f.foreign {
		return idleTimeout(f, proto) + int64(foreignGrace)
	}
	return idleTimeout(f, proto)
}

// judge is the ownership decision for a packet of a tracked cluster (see
// Datapath.accept for the rules), made and recorded under the flow's shard
// lock. The policy is loaded under that lock too: whoever reads the table
// after swapping the policy sees every flow the old policy let in.
// servingSince[n] is when number n last began to be served here. frame is
// copied if the packet is held.
func (t *flowTable) judge(f packetFlow, policy *atomic.Pointer[Policy], servingSince *[nodeset.Max + 1]atomic.Int64, frame []byte, now int64) verdict {
	s := t.shard(f.key)
	s.mu.Lock()
	defer s.mu.Unlock()
	pol := policy.Load()
	observe, hold := pol.Observe.Contains(f.node), pol.Hold.Contains(f.node)
	e, ok := s.m[f.key]
	if idle := now - e.lastSeen; ok && idle > idleTimeout(e, f.key.proto) {
		if idle <= forgetAfter(e, f.key.proto) {
			// Another node's flow, which its owner forgets about now:
			// nobody answers it until this node has forgotten it too.
			return verdictDrop
		}
		// Forgotten, as the next sweep would: judged afresh.
		t.deleteLocked(s, f.key)
		ok = false
	}
	if ok {
		e.lastSeen = now
		e.closing = e.closing || f.closes
		e.opened = e.opened || (f.key.proto == protoTCP && !f.syn)
		switch {
		case f.syn && e.opened:
			// A SYN on a connection that got past its handshake: the
			// client reuses the port for a new connection.
		case !e.foreign:
			s.m[f.key] = e
			return verdictAnswer
		case f.syn && !observe && e.created >= servingSince[f.node].Load()-int64(switchGap):
			// A SYN again, and nothing else ever, first seen just before
			// this node took the number: it came between the release and
			// the takeover, and nobody answered it. (One seen earlier was
			// the other node's; its SYN-ACK may just have been lost.)
		case hold && e.held && f.key.proto != protoTCP:
			// More of a connectionless flow that is new to the handoff.
			s.m[f.key] = e
			return t.holdLocked(s, f.key, frame)
		case pol.Guarded.Contains(f.node) || observe:
			s.m[f.key] = e
			return verdictDrop
		}
		t.deleteLocked(s, f.key) // judge it afresh
	}
	opened := f.key.proto == protoTCP && !f.syn
	switch {
	case observe:
		// A number about to move here: its connections are the other
		// node's, except, once the other node is handing it over, new
		// ones it may not have answered, which are held until the
		// handoff says whose they are.
		held := f.opens && hold
		t.addLocked(s, f.key, flow{created: now, lastSeen: now, node: uint8(f.node), foreign: true, opened: opened, held: held})
		if held {
			return t.holdLocked(s, f.key, frame)
		}
		return verdictDrop
	case !pol.Serve.Contains(f.node):
		return verdictDrop
	case pol.Guarded.Contains(f.node) && !f.opens:
		return verdictDrop
	}
	t.addLocked(s, f.key, flow{created: now, lastSeen: now, node: uint8(f.node), closing: f.closes, opened: opened})
	return verdictAnswer
}

// holdLocked keeps a copy of frame for the flow, within the limits; past
// them the packet is dropped as it was before holding existed, and the
// client's retransmission gets the answer.
func (t *flowTable) holdLocked(s *flowShard, k flowKey, frame []byte) verdict {
	if frame == nil || len(s.held[k]) >= maxHeldPerFlow || t.heldPackets.Load() >= maxHeldPackets || t.heldBytes.Load()+int64(len(frame)) > maxHeldBytes {
		return verdictDrop
	}
	s.held[k] = append(s.held[k], append([]byte(nil), frame...))
	t.heldPackets.Add(1)
	t.heldBytes.Add(int64(len(frame)))
	return verdictHold
}

// releaseHeldLocked forgets the packets held for k and returns them.
func (t *flowTable) releaseHeldLocked(s *flowShard, k flowKey) [][]byte {
	frames := s.held[k]
	if frames == nil {
		return nil
	}
	delete(s.held, k)
	t.heldPackets.Add(-int64(len(frames)))
	for _, f := range frames {
		t.heldBytes.Add(-int64(len(f)))
	}
	return frames
}

func (t *flowTable) deleteLocked(s *flowShard, k flowKey) {
	delete(s.m, k)
	t.releaseHeldLocked(s, k)
}

// addLocked records a flow, making room if the shard is full by evicting a
// flow seen only in packets: preferably one of this node's own (a spoofed
// flood lands there), else another node's. A flow the socket table vouches
// for is never evicted. It reports false when nothing could go.
func (t *flowTable) addLocked(s *flowShard, k flowKey, f flow) bool {
	if _, ok := s.m[k]; !ok && len(s.m) >= s.max && !t.evictLocked(s) {
		s.untracked++
		t.lastUntracked.Store(time.Now().UnixNano())
		return false
	}
	s.m[k] = f
	return true
}

// evictScan is how many entries eviction looks at for one of this node's
// own before it settles for any evictable one. Map iteration starts at a
// random place, so the choice is random.
const evictScan = 64

func (t *flowTable) evictLocked(s *flowShard) bool {
	var other flowKey
	found, n := false, 0
	for k, e := range s.m {
		if e.adopted || e.held {
			continue
		}
		if !e.foreign {
			t.deleteLocked(s, k)
			s.evicted++
			return true
		}
		if !found {
			other, found = k, true
		}
		if n++; n >= evictScan {
			break
		}
	}
	if found {
		t.deleteLocked(s, other)
		s.evicted++
	}
	return found
}

// adopt records a connection the local socket table holds, as this node's
// own: it replaces whatever the table knew of it, and takes the place of a
// spoofable flow if the shard is full.
func (t *flowTable) adopt(k flowKey, node uint8, closing, opened bool, now int64) bool {
	s := t.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[k]; ok && !e.foreign {
		e.adopted, e.opened, e.closing = true, e.opened || opened, e.closing || closing
		s.m[k] = e
		return true
	}
	return t.addLocked(s, k, flow{created: now, lastSeen: now, node: node, closing: closing, opened: opened, adopted: true})
}

// adoptSeen records a connectionless flow the kernel path took, last seen
// at lastSeen: as if user space had seen its packets, so it may give way to
// other flows like any flow seen only in packets.
func (t *flowTable) adoptSeen(k flowKey, node uint8, lastSeen int64) bool {
	s := t.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[k]; ok {
		if !e.foreign && lastSeen > e.lastSeen {
			e.lastSeen = lastSeen
			s.m[k] = e
		}
		return !e.foreign
	}
	return t.addLocked(s, k, flow{created: lastSeen, lastSeen: lastSeen, node: node, opened: true})
}

// kept returns the flows of number node that this node keeps after giving
// the number up, for its release to list: every connectionless one, and
// every TCP connection that started since cutoff or never got past its SYN.
// (The receiver saw a mid-connection packet of every older TCP connection,
// or leaves it alone at its next one.) A connectionless flow silent since
// cutoff is one the receiver cannot have seen; listed, it stays this
// node's. Every listed flow's idle time starts again now, as it does on the
// receiver when the release arrives (see settle), so that this node
// forgets it first, a few milliseconds before the receiver, and nobody
// answers it twice. Quiet flows come last, the most recent first; those
// past max are forgotten here instead, and their next packet goes to the
// receiver. complete is false when the list cannot be trusted whole: a
// flow found no room in the table since cutoff, or more than max flows
// were active since then.
func (t *flowTable) kept(node uint8, cutoff, now int64, max int) (ids []FlowID, complete bool) {
	last := t.lastUntracked.Load()
	complete = last == 0 || last < cutoff
	type quietFlow struct {
		key      flowKey
		lastSeen int64
	}
	var quiet []quietFlow
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for k, e := range s.m {
			switch {
			case e.foreign || e.node != node:
				continue
			case k.proto == protoTCP && e.opened && (e.adopted || e.created < cutoff):
				continue
			case k.proto != protoTCP && e.lastSeen < cutoff:
				quiet = append(quiet, quietFlow{k, e.lastSeen})
				continue
			}
			if len(ids) == max {
				complete = false
				continue
			}
			e.lastSeen = now
			s.m[k] = e
			ids = append(ids, k.id())
		}
		s.mu.Unlock()
	}
	slices.SortFunc(quiet, func(a, b quietFlow) int { return cmp.Compare(b.lastSeen, a.lastSeen) })
	for _, q := range quiet {
		s := t.shard(q.key)
		s.mu.Lock()
		switch e, ok := s.m[q.key]; {
		case !ok || e.foreign || e.node != node:
		case len(ids) < max:
			e.lastSeen = now
			s.m[q.key] = e
			ids = append(ids, q.key.id())
		case e.lastSeen != q.lastSeen:
			// A packet since the first pass: an active flow.
			complete = false
		default:
			t.deleteLocked(s, q.key)
		}
		s.mu.Unlock()
	}
	return ids, complete
}

// settle ends the handoff of number node to this node, which serves it
// now. theirs is what the node that gave it up keeps, as its release said;
// without a complete list (nil), nothing held is answered: a held packet
// the other node may have answered must not be answered twice. With one,
// every other-node flow seen during the handoff that is neither listed nor
// a TCP connection past its handshake was answered by nobody: the held ones
// become this node's and their packets are returned to be answered now,
// and the rest are forgotten, to be judged afresh.
func (t *flowTable) settle(node uint8, theirs map[FlowID]bool, now int64) (answer [][]byte) {
	// What the release lists is the other node's even if this node never
	// saw it: it may have begun before this node started observing (the
	// other node's state was on its way), and a connectionless flow's
	// next packet would look new.
	for id := range theirs {
		k := flowKey{src: id.Src, sport: id.SPort, dport: id.DPort, proto: id.Proto}
		s := t.shard(k)
		s.mu.Lock()
		// Its idle time starts now, as the sender's did a moment ago
		// (see kept): the sender forgets it first.
		if e, ok := s.m[k]; !ok {
			t.addLocked(s, k, flow{created: now, lastSeen: now, node: node, foreign: true, opened: true})
		} else if e.foreign && e.lastSeen < now {
			e.lastSeen = now
			s.m[k] = e
		}
		s.mu.Unlock()
	}
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for k, e := range s.m {
			if !e.foreign || e.node != node {
				continue
			}
			id := k.id()
			switch {
			case theirs == nil || theirs[id] || k.proto == protoTCP && e.opened:
				t.releaseHeldLocked(s, k)
				e.held = false
				s.m[k] = e
			case e.held && s.held[k] != nil:
				answer = append(answer, t.releaseHeldLocked(s, k)...)
				e.foreign, e.held, e.created = false, false, now
				s.m[k] = e
			default:
				t.deleteLocked(s, k)
			}
		}
		s.mu.Unlock()
	}
	return answer
}

// dropHeld forgets the packets held for numbers whose handoff to this node
// ended without it taking them.
func (t *flowTable) dropHeld(numbers nodeset.NodeSet) {
	if numbers == 0 || t.heldPackets.Load() == 0 {
		return
	}
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for k := range s.held {
			if e := s.m[k]; numbers.Contains(int(e.node)) {
				t.releaseHeldLocked(s, k)
				e.held = false
				s.m[k] = e
			}
		}
		s.mu.Unlock()
	}
}

// flowCounts is what a sweep learns about a table.
type flowCounts struct {
	tracked, kept, foreign, held int
	untracked, evicted           uint64
	keptNumbers                  nodeset.NodeSet // numbers with kept flows
}

// sweep forgets idle flows and, with dropKept, every kept one, and packets
// held longer than heldTimeout; it counts the rest. Flows of numbers in
// serve are this node's own; the others are kept from before a move. It
// locks one shard at a time.
func (t *flowTable) sweep(now int64, serve nodeset.NodeSet, dropKept bool) flowCounts {
	var c flowCounts
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		t.sweepLocked(s, now, serve, dropKept, &c)
		c.untracked += s.untracked
		c.evicted += s.evicted
		s.mu.Unlock()
	}
	return c
}

func (t *flowTable) sweepLocked(s *flowShard, now int64, serve nodeset.NodeSet, dropKept bool, c *flowCounts) {
	for k, f := range s.m {
		kept := !f.foreign && !serve.Contains(int(f.node))
		if now-f.lastSeen > forgetAfter(f, k.proto) || (kept && dropKept) {
			t.deleteLocked(s, k)
			continue
		}
		if f.held && now-f.created > int64(heldTimeout) {
			t.releaseHeldLocked(s, k)
			f.held = false
			s.m[k] = f
		}
		c.tracked++
		c.held += len(s.held[k])
		switch {
		case f.foreign:
			c.foreign++
		case kept:
			c.kept++
			c.keptNumbers = c.keptNumbers.Add(int(f.node))
		}
	}
}

// forgetQuiet forgets this node's own connectionless flows of number node
// that have been silent since before since.
func (t *flowTable) forgetQuiet(node uint8, since int64) {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for k, f := range s.m {
			if k.proto != protoTCP && !f.foreign && f.node == node && f.lastSeen < since {
				t.deleteLocked(s, k)
			}
		}
		s.mu.Unlock()
	}
}

// forget forgets every flow of protocol proto whose number is in numbers.
func (t *flowTable) forget(numbers nodeset.NodeSet, proto uint8) {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for k, f := range s.m {
			if k.proto == proto && numbers.Contains(int(f.node)) {
				t.deleteLocked(s, k)
			}
		}
		s.mu.Unlock()
	}
}
