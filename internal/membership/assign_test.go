package membership_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/clusterip/clusterip/internal/membership"
	"github.com/clusterip/clusterip/nodeset"
)

var testVIP = netip.MustParseAddr("192.0.2.10")

// mem is a live member serving testVIP with the given home numbers.
func mem(name string, home nodeset.NodeSet) membership.Member {
	return membership.Member{
		Name:     name,
		Addr:     "127.0.0.1:7946",
		State:    "alive",
		Clusters: []membership.ClusterState{{VIP: testVIP, Home: home, Serving: home}},
	}
}

func withState(m membership.Member, state string) membership.Member {
	m.State = state
	return m
}

func draining(m membership.Member) membership.Member {
	m.Clusters = slices.Clone(m.Clusters)
	m.Clusters[0].Draining = true
	return m
}

func unhealthy(m membership.Member) membership.Member {
	m.Clusters = slices.Clone(m.Clusters)
	m.Clusters[0].Unhealthy = true
	return m
}

func excluding(m membership.Member, ex nodeset.NodeSet) membership.Member {
	m.Clusters = slices.Clone(m.Clusters)
	m.Clusters[0].Excluded = ex
	return m
}

// byName renders an Assign result as "name:numbers ..." sorted by name,
// with "-:numbers" for the unassigned ones.
func byName(assigned []string) string {
	sets := map[string]nodeset.NodeSet{}
	for n := 1; n < len(assigned); n++ {
		who := assigned[n]
		if who == "" {
			who = "-"
		}
		sets[who] = sets[who].Add(n)
	}
	var names []string
	for name := range sets {
		names = append(names, name)
	}
	sort.Strings(names)
	var b strings.Builder
	for i, name := range names {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s:%s", name, sets[name])
	}
	return b.String()
}

// checkAssign checks what holds for every Assign result: index 0 unused,
// numbers given only to live members that serve the VIP and do not
// exclude them, and Numbers agreeing with the slice.
func checkAssign(t *testing.T, total int, members []membership.Member, got []string) {
	t.Helper()
	if len(got) != total+1 {
		t.Fatalf("Assign returned %d entries, want %d", len(got), total+1)
	}
	if got[0] != "" {
		t.Errorf("index 0 assigned to %q", got[0])
	}
	byN := map[string]membership.Member{}
	for _, m := range members {
		byN[m.Name] = m
	}
	for n := 1; n <= total; n++ {
		if got[n] == "" {
			continue
		}
		m, ok := byN[got[n]]
		if !ok {
			t.Errorf("number %d assigned to unknown member %q", n, got[n])
			continue
		}
		if !m.Live() {
			t.Errorf("number %d assigned to %s, which is %s", n, m.Name, m.State)
		}
		c, ok := m.Cluster(testVIP)
		if !ok {
			t.Errorf("number %d assigned to %s, which does not serve %v", n, m.Name, testVIP)
		}
		if c.Excluded.Contains(n) {
			t.Errorf("number %d assigned to %s, which excludes it", n, m.Name)
		}
	}
	var union nodeset.NodeSet
	for name := range byN {
		s := membership.Numbers(got, name)
		if union&s != 0 {
			t.Errorf("Numbers(%s) = %v overlaps another member's", name, s)
		}
		union |= s
		for _, n := range s.Nodes() {
			if got[n] != name {
				t.Errorf("Numbers(%s) holds %d, assigned to %q", name, n, got[n])
			}
		}
	}
}

