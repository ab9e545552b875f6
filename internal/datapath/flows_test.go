package datapath

import (
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterip/clusterip/nodeset"
)

// judgeRig is a flow table with the policy and serving times a Datapath
// keeps for it.
type judgeRig struct {
	t      *testing.T
	flows  *flowTable
	policy atomic.Pointer[Policy]
	since  [nodeset.Max + 1]atomic.Int64
}

func newJudgeRig(t *testing.T, max int) *judgeRig {
	r := &judgeRig{t: t, flows: newFlowTable(max)}
	r.policy.Store(&Policy{Track: true})
	return r
}

func (r *judgeRig) set(p Policy, now int64) {
	p.Track = true
	for _, n := range (p.Serve &^ r.policy.Load().Serve).Nodes() {
		r.since[n].Store(now)
	}
	r.policy.Store(&p)
}

func (r *judgeRig) judge(f packetFlow, now int64) verdict {
	return r.flows.judge(f, &r.policy, &r.since, []byte(fmt.Sprintf("frame %v", f.key)), now)
}

// Packets of test flows: node is the number they hash to.
func tcpSYN(port uint16, node int) packetFlow {
	return packetFlow{node: node, key: flowKey{src: addr4(0xc6336407), sport: port, dport: 80, proto: protoTCP}, opens: true, syn: true}
}

func tcpACK(port uint16, node int) packetFlow {
	return packetFlow{node: node, key: flowKey{src: addr4(0xc6336407), sport: port, dport: 80, proto: protoTCP}}
}

func tcpFIN(port uint16, node int) packetFlow {
	f := tcpACK(port, node)
	f.closes = true
	return f
}

func udp(port uint16, node int) packetFlow {
	return packetFlow{node: node, key: flowKey{src: addr4(0xc6336407), sport: port, dport: 53, proto: protoUDP}, opens: true}
}

func (v verdict) String() string {
	return [...]string{"drop", "answer", "hold"}[v]
}

const ms = int64(time.Millisecond)

