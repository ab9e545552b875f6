package datapath

import (
	"sync"
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
)

// flowKey is a connection as the client sends it. Ports are raw, as hashed.
type flowKey struct {
	src          uint32
	sport, dport uint16
	proto        uint8
}

type flow struct {
	created  int64
	lastSeen int64
	node     uint8 // the number the flow hashes to
	foreign  bool  // seen while another node served its number: that node's
	closing  bool
	opened   bool // a packet other than a SYN was seen: somebody answered the SYN
}

// flowTable remembers the connections this node serves, so that it keeps
// serving them when their number moves to another node (drain, rejoin), and
// the connections another node served while a number was moving here
// (foreign), so that this node leaves them alone. The workers share it (the
// fanout sends a flow's fragments and its whole packets to different
// workers, which must agree on it), split into shards with a lock each, so
// that workers rarely meet and a sweep holds up one shard at a time.
//
// When the table is full, new connections are still served but not
// tracked: a later move of their number cuts them. FlowStats.Untracked
// counts them.
type flowTable struct {
	shards [flowShards]flowShard
}

const flowShards = 64

type flowShard struct {
	mu        sync.Mutex
	m         map[flowKey]flow
	max       int
	untracked uint64
}

func newFlowTable(max int) *flowTable {
	t := &flowTable{}
	for i := range t.shards {
		t.shards[i] = flowShard{m: make(map[flowKey]flow), max: max/flowShards + 1}
	}
	return t
}

// shard returns the shard of k (a multiplicative hash of its fields).
func (t *flowTable) shard(k flowKey) *flowShard {
	h := (k.src ^ uint32(k.sport)<<16 ^ uint32(k.dport) ^ uint32(k.proto)<<8) * 0x9e3779b1
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

// add records a flow; it reports false when the shard is full.
func (t *flowShard) add(k flowKey, f flow) bool {
	if _, ok := t.m[k]; !ok && len(t.m) >= t.max {
		t.untracked++
		return false
	}
	t.m[k] = f
	return true
}

// flowCounts is what a sweep learns about a table.
type flowCounts struct {
	tracked, kept, foreign int
	untracked              uint64
	keptNumbers            nodeset.NodeSet // numbers with kept flows
}

// sweep forgets idle flows and, with dropKept, every kept one; it counts
// the rest. Flows of numbers in serve are this node's own; the others are
// kept from before a move. It locks one shard at a time.
func (t *flowTable) sweep(now int64, serve nodeset.NodeSet, dropKept bool) flowCounts {
	var c flowCounts
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		s.sweep(now, serve, dropKept, &c)
		c.untracked += s.untracked
		s.mu.Unlock()
	}
	return c
}

func (t *flowShard) sweep(now int64, serve nodeset.NodeSet, dropKept bool, c *flowCounts) {
	for k, f := range t.m {
		kept := !f.foreign && !serve.Contains(int(f.node))
		if now-f.lastSeen > idleTimeout(f, k.proto) || (kept && dropKept) {
			delete(t.m, k)
			continue
		}
		c.tracked++
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
				delete(s.m, k)
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
				delete(s.m, k)
			}
		}
		s.mu.Unlock()
	}
}