func TestAssign(t *testing.T) {
	a := mem("a", set(t, 1, 2))
	b := mem("b", set(t, 3))
	c := mem("c", set(t, 4))
	tests := []struct {
		name    string
		total   int
		members []membership.Member
		want    string // byName of the result; "" to check only the invariants
		check   func(t *testing.T, got []string)
	}{
		{
			name:    "all homes alive",
			total:   4,
			members: []membership.Member{a, b, c},
			want:    "a:1,2 b:3 c:4",
		},
		{
			name:    "no members",
			total:   3,
			members: nil,
			want:    "-:1,2,3",
		},
		{
			name:    "total 0",
			total:   0,
			members: []membership.Member{a},
			want:    "",
		},
		{
			name:    "number without a home goes to someone",
			total:   5,
			members: []membership.Member{a, b, c},
			check: func(t *testing.T, got []string) {
				if byName(got[:5]) != "a:1,2 b:3 c:4" {
					t.Errorf("homes moved: %s", byName(got))
				}
				if got[5] == "" {
					t.Errorf("number 5 unassigned")
				}
			},
		},
		{
			name:    "dead member's numbers go to survivors",
			total:   4,
			members: []membership.Member{withState(a, "dead"), b, c},
			check: func(t *testing.T, got []string) {
				if got[3] != "b" || got[4] != "c" {
					t.Errorf("survivors' homes moved: %s", byName(got))
				}
				for _, n := range []int{1, 2} {
					if got[n] != "b" && got[n] != "c" {
						t.Errorf("number %d of dead a went to %q, want b or c", n, got[n])
					}
				}
			},
		},
		{
			name:    "left member counts as dead",
			total:   4,
			members: []membership.Member{withState(a, "left"), b, c},
			check: func(t *testing.T, got []string) {
				if n := membership.Numbers(got, "a"); n != 0 {
					t.Errorf("left member a got %v", n)
				}
			},
		},
		{
			name:    "suspect counts as live",
			total:   4,
			members: []membership.Member{withState(a, "suspect"), b, c},
			want:    "a:1,2 b:3 c:4",
		},
		{
			name:    "unknown state counts as dead",
			total:   4,
			members: []membership.Member{withState(a, "unknown"), b, c},
			check: func(t *testing.T, got []string) {
				if n := membership.Numbers(got, "a"); n != 0 {
					t.Errorf("member a in state unknown got %v", n)
				}
			},
		},
		{
			name:    "draining member gives up its home",
			total:   4,
			members: []membership.Member{draining(a), b, c},
			check: func(t *testing.T, got []string) {
				if got[1] == "a" || got[2] == "a" || got[3] != "b" || got[4] != "c" {
					t.Errorf("got %s, want a's numbers on b or c", byName(got))
				}
			},
		},
		{
			name:    "unhealthy member gives up its home",
			total:   4,
			members: []membership.Member{a, unhealthy(b), c},
			check: func(t *testing.T, got []string) {
				if got[1] != "a" || got[2] != "a" || got[3] == "b" || got[4] != "c" {
					t.Errorf("got %s, want b's number on a or c", byName(got))
				}
			},
		},
		{
			name:    "everyone draining: each keeps its home",
			total:   4,
			members: []membership.Member{draining(a), draining(b), unhealthy(c)},
			want:    "a:1,2 b:3 c:4",
		},
		{
			name:    "everyone draining, dead home: any live member",
			total:   4,
			members: []membership.Member{withState(a, "dead"), draining(b), unhealthy(c)},
			check: func(t *testing.T, got []string) {
				if got[3] != "b" || got[4] != "c" {
					t.Errorf("homes moved: %s", byName(got))
				}
				for _, n := range []int{1, 2} {
					if got[n] != "b" && got[n] != "c" {
						t.Errorf("number %d went to %q, want b or c", n, got[n])
					}
				}
			},
		},
		{
			name:    "available member preferred over sick home",
			total:   4,
			members: []membership.Member{unhealthy(a), draining(b), c},
			want:    "c:1,2,3,4",
		},
		{
			name:    "excluded numbers are not given to the excluder",
			total:   4,
			members: []membership.Member{withState(a, "dead"), excluding(b, set(t, 1, 2)), c},
			want:    "b:3 c:1,2,4",
		},
		{
			name:    "home excluded by its own member",
			total:   4,
			members: []membership.Member{excluding(a, set(t, 1)), b, withState(c, "dead")},
			check: func(t *testing.T, got []string) {
				if got[1] != "b" {
					t.Errorf("number 1 went to %q, want b (a excludes it, c is dead)", got[1])
				}
				if got[2] != "a" || got[3] != "b" {
					t.Errorf("homes moved: %s", byName(got))
				}
			},
		},
		{
			name:    "number everyone excludes stays unassigned",
			total:   4,
			members: []membership.Member{excluding(a, set(t, 4)), excluding(b, set(t, 4)), excluding(c, set(t, 4))},
			want:    "-:4 a:1,2 b:3",
		},
		{
			name:    "excluded and draining: fallback still honours exclusion",
			total:   2,
			members: []membership.Member{draining(excluding(mem("a", set(t, 1)), set(t, 2))), draining(mem("b", set(t, 2)))},
			want:    "a:1 b:2",
		},
		{
			name:    "no live member",
			total:   4,
			members: []membership.Member{withState(a, "dead"), withState(b, "left"), withState(c, "dead")},
			want:    "-:1,2,3,4",
		},
		{
			name:  "members without the VIP take no part",
			total: 4,
			members: []membership.Member{
				a, withState(b, "dead"), c,
				{Name: "other", State: "alive", Clusters: []membership.ClusterState{{VIP: netip.MustParseAddr("192.0.2.99"), Home: set(t, 3)}}},
				{Name: "pending", State: "alive", Pending: true},
			},
			check: func(t *testing.T, got []string) {
				if got[3] != "a" && got[3] != "c" {
					t.Errorf("number 3 went to %q, want a or c", got[3])
				}
			},
		},
		{
			name:    "home conflict: lexically first wins",
			total:   4,
			members: []membership.Member{mem("b", set(t, 2, 3)), mem("a", set(t, 1, 2)), c},
			want:    "a:1,2 b:3 c:4",
		},
		{
			name:    "home conflict: winner dead, other claimant takes it",
			total:   4,
			members: []membership.Member{mem("b", set(t, 2, 3)), withState(mem("a", set(t, 1, 2)), "dead")},
			check: func(t *testing.T, got []string) {
				if got[2] != "b" || got[3] != "b" {
					t.Errorf("got %s, want 2 and 3 on b", byName(got))
				}
			},
		},
		{
			name:    "total 64",
			total:   64,
			members: []membership.Member{mem("a", nodeset.NodeSet(0xffffffff)), mem("b", nodeset.NodeSet(0xffffffff00000000))},
			want:    "a:" + nodeset.NodeSet(0xffffffff).String() + " b:" + nodeset.NodeSet(0xffffffff00000000).String(),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := membership.Assign(testVIP, tc.total, tc.members)
			checkAssign(t, tc.total, tc.members, got)
			if tc.want != "" || tc.check == nil {
				if s := byName(got); s != tc.want {
					t.Errorf("Assign = %s, want %s", s, tc.want)
				}
			}
			if tc.check != nil {
				tc.check(t, got)
			}
		})
	}
}