// The rules of Datapath.accept, one transition at a time.
func TestJudge(t *testing.T) {
	type step struct {
		policy *Policy // nil: keep the last
		pkt    packetFlow
		at     int64
		want   verdict
	}
	serve1 := &Policy{Serve: 0b0001}
	tests := []struct {
		name  string
		steps []step
	}{
		{"served number answered, others not", []step{
			{serve1, tcpSYN(1000, 1), 0, verdictAnswer},
			{nil, tcpSYN(1001, 2), 0, verdictDrop},
			{nil, udp(1002, 1), 0, verdictAnswer},
			{nil, udp(1003, 3), 0, verdictDrop},
		}},
		{"own connection stays after its number left", []step{
			{serve1, tcpSYN(1000, 1), 0, verdictAnswer},
			{nil, tcpACK(1000, 1), 1, verdictAnswer},
			{&Policy{Keep: 0b0001}, tcpACK(1000, 1), 2, verdictAnswer},
			{nil, tcpSYN(1001, 1), 3, verdictDrop},
			{nil, udp(1002, 1), 3, verdictDrop},
		}},
		{"reused port is a new connection", []step{
			{serve1, tcpSYN(1000, 1), 0, verdictAnswer},
			{nil, tcpACK(1000, 1), 1, verdictAnswer},
			{&Policy{}, tcpACK(1000, 1), 2, verdictAnswer},
			{nil, tcpSYN(1000, 1), 3, verdictDrop},
		}},
		{"a guarded number's stray packet is not reset", []step{
			{&Policy{Serve: 0b0001, Guarded: 0b0001}, tcpACK(1000, 1), 0, verdictDrop},
			{nil, tcpSYN(1001, 1), 0, verdictAnswer},
			{nil, udp(1002, 1), 0, verdictAnswer},
		}},
		{"observed before the other node hands over: nothing held", []step{
			{&Policy{Observe: 0b0001, Guarded: 0b0001}, tcpSYN(1000, 1), 0, verdictDrop},
			{nil, udp(1001, 1), 0, verdictDrop},
			{&Policy{Observe: 0b0001, Hold: 0b0001, Guarded: 0b0001}, udp(1001, 1), 1, verdictDrop},
		}},
		{"observed: other node's connections noted, not answered", []step{
			{&Policy{Observe: 0b0001, Hold: 0b0001, Guarded: 0b0001}, tcpACK(1000, 1), 0, verdictDrop},
			{&Policy{Serve: 0b0001, Guarded: 0b0001}, tcpACK(1000, 1), 100 * ms, verdictDrop},
			{nil, tcpFIN(1000, 1), 200 * ms, verdictDrop},
		}},
		{"observed: new flows held, once", []step{
			{&Policy{Observe: 0b0001, Hold: 0b0001, Guarded: 0b0001}, tcpSYN(1000, 1), 0, verdictHold},
			{nil, tcpSYN(1000, 1), 1000 * ms, verdictDrop}, // its retransmission: one held SYN is enough
			{nil, udp(1001, 1), 0, verdictHold},
			{nil, udp(1001, 1), 1, verdictHold}, // more of the same new datagram flow
			{nil, tcpACK(1002, 1), 0, verdictDrop},
		}},
		{"observed SYN answered by the other node stays its", []step{
			{&Policy{Observe: 0b0001, Hold: 0b0001, Guarded: 0b0001}, tcpSYN(1000, 1), 0, verdictHold},
			{nil, tcpACK(1000, 1), 1 * ms, verdictDrop},
			{&Policy{Serve: 0b0001, Guarded: 0b0001}, tcpACK(1000, 1), 2000 * ms, verdictDrop},
		}},
		{"unanswered SYN from just before the takeover is answered on retransmission", []step{
			{&Policy{Guarded: 0b0001}, tcpSYN(1000, 1), 0, verdictDrop},
			{&Policy{Observe: 0b0001, Hold: 0b0001, Guarded: 0b0001}, tcpSYN(1001, 1), 950 * ms, verdictHold},
			{&Policy{Serve: 0b0001, Guarded: 0b0001}, tcpSYN(1001, 1), 1000 * ms, verdictAnswer},
		}},
		{"dead owner's connections reset by the new owner", []step{
			{&Policy{Serve: 0b0001}, tcpACK(1000, 1), 0, verdictAnswer},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newJudgeRig(t, 1024)
			for i, s := range tt.steps {
				if s.policy != nil {
					r.set(*s.policy, s.at)
				}
				if got := r.judge(s.pkt, s.at); got != s.want {
					t.Fatalf("step %d (%+v): %s, want %s", i, s.pkt.key, got, s.want)
				}
			}
		})
	}
}

// fill judges count spoofed UDP flows of number node from random sources.
func (r *judgeRig) fill(count int, node int, now int64) {
	for i := range count {
		f := udp(uint16(i), node)
		f.key.src = addr4(uint32(i)*2654435761 + 7)
		r.judge(f, now)
	}
}

func (r *judgeRig) has(k flowKey) bool {
	s := r.flows.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[k]
	return ok
}

// A flood of spoofed datagrams fills the table; connections the socket
// table vouches for still find room, and the flood never pushes them out.
// (Before, adoption failed on full shards and a drain reset them.)
func TestFlowTableRoomForAdoptedConnections(t *testing.T) {
	const max = flowShards * 64
	r := newJudgeRig(t, max)
	r.set(Policy{Serve: 0b0001}, 0)
	r.fill(3*max, 1, 0)
	c := r.flows.sweep(0, 0b0001, false)
	if c.tracked < max*9/10 {
		t.Fatalf("flood filled %d of %d entries", c.tracked, max)
	}
	var conns []flowKey
	for i := range 500 {
		k := flowKey{src: addr4(0x0a000001), sport: uint16(20000 + i), dport: 80, proto: protoTCP}
		if !r.flows.adopt(k, 1, false, true, 1) {
			t.Fatalf("connection %d found no room in a table full of spoofed flows", i)
		}
		conns = append(conns, k)
	}
	r.fill(10*max, 1, 2) // the flood goes on
	for _, k := range conns {
		if !r.has(k) {
			t.Fatalf("adopted connection %+v pushed out by the flood", k)
		}
	}
	// And they stay this node's through a drain: answered after their
	// number left.
	r.set(Policy{Keep: 0b0001}, 3)
	for _, k := range conns {
		if v := r.judge(packetFlow{node: 1, key: k}, 3); v != verdictAnswer {
			t.Fatalf("kept connection %+v: %s after the drain", k, v)
		}
	}
	if c := r.flows.sweep(3, 0, false); c.evicted == 0 {
		t.Error("no spoofed flow was evicted")
	}
}

