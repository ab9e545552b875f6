package daemon

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync/atomic"
	"time"

	"github.com/clusterip/clusterip/internal/datapath"
	"github.com/clusterip/clusterip/internal/membership"
	"github.com/clusterip/clusterip/nodeset"
)

// handoffObserve is how long a node keeps serving a number it is handing
// over, while the receiving node watches which flows exist. A flow seen in
// that time stays with the node that had it; a flow the receiver has never
// seen after it is new. It is long enough for every live flow exchanging data
// at least every few hundred milliseconds to show itself.
const handoffObserve = time.Second

// releaseHold is how long a direct "released" message counts before the
// releaser's gossiped state is expected to say the same.
const releaseHold = 2 * time.Second

// releaseWait is how long a node that held new connections of a number
// waits for the release message once gossip says the number was let go:
// the two travel separately, and only the message says which held
// connections are this node's to answer. They stay held meanwhile.
const releaseWait = 300 * time.Millisecond

// failover is one cluster's part in automatic assignment: a state machine
// that step moves, with no I/O of its own. The daemon's failover loop owns
// it; control-file writes, drain and health checks change the inputs (home,
// excluded, draining, unhealthy, linkDown) under cluster.mu.
type failover struct {
	home      nodeset.NodeSet // --local-node, edited by +N/-N
	excluded  nodeset.NodeSet // numbers an operator took away with -N
	draining  bool
	drainEnd  time.Time // zero: keep kept flows until they end
	unhealthy bool      // the health check fails
	linkDown  bool      // the interface is gone or down: nothing reaches this node
	// notFlooded: the flood check finds that frames to the cluster MAC do
	// not reach this node. Gossiped so that every node can name it; it
	// does not move numbers (the switch fails every node alike, mostly).
	notFlooded atomic.Bool

	serving    nodeset.NodeSet
	leaving    map[int]time.Time // numbers being handed off, since when
	releasedAt map[int]time.Time // numbers this node released, until a flow sweep has counted them
	// releasedTo is who each number just released went to, until gossip
	// shows that node serving it: until then this node must count it as
	// served there (it may be, the gossip saying so on its way), not take
	// it back on the strength of stale news.
	releasedTo map[int]releaseTarget
	observing  nodeset.NodeSet
	holding    nodeset.NodeSet                // numbers whose new connections were held in the last step
	awaiting   map[int]time.Time              // let go by gossip, release message not here yet, since when
	released   map[releaseKey]receivedRelease // others' direct "released" messages
}

type releaseKey struct {
	from string
	node int
}

type releaseTarget struct {
	to string
	at time.Time
}

// receivedRelease is another node's release of a number, as its message
// said: when it came, and the flows the sender keeps (nil if its list was
// incomplete).
type receivedRelease struct {
	at     time.Time
	theirs []datapath.FlowID
}

func newFailover(home nodeset.NodeSet) *failover {
	return &failover{home: home, leaving: map[int]time.Time{}, releasedAt: map[int]time.Time{}, releasedTo: map[int]releaseTarget{},
		awaiting: map[int]time.Time{}, released: map[releaseKey]receivedRelease{}}
}

// localState is what this node says about the cluster before reconciling:
// the inputs of Assign.
func (f *failover) localState(vip netip.Addr) membership.ClusterState {
	leaving := nodeset.NodeSet(0)
	for k := range f.leaving {
		leaving = leaving.Add(k)
	}
	return membership.ClusterState{
		VIP: vip, Home: f.home, Serving: f.serving, Leaving: leaving,
		Excluded: f.excluded, Draining: f.draining, Unhealthy: f.unhealthy || f.linkDown, NotFlooded: f.notFlooded.Load(),
	}
}

// stepInput is everything one reconcile step knows: the membership view
// (with this node's own entry as it stands before the step), the time, and
// the datapath's last flow count.
type stepInput struct {
	VIP     netip.Addr
	Total   int
	Me      string
	Members []membership.Member
	Now     time.Time
	Flows   datapath.FlowStats
}