// TestAssignDeadMember: a dead member's numbers are spread over the
// survivors: every number is assigned exactly once, none to the dead one,
// the survivors keep their homes, and the dead member's numbers move back
// when it returns.
func TestAssignDeadMember(t *testing.T) {
	const total = 16
	var members []membership.Member
	for i := range 4 {
		var home nodeset.NodeSet
		for n := i*4 + 1; n <= i*4+4; n++ {
			home = home.Add(n)
		}
		members = append(members, mem(fmt.Sprintf("node%d", i+1), home))
	}
	before := membership.Assign(testVIP, total, members)
	for _, m := range members {
		if got, want := membership.Numbers(before, m.Name), m.Clusters[0].Home; got != want {
			t.Fatalf("all alive: %s has %v, want its home %v", m.Name, got, want)
		}
	}
	for dead := range members {
		t.Run(members[dead].Name, func(t *testing.T) {
			ms := slices.Clone(members)
			ms[dead] = withState(ms[dead], "dead")
			got := membership.Assign(testVIP, total, ms)
			checkAssign(t, total, ms, got)
			var union nodeset.NodeSet
			for _, m := range ms {
				s := membership.Numbers(got, m.Name)
				union |= s
				if m.Name == ms[dead].Name {
					if s != 0 {
						t.Errorf("dead %s got %v", m.Name, s)
					}
					continue
				}
				if home := m.Clusters[0].Home; s&home != home {
					t.Errorf("survivor %s has %v, lost part of its home %v", m.Name, s, home)
				}
			}
			if union.Len() != total {
				t.Errorf("assigned %v, want all of 1..%d", union, total)
			}
			// The member comes back: its numbers return.
			if again := membership.Assign(testVIP, total, members); !slices.Equal(again, before) {
				t.Errorf("after return: %s, want %s", byName(again), byName(before))
			}
		})
	}
}