// A new connection judged in a full table takes a spoofable flow's place.
func TestFlowTableEvictsForNewFlows(t *testing.T) {
	const max = flowShards * 16
	r := newJudgeRig(t, max)
	r.set(Policy{Serve: 0b0001}, 0)
	r.fill(2*max, 1, 0)
	syn := tcpSYN(40000, 1)
	if v := r.judge(syn, 1); v != verdictAnswer || !r.has(syn.key) {
		t.Fatalf("new connection in a full table: %s, tracked %v", v, r.has(syn.key))
	}
}

// syncRigs makes a releasing and a receiving node see the same packets.
type handoffRigs struct {
	from, to *judgeRig
}

func (h handoffRigs) both(f packetFlow, now int64) (from, to verdict) {
	return h.from.judge(f, now), h.to.judge(f, now)
}

// A planned handoff loses no SYN: what arrives at the receiver while the
// number moves is held; the release lists what the old owner answered; the
// receiver answers the rest, and nothing is answered twice.
func TestHandoffHeldPacketsSettled(t *testing.T) {
	h := handoffRigs{from: newJudgeRig(t, 1024), to: newJudgeRig(t, 1024)}
	const k = 1
	h.from.set(Policy{Serve: 1 << (k - 1)}, 0)
	old := tcpSYN(1000, k)
	oldUDP := udp(1001, k)
	h.both(old, 0)
	h.both(tcpACK(1000, k), 1)
	h.both(oldUDP, 1)

	// The handoff: the old owner keeps serving while the receiver observes.
	h.from.set(Policy{Serve: 1 << (k - 1), Leaving: 1 << (k - 1)}, 10*ms)
	h.to.set(Policy{Observe: 1 << (k - 1), Hold: 1 << (k - 1), Guarded: 1 << (k - 1)}, 10*ms)
	answeredByOld := tcpSYN(2000, k)
	if f, to := h.both(answeredByOld, 500*ms); f != verdictAnswer || to != verdictHold {
		t.Fatalf("SYN during the handoff: old %s, receiver %s", f, to)
	}
	// Its ACK has not come yet when the number is released.
	newUDPOld := udp(2001, k)
	h.both(newUDPOld, 600*ms)
	h.both(oldUDP, 700*ms)

	// Released: the old owner stops taking new connections.
	h.from.set(Policy{Keep: 1 << (k - 1)}, 1010*ms)
	gapSYN := tcpSYN(3000, k)
	gapUDP := udp(3001, k)
	for _, p := range []packetFlow{gapSYN, gapUDP} {
		if f, to := h.both(p, 1011*ms); f != verdictDrop || to != verdictHold {
			t.Fatalf("new flow %+v in the gap: old %s, receiver %s; want it held", p.key, f, to)
		}
	}
	if f, to := h.both(gapUDP, 1012*ms); f != verdictDrop || to != verdictHold {
		t.Fatalf("second datagram in the gap: old %s, receiver %s", f, to)
	}
	theirs, complete := h.from.flows.kept(k, 5*ms, 1010*ms, 100)
	if !complete {
		t.Fatal("kept list incomplete")
	}
	wantTheirs := []FlowID{id(answeredByOld), id(newUDPOld), id(oldUDP)}
	for _, w := range wantTheirs {
		if !slices.Contains(theirs, w) {
			t.Errorf("release does not list %+v: %+v", w, theirs)
		}
	}
	if slices.Contains(theirs, id(old)) {
		t.Errorf("release lists an established connection from before the handoff")
	}

	// The receiver takes the number: it answers the gap's held packets,
	// all three, and nothing the old owner answered.
	h.to.set(Policy{Serve: 1 << (k - 1), Guarded: 1 << (k - 1)}, 1015*ms)
	answered := h.to.flows.settle(k, flowSet(theirs), 1015*ms)
	want := []string{fmt.Sprintf("frame %v", gapSYN.key), fmt.Sprintf("frame %v", gapUDP.key), fmt.Sprintf("frame %v", gapUDP.key)}
	var got []string
	for _, b := range answered {
		got = append(got, string(b))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("receiver answered %q, want %q", got, want)
	}
	// From now on each flow has exactly one owner.
	for _, c := range []struct {
		pkt           packetFlow
		from, receive verdict
	}{
		{tcpACK(3000, k), verdictDrop, verdictAnswer},
		{gapUDP, verdictDrop, verdictAnswer},
		{tcpACK(2000, k), verdictAnswer, verdictDrop},
		{newUDPOld, verdictAnswer, verdictDrop},
		{oldUDP, verdictAnswer, verdictDrop},
		{tcpACK(1000, k), verdictAnswer, verdictDrop},
		{tcpSYN(4000, k), verdictDrop, verdictAnswer},
	} {
		if f, to := h.both(c.pkt, 1100*ms); f != c.from || to != c.receive {
			t.Errorf("%+v after the handoff: old %s, receiver %s; want %s, %s", c.pkt.key, f, to, c.from, c.receive)
		}
	}
	if n := h.to.flows.heldPackets.Load(); n != 0 {
		t.Errorf("%d packets still held", n)
	}
}