// stepOutput is what the cluster must do to carry a step out, in this
// order: put Policy in place, then send a release for each number in
// Release (with the flows it keeps, and forgetting its quiet connectionless
// ones), then settle each number in Take; publish State.
type stepOutput struct {
	State   membership.ClusterState
	Policy  datapath.Policy
	Release []handoff
	Take    []takeover
	Events  []string // what changed, for the log
}

// handoff is a number this node gave up in this step.
type handoff struct {
	Node  int
	To    string    // its new owner, "" if none
	Since time.Time // when the handoff began
}

// takeover is a number this node took in this step.
type takeover struct {
	Node int
	// Theirs are the flows the node that gave it up keeps, from its
	// release; nil when no complete release came (a dead node, a lost
	// message), and then nothing held is answered.
	Theirs []datapath.FlowID
}

// step moves the cluster one step towards the assignment the members agree
// on. Numbers go only with the consent of the node serving them, if it is
// alive: it keeps serving for handoffObserve while the receiver observes,
// then releases them and keeps its existing flows; the receiver takes a
// number once no live node serves it. A dead node's numbers are taken at
// once. While a number is in its handoff, the receiver holds the packets
// that open new connections of it, and when it takes the number it answers
// those the releasing node's message does not claim: a SYN that came while
// the release was on its way is answered at once instead of after the
// client's retransmission, and never by both nodes.
func (f *failover) step(in stepInput) stepOutput {
	var out stepOutput
	if f.linkDown {
		// Nothing reaches this node: there is nothing to hand over, and
		// the others must take its numbers at once.
		if f.serving != 0 {
			out.Events = append(out.Events, fmt.Sprintf("interface unusable: giving up %s at once", f.serving))
		}
		clear(f.leaving)
		clear(f.awaiting)
		f.serving, f.observing, f.holding = 0, 0, 0
		out.State = f.localState(in.VIP)
		out.Policy = datapath.Policy{Track: true}
		return out
	}
	assigned := membership.Assign(in.VIP, in.Total, in.Members)
	want := membership.Numbers(assigned, in.Me)

	var othersServing, othersHold, othersLeaving, othersKeep nodeset.NodeSet
	releasedBy := map[int]receivedRelease{}
	for _, m := range in.Members {
		st, ok := m.Cluster(in.VIP)
		if m.Name == in.Me || !ok || !m.Live() {
			continue
		}
		// A direct release is news the gossip has not carried yet: the
		// sender stopped serving the number, and may still keep flows of it.
		serving, hold := st.Serving, st.Serving|st.Kept
		for k, r := range f.released {
			if k.from == m.Name && in.Now.Sub(r.at) < releaseHold {
				serving = serving.Remove(k.node)
				hold = hold.Add(k.node)
				releasedBy[k.node] = r
			}
		}
		othersServing |= serving
		othersHold |= hold
		othersLeaving |= st.Leaving & serving
		othersKeep |= st.Kept
	}
	for k, r := range f.released {
		if in.Now.Sub(r.at) >= releaseHold {
			delete(f.released, k)
		}
	}
	// A number this node just released is served by its receiver as far
	// as this node knows, until gossip says so (then the above has it),
	// the receiver dies, or releaseHold passes without it ever serving it.
	for k, rt := range f.releasedTo {
		st, live := memberCluster(in.Members, rt.to, in.VIP)
		if !live || st.Serving.Contains(k) || in.Now.Sub(rt.at) >= releaseHold {
			delete(f.releasedTo, k)
			continue
		}
		othersServing = othersServing.Add(k)
		othersHold = othersHold.Add(k)
	}

	for _, k := range f.serving.Nodes() {
		if want.Contains(k) {
			delete(f.leaving, k)
			continue
		}
		since, ok := f.leaving[k]
		if !ok {
			f.leaving[k] = in.Now
			out.Events = append(out.Events, fmt.Sprintf("handing off %d to %s", k, assigned[k]))
			continue
		}
		if in.Now.Sub(since) >= handoffObserve {
			f.serving = f.serving.Remove(k)
			delete(f.leaving, k)
			f.releasedAt[k] = in.Now
			if assigned[k] != "" {
				f.releasedTo[k] = releaseTarget{to: assigned[k], at: in.Now}
			}
			out.Release = append(out.Release, handoff{Node: k, To: assigned[k], Since: since})
			out.Events = append(out.Events, fmt.Sprintf("released %d to %s", k, assigned[k]))
		}
	}
	f.observing = 0
	var awaiting nodeset.NodeSet
	for _, k := range want.Nodes() {
		_, released := releasedBy[k]
		switch {
		case f.serving.Contains(k):
		case othersServing.Contains(k):
			f.observing = f.observing.Add(k)
		case f.holding.Contains(k) && !released && othersKeep.Contains(k) && f.awaitRelease(k, in.Now):
			// Gossip says the live node that had it let it go; its
			// release, which says whose the held connections are, is on
			// its way.
			f.observing = f.observing.Add(k)
			awaiting = awaiting.Add(k)
		default:
			delete(f.awaiting, k)
			f.serving = f.serving.Add(k)
			t := takeover{Node: k}
			if r, ok := releasedBy[k]; ok {
				t.Theirs = r.theirs
			}
			out.Take = append(out.Take, t)
			out.Events = append(out.Events, fmt.Sprintf("serving %d", k))
		}
	}

	// A number just released counts as kept until a flow sweep that surely
	// ran with the new policy has counted its flows: saying "not serving"
	// before "keeping" would let the new owner reset them.
	out.State = f.localState(in.VIP)
	out.State.Kept = in.Flows.KeptNumbers
	for k, at := range f.releasedAt {
		if in.Flows.SweptAt.After(at.Add(datapath.FlowSweepInterval)) {
			delete(f.releasedAt, k)
		} else {
			out.State.Kept = out.State.Kept.Add(k)
		}
	}
	for k := range f.awaiting {
		if !awaiting.Contains(k) {
			delete(f.awaiting, k)
		}
	}
	f.holding = f.observing & (othersLeaving | awaiting)
	out.Policy = datapath.Policy{
		Serve:    f.serving,
		Guarded:  othersHold,
		Observe:  f.observing,
		Hold:     f.holding,
		Keep:     out.State.Kept &^ f.serving,
		Leaving:  out.State.Leaving,
		Track:    true,
		DropKept: f.draining && !f.drainEnd.IsZero() && in.Now.After(f.drainEnd),
	}
	return out
}