// TestAssignDeterministic: every node computes Assign over the members in
// whatever order memberlist gave them; they must agree.
func TestAssignDeterministic(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := range 200 {
		total := 1 + r.IntN(64)
		members := randomMembers(r, total, 2+r.IntN(9))
		want := membership.Assign(testVIP, total, members)
		checkAssign(t, total, members, want)
		for range 5 {
			shuffled := slices.Clone(members)
			r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			if got := membership.Assign(testVIP, total, shuffled); !slices.Equal(got, want) {
				t.Fatalf("iteration %d: order %v gave %s, order %v gave %s",
					iter, names(members), byName(want), names(shuffled), byName(got))
			}
		}
	}
}

func names(ms []membership.Member) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Name)
	}
	return out
}

// randomMembers makes n members sharing total numbers: the numbers are
// dealt out as homes (some members may get none, some numbers may have no
// home), some members are suspect, draining, unhealthy or exclude a number,
// and some are dead; at least one is live and available.
func randomMembers(r *rand.Rand, total, n int) []membership.Member {
	members := make([]membership.Member, n)
	for i := range members {
		members[i] = mem(fmt.Sprintf("m%02d-%d", i, r.IntN(1000)), 0)
	}
	for num := 1; num <= total; num++ {
		if r.IntN(10) == 0 {
			continue // no home
		}
		i := r.IntN(n)
		members[i].Clusters[0].Home = members[i].Clusters[0].Home.Add(num)
	}
	for i := range members {
		switch r.IntN(8) {
		case 0:
			members[i] = withState(members[i], "suspect")
		case 1:
			members[i] = draining(members[i])
		case 2:
			members[i] = unhealthy(members[i])
		case 3:
			members[i] = excluding(members[i], nodeset.NodeSet(0).Add(1+r.IntN(total)))
		case 4:
			members[i] = withState(members[i], "dead")
		}
	}
	members[r.IntN(n)] = mem("available", 0)
	return members
}

// TestAssignRendezvousStable: taking one member away moves only the numbers
// it had; everyone else keeps exactly what they had.
func TestAssignRendezvousStable(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for total := 1; total <= 64; total++ {
		for n := 2; n <= 10; n++ {
			for _, scenario := range []string{"homes", "no homes", "random"} {
				var members []membership.Member
				switch scenario {
				case "homes":
					// Homes partition 1..total round robin.
					for i := range n {
						members = append(members, mem(fmt.Sprintf("node%d", i+1), 0))
					}
					for num := 1; num <= total; num++ {
						c := &members[(num-1)%n].Clusters[0]
						c.Home = c.Home.Add(num)
					}
				case "no homes":
					// Nobody's home is up: everything is rendezvous.
					for i := range n {
						members = append(members, mem(fmt.Sprintf("node%d", i+1), 0))
					}
				case "random":
					members = randomMembers(r, total, n)
				}
				before := membership.Assign(testVIP, total, members)
				for gone := range members {
					rest := slices.Delete(slices.Clone(members), gone, gone+1)
					if !slices.ContainsFunc(rest, func(m membership.Member) bool {
						c, _ := m.Cluster(testVIP)
						return m.Live() && c.Available()
					}) {
						continue // nobody available: the fallbacks apply
					}
					after := membership.Assign(testVIP, total, rest)
					name := members[gone].Name
					for num := 1; num <= total; num++ {
						if before[num] != name && after[num] != before[num] {
							t.Fatalf("total %d, %d members (%s), removing %s moved number %d from %s to %s\nbefore %s\nafter  %s",
								total, n, scenario, name, num, before[num], after[num], byName(before), byName(after))
						}
						if after[num] == name {
							t.Fatalf("removed %s still has %d", name, num)
						}
					}
					// Marking it dead instead of removing it is the same.
					dead := slices.Clone(members)
					dead[gone] = withState(dead[gone], "dead")
					if d := membership.Assign(testVIP, total, dead); !slices.Equal(d, after) {
						t.Fatalf("total %d: dead %s gives %s, removed gives %s", total, name, byName(d), byName(after))
					}
				}
			}
		}
	}
}