func id(f packetFlow) FlowID {
	return FlowID{Src: f.key.src, SPort: f.key.sport, DPort: f.key.dport, Proto: f.key.proto}
}

// Without a complete release (a lost message, a list too long), nothing
// held is answered: a packet the old owner may have answered must not be
// answered twice. The clients retransmit.
func TestHandoffWithoutListAnswersNothingHeld(t *testing.T) {
	r := newJudgeRig(t, 1024)
	r.set(Policy{Observe: 0b0001, Hold: 0b0001, Guarded: 0b0001}, 0)
	r.judge(tcpSYN(1000, 1), 1)
	r.judge(udp(1001, 1), 1)
	r.set(Policy{Serve: 0b0001, Guarded: 0b0001}, 2)
	if answered := r.flows.settle(1, nil, 2); len(answered) != 0 {
		t.Fatalf("answered %d held packets without a release list", len(answered))
	}
	if n := r.flows.heldPackets.Load(); n != 0 {
		t.Fatalf("%d packets still held", n)
	}
}

// A handoff that ends elsewhere drops what was held; so does time.
func TestHeldPacketsDropped(t *testing.T) {
	r := newJudgeRig(t, 1024)
	r.set(Policy{Observe: 0b0011, Hold: 0b0011, Guarded: 0b0011}, 0)
	r.judge(tcpSYN(1000, 1), 1)
	r.judge(tcpSYN(1001, 2), 1)
	r.flows.dropHeld(0b0001)
	if n := r.flows.heldPackets.Load(); n != 1 {
		t.Fatalf("%d held after dropping number 1's, want 1", n)
	}
	r.flows.sweep(int64(heldTimeout)+2, 0, false)
	if n := r.flows.heldPackets.Load(); n != 0 {
		t.Fatalf("%d held past the timeout", n)
	}
}

