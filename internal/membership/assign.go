package membership

import (
	"hash/fnv"
	"math/bits"
	"net/netip"
	"slices"
	"sort"

	"github.com/clusterip/clusterip/nodeset"
)

// Member is one node as the local node sees it.
type Member struct {
	Name  string
	Addr  string
	State string // alive, suspect (both still count as alive), dead, left
	// Clusters are sorted by VIP (Members returns them so), shared: not
	// to be changed in place.
	Clusters []ClusterState
	// Pending is a member that has not said anything about its clusters
	// yet: it just started. Until it does, nobody can know what it serves.
	Pending bool
}

// Cluster returns the member's state for vip: a binary search, since a
// daemon looks up every cluster of every member on each round.
func (m Member) Cluster(vip netip.Addr) (ClusterState, bool) {
	i, ok := slices.BinarySearchFunc(m.Clusters, vip, func(c ClusterState, v netip.Addr) int { return c.VIP.Compare(v) })
	if !ok {
		return ClusterState{}, false
	}
	return m.Clusters[i], true
}

// Live tells whether the member is up as far as the cluster is concerned.
// A suspect member still counts: memberlist's suspicion timeout is the time
// to prove it dead, and moving its numbers before then would flap on every
// lost probe.
func (m Member) Live() bool { return m.State == "alive" || m.State == "suspect" }

// Assign returns the member name that should serve each node number
// 1..total of the cluster vip (index 0 unused), computed only from members,
// so every node that sees the same members reaches the same answer:
//
//   - a number goes to its home (the live member whose Home holds it) while
//     that member is available (not draining, healthy);
//   - otherwise to one available live member chosen by rendezvous hashing
//     over (member, VIP, number), so the numbers of a failed node spread
//     evenly over the survivors and move back when it returns;
//   - with no available member left, to its home if live, else by rendezvous
//     over all live members: serving while sick beats a black hole.
//
// If two live members claim the same home number, the lexically first name
// wins. A member never gets a number it Excludes. Members without vip take
// no part.
func Assign(vip netip.Addr, total int, members []Member) []string {
	out := make([]string, total+1)
	// Every daemon runs this for each cluster on each round, over every
	// member: 64 members × 64 numbers must cost microseconds, not
	// allocations.
	type candidate struct {
		name           string
		home, excluded nodeset.NodeSet
		available      bool
	}
	live := make([]candidate, 0, len(members))
	for i := range members {
		m := &members[i]
		if !m.Live() {
			continue
		}
		if c, ok := m.Cluster(vip); ok {
			live = append(live, candidate{m.Name, c.Home, c.Excluded, c.Available()})
		}
	}
	sort.Slice(live, func(i, j int) bool { return live[i].name < live[j].name })
	// homeOf[n] is the first live member (by name) whose home n is, +1.
	homeOf := make([]int, total+1)
	for i := range live {
		for h := uint64(live[i].home &^ live[i].excluded); h != 0; h &= h - 1 {
			if n := bits.TrailingZeros64(h) + 1; n <= total && homeOf[n] == 0 {
				homeOf[n] = i + 1
			}
		}
	}
	available := make([]string, 0, len(live))
	anyLive := make([]string, 0, len(live))
	for n := 1; n <= total; n++ {
		home := homeOf[n] - 1
		if home >= 0 && live[home].available {
			out[n] = live[home].name
			continue
		}
		available, anyLive = available[:0], anyLive[:0]
		for i := range live {
			c := &live[i]
			if c.excluded.Contains(n) {
				continue
			}
			anyLive = append(anyLive, c.name)
			if c.available {
				available = append(available, c.name)
			}
		}
		switch {
		case len(available) > 0:
			out[n] = rendezvous(vip, n, available)
		case home >= 0:
			out[n] = live[home].name
		case len(anyLive) > 0:
			out[n] = rendezvous(vip, n, anyLive)
		}
	}
	return out
}

// rendezvous picks the candidate with the highest score for (vip, n):
// highest-random-weight hashing, so removing one candidate moves only the
// numbers it held.
func rendezvous(vip netip.Addr, n int, candidates []string) string {
	best, bestScore := "", uint64(0)
	v := vip.AsSlice()
	for _, c := range candidates {
		h := fnv.New64a()
		h.Write([]byte(c))
		h.Write([]byte{0})
		h.Write(v)
		h.Write([]byte{byte(n)})
		if s := mix64(h.Sum64()); best == "" || s > bestScore {
			best, bestScore = c, s
		}
	}
	return best
}

// mix64 is splitmix64's finalizer. FNV alone barely moves the high bits for
// a change in the last byte, so without it the order of the candidates would
// hardly depend on the number, and one survivor would take every orphan.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Numbers returns the numbers assigned to name in an Assign result.
func Numbers(assigned []string, name string) nodeset.NodeSet {
	var s nodeset.NodeSet
	for n, who := range assigned {
		if n > 0 && who == name {
			s = s.Add(n)
		}
	}
	return s
}