// TestAssignSpread: when a node fails, its numbers should spread evenly
// over the survivors, not land on one of them.
//
// Setup: 64 numbers, 5 nodes; the dead one's home held 16 numbers (1, 5,
// 9, ..., 61: not a contiguous block), the 4 survivors hold the other 48
// as homes. The 16 orphans are shared by 4 survivors: a fair share is 4.
//
// Bound: with an ideal hash each survivor's share is Binomial(16, 1/4):
// P(share >= 9, more than twice the fair share) = 0.0075, so for one VIP
// P(some survivor > 2x) <= 4*0.0075 = 3%. A single VIP passing or failing
// would say little, so the test runs 256 VIPs and allows up to 10% of them
// (about 25, against about 8 expected) to exceed 2x. Over all 256 VIPs
// each survivor gets 1024 orphans on average with standard deviation
// sqrt(4096*1/4*3/4) = 28; the test allows +-20% (about 7 deviations).
func TestAssignSpread(t *testing.T) {
	const (
		total     = 64
		survivors = 4
		fair      = 16 / survivors
	)
	homes := make([]nodeset.NodeSet, survivors+1)
	deadHome := nodeset.NodeSet(0)
	for num := 1; num <= total; num++ {
		if num%4 == 1 { // 1, 5, 9, ...: 16 numbers
			deadHome = deadHome.Add(num)
			continue
		}
		i := (num / 4) % survivors
		homes[i] = homes[i].Add(num)
	}
	var tooMany []string
	sums := map[string]int{}
	const vips = 256
	for v := range vips {
		vip := netip.AddrFrom4([4]byte{10, 20, byte(v), byte(v*7 + 1)})
		var members []membership.Member
		for i := range survivors {
			m := mem(fmt.Sprintf("node%d", i+1), homes[i])
			m.Clusters[0].VIP = vip
			members = append(members, m)
		}
		dead := mem("node5", deadHome)
		dead.Clusters[0].VIP = vip
		dead.State = "dead"
		members = append(members, dead)

		got := membership.Assign(vip, total, members)
		counts := map[string]int{}
		for _, num := range deadHome.Nodes() {
			if got[num] == "" || got[num] == "node5" {
				t.Fatalf("VIP %v: orphan %d went to %q", vip, num, got[num])
			}
			counts[got[num]]++
			sums[got[num]]++
		}
		for name, c := range counts {
			if c > 2*fair {
				tooMany = append(tooMany, fmt.Sprintf("%v: %s got %d of 16", vip, name, c))
				break
			}
		}
	}
	if len(tooMany) > vips/10 {
		t.Errorf("%d of %d VIPs give a survivor more than twice its fair share (%d) of 16 orphans, want at most %d; e.g.\n%s",
			len(tooMany), vips, fair, vips/10, strings.Join(tooMany[:min(len(tooMany), 5)], "\n"))
	}
	mean := vips * 16 / survivors
	for i := range survivors {
		name := fmt.Sprintf("node%d", i+1)
		if s := sums[name]; s < mean*8/10 || s > mean*12/10 {
			t.Errorf("over %d VIPs %s got %d orphans, want %d +-20%%", vips, name, s, mean)
		}
	}
}

// TestAssignSpreadNoHomes is TestAssignSpread's simplest form: nobody's home
// is up, so all 64 numbers go by rendezvous over 4 members. Fair share 16;
// Binomial(64, 1/4) exceeds 32 with probability about 1e-5.
func TestAssignSpreadNoHomes(t *testing.T) {
	var members []membership.Member
	for i := range 4 {
		members = append(members, mem(fmt.Sprintf("node%d", i+1), 0))
	}
	got := membership.Assign(testVIP, 64, members)
	for _, m := range members {
		if n := membership.Numbers(got, m.Name).Len(); n > 32 || n == 0 {
			t.Errorf("%s got %d of 64 numbers, want about 16: %s", m.Name, n, byName(got))
		}
	}
}