// Holding is bounded: past the limits packets are dropped as before.
func TestHeldPacketsBounded(t *testing.T) {
	r := newJudgeRig(t, 1<<16)
	r.set(Policy{Observe: 0b0001, Hold: 0b0001, Guarded: 0b0001}, 0)
	held := 0
	for i := range 2 * maxHeldPackets {
		if r.judge(tcpSYN(uint16(i), 1), 1) == verdictHold {
			held++
		}
	}
	if held != maxHeldPackets {
		t.Fatalf("held %d, want the limit %d", held, maxHeldPackets)
	}
	for range 10 {
		r.judge(udp(60000, 1), 1)
	}
	if n := len(r.flows.shard(udp(60000, 1).key).held[udp(60000, 1).key]); n > maxHeldPerFlow {
		t.Fatalf("%d held for one flow", n)
	}
}

// The release list is complete only when every flow found room.
func TestKeptListCompleteness(t *testing.T) {
	r := newJudgeRig(t, flowShards)
	r.set(Policy{Serve: 0b0001}, 0)
	for i := range 10 {
		r.judge(udp(uint16(i), 1), 1)
	}
	cutoff := time.Now().UnixNano()
	if _, complete := r.flows.kept(1, cutoff, cutoff, 100); !complete {
		t.Fatal("incomplete with nothing refused")
	}
	if _, complete := r.flows.kept(1, 0, 0, 3); complete {
		t.Fatal("complete with more flows than the list holds")
	}
	// A shard with nothing evictable refuses: adopted flows only.
	for i := range 4 * flowShards {
		r.flows.adopt(flowKey{src: addr4(uint32(i)), sport: 1, dport: 80, proto: protoTCP}, 1, false, true, 1)
	}
	if _, complete := r.flows.kept(1, cutoff, cutoff, 1<<20); complete {
		t.Fatal("complete although flows found no room since the cutoff")
	}
}

// A release lists a connectionless flow the receiver never saw (it began
// before the receiver learned of the handoff): the receiver must leave it
// to the node that keeps it while that node keeps the number, rather than
// take its next packet for a new flow and answer it too.
func TestSettleKeepsListedFlowsNeverSeen(t *testing.T) {
	r := newJudgeRig(t, 1024)
	quiet := udp(5000, 1)
	r.set(Policy{Serve: 1, Guarded: 1}, 1)
	if got := r.flows.settle(1, map[FlowID]bool{quiet.key.id(): true}, 2); len(got) != 0 {
		t.Fatalf("settle answered %d held packets, none were held", len(got))
	}
	if v := r.judge(quiet, 3); v != verdictDrop {
		t.Errorf("a listed flow, the other node keeping the number: %v, want drop", v)
	}
	if v := r.judge(udp(5001, 1), 3); v != verdictAnswer {
		t.Errorf("an unlisted new flow: %v, want answer", v)
	}
	// Once the other node keeps nothing of the number, the flow is this
	// node's like any other.
	r.set(Policy{Serve: 1}, 4)
	if v := r.judge(quiet, 5); v != verdictAnswer {
		t.Errorf("the listed flow after the other node let go: %v, want answer", v)
	}
}