// memberCluster returns a live member's state for vip.
func memberCluster(members []membership.Member, name string, vip netip.Addr) (membership.ClusterState, bool) {
	for _, m := range members {
		if m.Name == name && m.Live() {
			return m.Cluster(vip)
		}
	}
	return membership.ClusterState{}, false
}

// awaitRelease tells whether the node still waits for the release of k,
// starting the wait if it has not begun.
func (f *failover) awaitRelease(k int, now time.Time) bool {
	since, ok := f.awaiting[k]
	if !ok {
		f.awaiting[k], since = now, now
	}
	return now.Sub(since) < releaseWait
}

// received records another node's release message.
func (f *failover) received(r releaseMsg, now time.Time) {
	rr := receivedRelease{at: now}
	if r.Complete {
		rr.theirs = r.Flows
		if rr.theirs == nil {
			rr.theirs = []datapath.FlowID{}
		}
	}
	f.released[releaseKey{from: r.From, node: r.Node}] = rr
}

// release is a release message waiting to be sent.
type release struct {
	to  string
	msg []byte
}

// releaseMsg tells the receiving node at once that the sender no longer
// serves a number, so that new connections wait for one gossip round less,
// and which flows of it the sender keeps, so that the receiver knows which
// of the connections that began during the handoff nobody answered.
type releaseMsg struct {
	VIP      netip.Addr
	Node     int
	From     string
	Complete bool // Flows lists every flow the sender keeps that the receiver may have seen begin
	Flows    []datapath.FlowID
}

// The wire format: 'R', version 3, the VIP's length (4 or 16), the VIP,
// the number, a flags byte (1: complete), the sender's name (a length
// byte, then the name), the number of flows (4 bytes, big endian), then
// per flow: the client's address (as long as the VIP), client port and
// server port as hashed, protocol.
const (
	releaseVersion  = 3
	releaseComplete = 1
)