func TestNumbers(t *testing.T) {
	assigned := []string{"x", "a", "b", "a", "", "c", "a"}
	for _, tc := range []struct {
		name string
		want nodeset.NodeSet
	}{
		{"a", set(t, 1, 3, 6)},
		{"b", set(t, 2)},
		{"c", set(t, 5)},
		{"x", 0}, // index 0 is unused
		{"nobody", 0},
		{"", set(t, 4)},
	} {
		if got := membership.Numbers(assigned, tc.name); got != tc.want {
			t.Errorf("Numbers(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
	if got := membership.Numbers(nil, "a"); got != 0 {
		t.Errorf("Numbers(nil) = %v", got)
	}
}

func TestMemberClusterAndLive(t *testing.T) {
	other := netip.MustParseAddr("192.0.2.20")
	// Sorted by VIP, as Members gives them.
	m := membership.Member{Name: "a", State: "alive", Clusters: []membership.ClusterState{
		{VIP: testVIP, Home: 2},
		{VIP: other, Home: 1},
	}}
	if c, ok := m.Cluster(testVIP); !ok || c.Home != 2 {
		t.Errorf("Cluster(%v) = %+v, %v", testVIP, c, ok)
	}
	if c, ok := m.Cluster(netip.MustParseAddr("192.0.2.30")); ok {
		t.Errorf("Cluster(absent) = %+v, true", c)
	}
	var many []membership.ClusterState
	for i := range 1000 {
		many = append(many, membership.ClusterState{VIP: netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), Home: nodeset.NodeSet(i)})
	}
	many = append(many, membership.ClusterState{VIP: netip.MustParseAddr("2001:db8::1"), Home: 7})
	m.Clusters = many
	for _, i := range []int{0, 1, 499, 999, 1000} {
		if c, ok := m.Cluster(many[i].VIP); !ok || c != many[i] {
			t.Errorf("Cluster(%v) of 1001 = %+v, %v", many[i].VIP, c, ok)
		}
	}
	if c, ok := m.Cluster(netip.MustParseAddr("10.0.4.0")); ok {
		t.Errorf("Cluster(absent) of 1001 = %+v, true", c)
	}
	for state, want := range map[string]bool{"alive": true, "suspect": true, "dead": false, "left": false, "unknown": false, "": false} {
		m.State = state
		if got := m.Live(); got != want {
			t.Errorf("Live() in state %q = %v, want %v", state, got, want)
		}
	}
}

// BenchmarkAssign: a cluster of 64 nodes, as every daemon computes it for
// each cluster on every round: one node dead, one draining, the rest home.
func BenchmarkAssign(b *testing.B) {
	vip := netip.MustParseAddr("192.0.2.100")
	var members []membership.Member
	for i := 1; i <= 64; i++ {
		st := membership.ClusterState{VIP: vip, Home: nodeset.NodeSet(0).Add(i), Serving: nodeset.NodeSet(0).Add(i)}
		m := membership.Member{Name: fmt.Sprintf("n%d", i), State: "alive", Clusters: []membership.ClusterState{st}}
		switch i {
		case 7:
			m.State = "dead"
		case 9:
			m.Clusters[0].Draining = true
		}
		members = append(members, m)
	}
	b.ReportAllocs()
	for b.Loop() {
		membership.Assign(vip, 64, members)
	}
}

// TestAssignFollowsItsRules checks Assign on random members against its
// rules, written out plainly: the home if available; else one of the
// available members; else the home; else one of the live members; never a
// member excluding the number, and "" with nobody left.
func TestAssignFollowsItsRules(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 9))
	for iter := range 500 {
		total := 1 + r.IntN(64)
		members := randomMembers(r, total, 1+r.IntN(12))
		// Two members claiming one home: the first by name has it.
		for range r.IntN(4) {
			i := r.IntN(len(members))
			members[i].Clusters[0].Home = members[i].Clusters[0].Home.Add(1 + r.IntN(total))
		}
		got := membership.Assign(testVIP, total, members)
		live := slices.Clone(members)
		live = slices.DeleteFunc(live, func(m membership.Member) bool { return !m.Live() })
		slices.SortFunc(live, func(a, b membership.Member) int { return strings.Compare(a.Name, b.Name) })
		for n := 1; n <= total; n++ {
			home, homeAvailable := "", false
			var available, anyLive []string
			for _, m := range live {
				c, ok := m.Cluster(testVIP)
				if !ok || c.Excluded.Contains(n) {
					continue
				}
				anyLive = append(anyLive, m.Name)
				if c.Available() {
					available = append(available, m.Name)
				}
				if home == "" && c.Home.Contains(n) {
					home, homeAvailable = m.Name, c.Available()
				}
			}
			var ok bool
			switch {
			case homeAvailable:
				ok = got[n] == home
			case len(available) > 0:
				ok = slices.Contains(available, got[n])
			case home != "":
				ok = got[n] == home
			case len(anyLive) > 0:
				ok = slices.Contains(anyLive, got[n])
			default:
				ok = got[n] == ""
			}
			if !ok {
				t.Fatalf("iteration %d, number %d: assigned to %q; home %q (available %v), available %v, live %v",
					iter, n, got[n], home, homeAvailable, available, anyLive)
			}
		}
	}
}
