package daemon

import (
	"net/netip"
	"sort"
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

// failover is one cluster's part in automatic assignment. The daemon's
// failover loop owns it; control-file writes, drain and health checks change
// the inputs (home, excluded, draining, unhealthy) under cluster.mu.
type failover struct {
	home      nodeset.NodeSet // --local-node, edited by +N/-N
	excluded  nodeset.NodeSet // numbers an operator took away with -N
	draining  bool
	drainEnd  time.Time // zero: keep kept flows until they end
	unhealthy bool

	serving    nodeset.NodeSet
	leaving    map[int]time.Time // numbers being handed off, since when
	releasedAt map[int]time.Time // numbers this node released, until a flow sweep has counted them
	observing  nodeset.NodeSet
	released   map[releaseKey]time.Time // others' direct "released" messages
}

type releaseKey struct {
	from string
	node int
}

func newFailover(home nodeset.NodeSet) *failover {
	return &failover{home: home, leaving: map[int]time.Time{}, releasedAt: map[int]time.Time{}, released: map[releaseKey]time.Time{}}
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
		Excluded: f.excluded, Draining: f.draining, Unhealthy: f.unhealthy,
	}
}

// reconcile moves the cluster one step towards the assignment the members
// agree on and returns the state to publish. Numbers go only with the
// consent of the node serving them, if it is alive: it keeps serving for
// handoffObserve while the receiver observes, then releases them and keeps
// its existing flows; the receiver takes a number once no live node serves
// it. A dead node's numbers are taken at once.
//
// It returns the release messages to send once the new state is in effect
// and published: sent earlier, they would let the receiver answer a number
// this node's datapath still answers.
func (c *cluster) reconcile(me string, members []membership.Member, now time.Time) (membership.ClusterState, []release) {
	f := c.fo
	vip := c.spec.VIP
	assigned := membership.Assign(vip, c.spec.TotalNodes, members)
	want := membership.Numbers(assigned, me)

	var othersServing, othersHold nodeset.NodeSet
	for _, m := range members {
		st, ok := m.Cluster(vip)
		if m.Name == me || !ok || !m.Live() {
			continue
		}
		// A direct release is news the gossip has not carried yet: the
		// sender stopped serving the number, and may still keep flows of it.
		serving, hold := st.Serving, st.Serving|st.Kept
		for k, at := range f.released {
			if k.from == m.Name && now.Sub(at) < releaseHold {
				serving = serving.Remove(k.node)
				hold = hold.Add(k.node)
			}
		}
		othersServing |= serving
		othersHold |= hold
	}
	for k, at := range f.released {
		if now.Sub(at) >= releaseHold {
			delete(f.released, k)
		}
	}

	var releases []release
	for _, k := range f.serving.Nodes() {
		if want.Contains(k) {
			delete(f.leaving, k)
			continue
		}
		since, ok := f.leaving[k]
		if !ok {
			f.leaving[k] = now
			c.log.Info("handing off", "node", k, "to", assigned[k])
			continue
		}
		if now.Sub(since) >= handoffObserve {
			f.serving = f.serving.Remove(k)
			delete(f.leaving, k)
			f.releasedAt[k] = now
			// A connectionless flow silent through the whole handoff was
			// never seen by the receiver, which will take it for new: it
			// must then be the receiver's alone.
			c.dp.ForgetQuiet(k, since)
			if assigned[k] != "" {
				releases = append(releases, release{to: assigned[k], msg: releaseMessage(vip, k, me)})
			}
			c.log.Info("released", "node", k, "to", assigned[k])
		}
	}
	f.observing = 0
	for _, k := range want.Nodes() {
		switch {
		case f.serving.Contains(k):
		case othersServing.Contains(k):
			f.observing = f.observing.Add(k)
		default:
			f.serving = f.serving.Add(k)
			c.log.Info("serving", "node", k)
		}
	}

	// A number just released counts as kept until a flow sweep that surely
	// ran with the new policy has counted its flows: saying "not serving"
	// before "keeping" would let the new owner reset them.
	flows := c.dp.Flows()
	st := f.localState(vip)
	st.Kept = flows.KeptNumbers
	for k, at := range f.releasedAt {
		if flows.SweptAt.After(at.Add(datapath.FlowSweepInterval)) {
			delete(f.releasedAt, k)
		} else {
			st.Kept = st.Kept.Add(k)
		}
	}
	dropKept := f.draining && !f.drainEnd.IsZero() && now.After(f.drainEnd)
	c.dp.SetPolicy(datapath.Policy{Serve: f.serving, Guarded: othersHold, Observe: f.observing, Keep: st.Kept &^ f.serving,
		Leaving: st.Leaving, Track: true, DropKept: dropKept})
	return st, releases
}

// release is a release message waiting to be sent.
type release struct {
	to  string
	msg []byte
}

// A release message tells the receiving node at once that the sender no
// longer serves a number, so that new connections wait for one gossip round
// less: "R", the VIP, the number, the sender's name.
func releaseMessage(vip netip.Addr, node int, from string) []byte {
	v := vip.As4()
	return append([]byte{'R', v[0], v[1], v[2], v[3], byte(node)}, from...)
}

func parseReleaseMessage(b []byte) (vip netip.Addr, node int, from string, ok bool) {
	if len(b) < 7 || b[0] != 'R' || int(b[5]) < 1 || int(b[5]) > nodeset.Max {
		return vip, 0, "", false
	}
	return netip.AddrFrom4([4]byte(b[1:5])), int(b[5]), string(b[6:]), true
}

// MemberStatus is one member as `clusterctl status` shows it.
type MemberStatus struct {
	Name     string          `json:"name"`
	Addr     string          `json:"addr"`
	State    string          `json:"state"` // alive, suspect, dead, left, draining, unhealthy
	Serving  nodeset.NodeSet `json:"serving"`
	Leaving  nodeset.NodeSet `json:"leaving"`
	Kept     nodeset.NodeSet `json:"kept"`
	Home     nodeset.NodeSet `json:"home"`
	Draining bool            `json:"draining,omitempty"`
	Sick     bool            `json:"unhealthy,omitempty"`
}

// memberStatuses is the membership view of one cluster.
func memberStatuses(vip netip.Addr, members []membership.Member) []MemberStatus {
	var out []MemberStatus
	for _, m := range members {
		ms := MemberStatus{Name: m.Name, Addr: m.Addr, State: m.State}
		if st, ok := m.Cluster(vip); ok {
			ms.Serving, ms.Leaving, ms.Kept, ms.Home = st.Serving, st.Leaving, st.Kept, st.Home
			ms.Draining, ms.Sick = st.Draining, st.Unhealthy
			if m.Live() {
				switch {
				case st.Draining:
					ms.State = "draining"
				case st.Unhealthy:
					ms.State = "unhealthy"
				}
			}
		} else if m.Live() {
			continue // a member without this cluster
		}
		out = append(out, ms)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