func (r releaseMsg) encode() ([]byte, error) {
	if !r.VIP.IsValid() || r.VIP.Is4In6() || r.Node < 1 || r.Node > nodeset.Max || r.From == "" || len(r.From) > 255 {
		return nil, fmt.Errorf("release of %s/%d from %q: not encodable", r.VIP, r.Node, r.From)
	}
	v := r.VIP.AsSlice()
	b := make([]byte, 0, 3+len(v)+3+len(r.From)+4+len(r.Flows)*(len(v)+5))
	b = append(b, 'R', releaseVersion, byte(len(v)))
	b = append(b, v...)
	var flags byte
	if r.Complete {
		flags |= releaseComplete
	}
	b = append(b, byte(r.Node), flags, byte(len(r.From)))
	b = append(b, r.From...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.Flows)))
	for _, f := range r.Flows {
		b = append(b, f.Src[16-len(v):]...) // IPv4 clients are mapped: the last 4 bytes
		b = binary.BigEndian.AppendUint16(b, f.SPort)
		b = binary.BigEndian.AppendUint16(b, f.DPort)
		b = append(b, f.Proto)
	}
	return b, nil
}

var errBadRelease = errors.New("not a release message")

// parseReleaseMessage reads a release from the wire. Messages come from
// authenticated members, but a bug or a newer version must not crash the
// daemon: anything that is not exactly a release is an error.
func parseReleaseMessage(b []byte) (releaseMsg, error) {
	if len(b) < 3 || b[0] != 'R' || b[1] != releaseVersion || b[2] != 4 && b[2] != 16 {
		return releaseMsg{}, errBadRelease
	}
	alen := int(b[2])
	b = b[3:]
	if len(b) < alen+3 {
		return releaseMsg{}, errBadRelease
	}
	vip, _ := netip.AddrFromSlice(b[:alen])
	if vip.Is4In6() {
		return releaseMsg{}, errBadRelease
	}
	r := releaseMsg{VIP: vip, Node: int(b[alen])}
	flags, nameLen := b[alen+1], int(b[alen+2])
	if r.Node < 1 || r.Node > nodeset.Max || flags&^releaseComplete != 0 || nameLen == 0 {
		return releaseMsg{}, errBadRelease
	}
	r.Complete = flags&releaseComplete != 0
	b = b[alen+3:]
	if len(b) < nameLen+4 {
		return releaseMsg{}, errBadRelease
	}
	r.From = string(b[:nameLen])
	n := binary.BigEndian.Uint32(b[nameLen:])
	b = b[nameLen+4:]
	flowLen := alen + 5
	if uint64(len(b)) != uint64(n)*uint64(flowLen) {
		return releaseMsg{}, errBadRelease
	}
	r.Flows = make([]datapath.FlowID, n)
	for i := range r.Flows {
		p := b[i*flowLen:]
		f := &r.Flows[i]
		if alen == 4 {
			f.Src = netip.AddrFrom4([4]byte(p[:4])).As16()
		} else {
			copy(f.Src[:], p[:16])
		}
		f.SPort, f.DPort, f.Proto = binary.BigEndian.Uint16(p[alen:]), binary.BigEndian.Uint16(p[alen+2:]), p[alen+4]
	}
	return r, nil
}

// memberStatuses is the membership view of one cluster: every member that
// has it, and those that are gone (for as long as membership remembers them).
func memberStatuses(vip netip.Addr, members []membership.Member) []MemberStatus {
	out := []MemberStatus{}
	for _, m := range members {
		var st membership.ClusterState
		has := false
		if st, has = m.Cluster(vip); !has && m.Live() {
			continue // a member without this cluster
		}
		ms := MemberStatus{Name: m.Name, Addr: m.Addr, State: m.State,
			Home: numbers(st.Home), Serving: numbers(st.Serving), HandingOff: numbers(st.Leaving), KeepsFlows: numbers(st.Kept)}
		if m.Live() {
			switch {
			case st.Draining:
				ms.State = "draining"
			case st.Unhealthy:
				ms.State = "unhealthy"
			}
		}
		out = append(out, ms)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