// A connectionless flow silent through the whole handoff stays with the
// node that had it: the release lists it, and its idle time starts again
// on both nodes.
func TestHandoffKeepsQuietFlows(t *testing.T) {
	h := handoffRigs{from: newJudgeRig(t, 1024), to: newJudgeRig(t, 1024)}
	const k = 1
	h.from.set(Policy{Serve: 1 << (k - 1)}, 0)
	quiet, active := udp(1000, k), udp(1001, k)
	h.both(quiet, 1)
	h.both(active, 1)

	h.from.set(Policy{Serve: 1 << (k - 1), Leaving: 1 << (k - 1)}, 10*ms)
	h.to.set(Policy{Observe: 1 << (k - 1), Hold: 1 << (k - 1), Guarded: 1 << (k - 1)}, 20*ms)
	h.both(active, 500*ms)
	const release = 1010 * ms
	h.from.set(Policy{Keep: 1 << (k - 1)}, release)
	theirs, complete := h.from.flows.kept(k, 10*ms, release, 100)
	if !complete || !slices.Contains(theirs, id(quiet)) || !slices.Contains(theirs, id(active)) {
		t.Fatalf("release lists %+v (complete %v), want the quiet and the active flow", theirs, complete)
	}
	h.to.set(Policy{Serve: 1 << (k - 1), Guarded: 1 << (k - 1)}, release+5*ms)
	h.to.flows.settle(k, flowSet(theirs), release+5*ms)
	// Almost an idle time after the release (long after the quiet flow's
	// last packet), it is still the old node's.
	at := release + int64(flowIdleUDP) - 100*ms
	h.from.flows.sweep(at, 0, false)
	h.to.flows.sweep(at, 1<<(k-1), false)
	for _, f := range []packetFlow{quiet, active} {
		if old, to := h.both(f, at); old != verdictAnswer || to != verdictDrop {
			t.Errorf("flow %d after the release: old %s, receiver %s; want it the old node's", f.key.sport, old, to)
		}
	}
}

// At the end of a listed flow's idle time, the old node forgets it first:
// nobody answers it for at most the grace, then the receiver does, alone.
// Never both.
func TestQuietFlowIdleBoundary(t *testing.T) {
	h := handoffRigs{from: newJudgeRig(t, 1024), to: newJudgeRig(t, 1024)}
	quiet := udp(1000, 1)
	h.from.set(Policy{Serve: 1}, 0)
	h.both(quiet, 1)
	h.from.set(Policy{Keep: 1}, 1000*ms)
	theirs, _ := h.from.flows.kept(1, 500*ms, 1000*ms, 100)
	h.to.set(Policy{Serve: 1, Guarded: 1}, 1005*ms)
	h.to.flows.settle(1, flowSet(theirs), 1005*ms) // the release took 5 ms
	end := 1000*ms + int64(flowIdleUDP)
	for _, c := range []struct {
		after         int64 // past the old node's idle time
		from, receive verdict
	}{
		{100 * ms, verdictDrop, verdictDrop},
		{int64(foreignGrace) - 100*ms, verdictDrop, verdictDrop},
		{int64(foreignGrace) + 100*ms, verdictDrop, verdictAnswer},
	} {
		at := end + c.after
		h.from.flows.sweep(at, 0, false)
		h.to.flows.sweep(at, 1, false)
		if f, to := h.both(quiet, at); f != c.from || to != c.receive {
			t.Errorf("%v past the idle time: old %s, receiver %s; want %s, %s", time.Duration(c.after), f, to, c.from, c.receive)
		}
	}
}

// A release lists active flows first, then quiet ones, the most recent
// first; the quiet ones that do not fit are forgotten, so that their next
// packet is the receiver's alone.
func TestKeptListQuietFlowsOverflow(t *testing.T) {
	r := newJudgeRig(t, 1024)
	r.set(Policy{Serve: 1}, 0)
	for i := range 10 {
		r.judge(udp(uint16(1000+i), 1), int64(i+1)*ms) // quiet: the newest is 1009
	}
	r.judge(udp(2000, 1), 600*ms) // active since the cutoff
	r.set(Policy{Keep: 1}, 1000*ms)
	ids, complete := r.flows.kept(1, 500*ms, 1000*ms, 4)
	if !complete {
		t.Error("incomplete, though only quiet flows did not fit")
	}
	var ports []uint16
	for _, id := range ids {
		ports = append(ports, id.SPort)
	}
	if want := []uint16{2000, 1009, 1008, 1007}; !slices.Equal(ports, want) {
		t.Fatalf("release lists ports %v, want %v", ports, want)
	}
	for i := range 10 {
		want := verdictDrop
		if i >= 7 {
			want = verdictAnswer
		}
		if v := r.judge(udp(uint16(1000+i), 1), 1100*ms); v != want {
			t.Errorf("quiet flow %d after the release: %s, want %s", 1000+i, v, want)
		}
	}
}
