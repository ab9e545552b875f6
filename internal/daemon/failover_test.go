package daemon

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/clusterip/clusterip/internal/datapath"
	"github.com/clusterip/clusterip/internal/membership"
	"github.com/clusterip/clusterip/nodeset"
)

// The failover step is tested without root or network: a simulation of a
// few nodes, each with its own failover state, that see each other's last
// published states (gossip converges between ticks) and receive each
// other's release messages.

var simVIP = netip.MustParseAddr("192.0.2.100")

type simNode struct {
	name string
	f    *failover
	up   bool
	pub  membership.ClusterState // what it gossiped last
	// seen are its published states, newest last: with gossip lag the
	// others see an older one.
	seen []membership.ClusterState
	out  stepOutput
	// inbox holds release messages on their way to it.
	inbox []releaseMsg
	// seen: every step output, for checks over the whole run.
	took  []takeover
	holds nodeset.NodeSet // numbers it ever held packets for
}

type sim struct {
	t     *testing.T
	total int
	nodes []*simNode
	now   time.Time
	cut   map[[2]string]bool // partitioned pairs, both directions
	// twice allows a number to be served by two nodes (a partition).
	twice bool
	// Release messages arrive late (after the gossip, lateBy ticks) or
	// are lost; gossip reaches the others lag ticks late.
	lateBy int
	lag    int
	lose   bool
	late   []lateRelease
}

type lateRelease struct {
	to  *simNode
	msg releaseMsg
	at  int // ticks left
}

func newSim(t *testing.T, names ...string) *sim {
	s := &sim{t: t, total: len(names), now: time.Unix(1_700_000_000, 0), cut: map[[2]string]bool{}}
	for i, n := range names {
		s.nodes = append(s.nodes, &simNode{name: n, up: true})
		s.restart(s.nodes[i], i+1)
	}
	return s
}

func (s *sim) node(name string) *simNode {
	for _, n := range s.nodes {
		if n.name == name {
			return n
		}
	}
	s.t.Fatalf("no node %s", name)
	return nil
}

// restart gives n a fresh daemon at home on number home. As the daemon
// does until it is ready, it has published what it has: nothing served.
func (s *sim) restart(n *simNode, home int) {
	n.up = true
	n.f = newFailover(nodeset.NodeSet(0).Add(home))
	n.pub = n.f.localState(simVIP)
	n.out = stepOutput{}
}

// members is the membership as viewer sees it.
func (s *sim) members(viewer *simNode) []membership.Member {
	var out []membership.Member
	for _, n := range s.nodes {
		m := membership.Member{Name: n.name, Addr: n.name + ":7946", State: "alive"}
		switch {
		case n == viewer:
			m.Clusters = []membership.ClusterState{n.f.localState(simVIP)}
		case !n.up || s.cut[[2]string{viewer.name, n.name}]:
			m.State = "dead"
		default:
			st := n.pub
			if i := len(n.seen) - 1 - s.lag; s.lag > 0 && i >= 0 {
				st = n.seen[i]
			}
			m.Clusters = []membership.ClusterState{st}
		}
		out = append(out, m)
	}
	return out
}

// tick runs one step on every live node, 100 ms apart in all.
func (s *sim) tick() {
	s.t.Helper()
	s.now = s.now.Add(100 * time.Millisecond)
	var still []lateRelease
	for _, l := range s.late {
		if l.at--; l.at <= 0 {
			l.to.inbox = append(l.to.inbox, l.msg)
		} else {
			still = append(still, l)
		}
	}
	s.late = still
	for _, n := range s.nodes {
		if !n.up {
			continue
		}
		for _, r := range n.inbox {
			n.f.received(r, s.now)
		}
		n.inbox = nil
		// The datapath's sweep: no kept flows, counted just now.
		flows := datapath.FlowStats{SweptAt: s.now}
		n.out = n.f.step(stepInput{VIP: simVIP, Total: s.total, Me: n.name, Members: s.members(n), Now: s.now, Flows: flows})
		n.pub = n.out.State
		n.seen = append(n.seen, n.pub)
		n.took = append(n.took, n.out.Take...)
		n.holds |= n.out.Policy.Hold
		if n.out.Policy.Hold&^n.out.Policy.Observe != 0 {
			s.t.Fatalf("%s holds %s without observing it", n.name, n.out.Policy.Hold)
		}
		for _, r := range n.out.Release {
			if r.To == "" {
				continue
			}
			to := s.node(r.To)
			msg := releaseMsg{VIP: simVIP, Node: r.Node, From: n.name, Complete: true, Flows: []datapath.FlowID{{Src: src4(1), Proto: 6}}}
			switch {
			case !to.up || s.cut[[2]string{n.name, to.name}] || s.lose:
			case s.lateBy > 0:
				s.late = append(s.late, lateRelease{to: to, msg: msg, at: s.lateBy})
			default:
				to.inbox = append(to.inbox, msg)
			}
		}
	}
	if !s.twice {
		s.checkServedOnce()
	}
}

// checkServedOnce: no number is ever answered for new connections by two
// live nodes at once.
func (s *sim) checkServedOnce() {
	s.t.Helper()
	for k := 1; k <= s.total; k++ {
		var by []string
		for _, n := range s.nodes {
			if n.up && n.out.Policy.Serve.Contains(k) {
				by = append(by, n.name)
			}
		}
		if len(by) > 1 {
			s.t.Fatalf("at %s number %d served by %v", s.now.Format("15:04:05.000"), k, by)
		}
	}
}

// serving is every live node's served numbers, e.g. "n1=1 n2=2,3 n3=".
func (s *sim) serving() string {
	var parts []string
	for _, n := range s.nodes {
		if n.up {
			parts = append(parts, n.name+"="+n.out.Policy.Serve.String())
		}
	}
	return strings.Join(parts, " ")
}

// runUntil ticks until serving() is want, for at most d.
func (s *sim) runUntil(want string, d time.Duration) {
	s.t.Helper()
	for end := s.now.Add(d); s.now.Before(end); {
		s.tick()
		if s.serving() == want {
			return
		}
	}
	s.t.Fatalf("after %s: %s, want %s", d, s.serving(), want)
}

// settled: three nodes at home.
func settled(t *testing.T) *sim {
	s := newSim(t, "n1", "n2", "n3")
	s.runUntil("n1=1 n2=2 n3=3", time.Second)
	for _, n := range s.nodes {
		n.took = nil
	}
	return s
}

// fromRelease tells whether a takeover came with a release's flow list.
func fromRelease(t takeover) bool { return t.Theirs != nil }

func TestFailoverStep(t *testing.T) {
	tests := []struct {
		name  string
		run   func(s *sim)
		check func(t *testing.T, s *sim)
	}{
		{"kill: a survivor takes the dead node's number at once, with nothing held", func(s *sim) {
			s.node("n3").up = false
			s.tick()
		}, func(t *testing.T, s *sim) {
			if got := s.serving(); got != "n1=1,3 n2=2" && got != "n1=1 n2=2,3" {
				t.Fatalf("one tick after the kill: %s", got)
			}
			for _, n := range s.nodes[:2] {
				for _, tk := range n.took {
					if fromRelease(tk) {
						t.Errorf("%s took %d with a release list from a dead node", n.name, tk.Node)
					}
				}
			}
		}},
		{"return: the number goes home through a handoff, its new connections held", func(s *sim) {
			n3 := s.node("n3")
			n3.up = false
			s.tick()
			s.restart(n3, 3)
			s.runUntil("n1=1 n2=2 n3=3", 3*time.Second)
		}, func(t *testing.T, s *sim) {
			n3 := s.node("n3")
			if len(n3.took) != 1 || n3.took[0].Node != 3 || !fromRelease(n3.took[0]) {
				t.Fatalf("n3 took %+v, want 3 with the releasing node's flows", n3.took)
			}
			if !n3.holds.Contains(3) {
				t.Error("n3 never held new connections of 3 while it moved")
			}
		}},
		{"drain and resume: numbers move by handoffs, both ways", func(s *sim) {
			s.node("n1").f.draining = true
			s.tick()
			if got := s.node("n1").out.Policy.Leaving; !got.Contains(1) {
				s.t.Fatalf("draining n1 leaving %s, want 1", got)
			}
			s.runUntil(map[bool]string{true: "n1= n2=1,2 n3=3", false: "n1= n2=2 n3=1,3"}[s.node("n2").out.Policy.Observe.Contains(1)], 3*time.Second)
			s.node("n1").f.draining = false
			s.runUntil("n1=1 n2=2 n3=3", 3*time.Second)
		}, func(t *testing.T, s *sim) {
			for _, n := range s.nodes {
				for _, tk := range n.took {
					if !fromRelease(tk) {
						t.Errorf("%s took %d without a release list in a planned handoff", n.name, tk.Node)
					}
				}
			}
			if !s.node("n1").holds.Contains(1) {
				t.Error("n1 did not hold new connections of 1 while taking it back")
			}
		}},
		{"health fall and rise: as a drain", func(s *sim) {
			s.node("n2").f.unhealthy = true
			for s.node("n2").out.Policy.Serve.Contains(2) {
				s.tick()
			}
			s.node("n2").f.unhealthy = false
			s.runUntil("n1=1 n2=2 n3=3", 3*time.Second)
		}, func(t *testing.T, s *sim) {
			if took := s.node("n2").took; len(took) != 1 || !fromRelease(took[0]) {
				t.Fatalf("n2 took %+v back, want 2 by a release", took)
			}
		}},
		{"handoff keeps serving for the observation time, then releases", func(s *sim) {
			s.node("n1").f.draining = true
			start := s.now
			for s.node("n1").out.Policy.Serve.Contains(1) {
				s.tick()
			}
			if held := s.now.Sub(start); held < handoffObserve {
				s.t.Fatalf("n1 released 1 after %s, before the observation time", held)
			}
		}, func(t *testing.T, s *sim) {
			p := s.node("n1").out.Policy
			if !p.Keep.Contains(1) {
				t.Errorf("n1 does not keep 1's connections after releasing it: %+v", p)
			}
		}},
		{"partition: each side serves what it sees orphaned; healing ends the duplicates", func(s *sim) {
			s.twice = true
			for _, o := range []string{"n1", "n2"} {
				s.cut[[2]string{o, "n3"}], s.cut[[2]string{"n3", o}] = true, true
			}
			s.tick()
			s.tick()
			if got := s.node("n3").out.Policy.Serve; got.String() != "1,2,3" {
				s.t.Fatalf("isolated n3 serves %s", got)
			}
			s.cut = map[[2]string]bool{}
			s.runUntil("n1=1 n2=2 n3=3", 5*time.Second)
		}, nil},
		{"interface gone: the node gives its numbers up at once, and takes them back by handoff", func(s *sim) {
			s.node("n2").f.linkDown = true
			s.tick()
			if got := s.node("n2").out.Policy.Serve; got != 0 {
				s.t.Fatalf("n2 without an interface still serves %s", got)
			}
			s.tick()
			if got := s.serving(); got != "n1=1,2 n2= n3=3" && got != "n1=1 n2= n3=2,3" {
				s.t.Fatalf("a tick later: %s, want 2 taken at once", got)
			}
			s.node("n2").f.linkDown = false
			s.runUntil("n1=1 n2=2 n3=3", 3*time.Second)
		}, func(t *testing.T, s *sim) {
			if took := s.node("n2").took; len(took) != 1 || !fromRelease(took[0]) {
				t.Fatalf("n2 took %+v back, want 2 by a release", took)
			}
		}},
		{"an operator's -N moves a number away; +N brings it home", func(s *sim) {
			s.node("n3").f.excluded = nodeset.NodeSet(0).Add(3)
			s.node("n3").f.home = 0
			for s.node("n3").out.Policy.Serve.Contains(3) {
				s.tick()
			}
			s.node("n3").f.excluded, s.node("n3").f.home = 0, nodeset.NodeSet(0).Add(3)
			s.runUntil("n1=1 n2=2 n3=3", 3*time.Second)
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := settled(t)
			tt.run(s)
			if tt.check != nil {
				tt.check(t, s)
			}
		})
	}
}

// Gossip can say a number was let go before the release message arrives;
// the receiver keeps holding and waits a little for the message, which
// alone says whose the held connections are. A lost message makes it take
// the number after the wait, answering nothing it held.
func TestFailoverStepWaitsForRelease(t *testing.T) {
	for _, tt := range []struct {
		name      string
		lateBy    int
		lose      bool
		withFlows bool
	}{
		{"message after the gossip", 2, false, true},
		{"message lost", 0, true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := settled(t)
			s.lateBy, s.lose = tt.lateBy, tt.lose
			n1 := s.node("n1")
			n1.f.draining = true
			var waited bool
			for s.node("n1").out.Policy.Serve.Contains(1) || s.serving() == "n1= n2=2 n3=3" {
				s.tick()
				for _, n := range s.nodes[1:] {
					if n.out.Policy.Hold.Contains(1) && !n1.out.Policy.Serve.Contains(1) {
						waited = true
					}
				}
			}
			if !waited {
				t.Error("nobody kept holding 1's new connections between the gossip and the release")
			}
			var took []takeover
			for _, n := range s.nodes[1:] {
				took = append(took, n.took...)
			}
			if len(took) != 1 || took[0].Node != 1 || fromRelease(took[0]) != tt.withFlows {
				t.Fatalf("took %+v, want 1 with the release's flows: %v", took, tt.withFlows)
			}
		})
	}
}

// A node that released a number and is told to take it back at once (a
// drain, then a resume, before gossip shows the receiver serving it) must
// not take it while the receiver may already serve it: it waits for the
// receiver to hand it back.
func TestFailoverStepReleasedNumberNotTakenBackBlindly(t *testing.T) {
	s := settled(t)
	s.lag = 2 // gossip slower than the release message
	n1 := s.node("n1")
	n1.f.draining = true
	for len(n1.out.Release) == 0 {
		s.tick()
	}
	n1.f.draining = false // resume, within the same instant
	s.runUntil("n1=1 n2=2 n3=3", 5*time.Second)
}

// The receiver holds new connections only once the other node is handing
// the number over, and stops holding when the handoff ends elsewhere.
func TestFailoverStepHoldsOnlyDuringHandoff(t *testing.T) {
	s := settled(t)
	n1, n2 := s.node("n1"), s.node("n2")
	n1.f.draining = true
	s.tick() // n1 starts handing off; n2 (or n3) observes
	var receiver *simNode
	for _, n := range s.nodes[1:] {
		if n.out.Policy.Observe.Contains(1) {
			receiver = n
		}
	}
	if receiver == nil {
		t.Fatalf("nobody observes 1: %s", s.serving())
	}
	if !receiver.out.Policy.Hold.Contains(1) {
		t.Fatalf("%s observes 1 without holding although n1 is leaving it", receiver.name)
	}
	n1.f.draining = false // changed its mind
	s.tick()
	s.tick()
	if receiver.out.Policy.Hold != 0 || receiver.out.Policy.Observe != 0 {
		t.Fatalf("%s still observes %s, holds %s after the handoff was called off", receiver.name, receiver.out.Policy.Observe, receiver.out.Policy.Hold)
	}
	if len(receiver.took) != 0 || !n1.out.Policy.Serve.Contains(1) {
		t.Fatalf("handoff called off, yet %s took %+v and n1 serves %s", receiver.name, receiver.took, n1.out.Policy.Serve)
	}
	_ = n2
}

func TestReleaseMessageRoundTrip(t *testing.T) {
	for _, r := range []releaseMsg{
		{VIP: simVIP, Node: 1, From: "n1", Complete: true, Flows: []datapath.FlowID{}},
		{VIP: simVIP, Node: 64, From: strings.Repeat("x", 255), Flows: []datapath.FlowID{{Src: src4(0xc0000201), SPort: 0x1234, DPort: 80, Proto: 6}, {Src: src4(1), Proto: 17}}},
		{VIP: netip.MustParseAddr("2001:db8::1"), Node: 7, From: "n3", Complete: true,
			Flows: []datapath.FlowID{{Src: netip.MustParseAddr("2001:db8:1::7").As16(), SPort: 0x1234, DPort: 80, Proto: 6}}},
	} {
		b, err := r.encode()
		if err != nil {
			t.Fatal(err)
		}
		got, err := parseReleaseMessage(b)
		if err != nil || !reflect.DeepEqual(got, r) {
			t.Fatalf("round trip of %+v: %+v, %v", r, got, err)
		}
	}
	for _, bad := range []releaseMsg{
		{VIP: simVIP, Node: 0, From: "n1"},
		{VIP: simVIP, Node: 65, From: "n1"},
		{VIP: simVIP, Node: 1, From: ""},
		{VIP: netip.MustParseAddr("::ffff:192.0.2.1"), Node: 1, From: "n1"},
		{Node: 1, From: "n1"},
	} {
		if b, err := bad.encode(); err == nil {
			t.Errorf("encode(%+v) = %x, want an error", bad, b)
		}
	}
}

func FuzzParseReleaseMessage(f *testing.F) {
	good, _ := releaseMsg{VIP: simVIP, Node: 3, From: "n2", Complete: true, Flows: []datapath.FlowID{{Src: src4(7), SPort: 1, DPort: 2, Proto: 17}}}.encode()
	f.Add(good)
	f.Add(good[:len(good)-1])
	six, _ := releaseMsg{VIP: netip.MustParseAddr("2001:db8::1"), Node: 3, From: "n2", Flows: []datapath.FlowID{{Src: netip.MustParseAddr("2001:db8::7").As16(), Proto: 6}}}.encode()
	f.Add(six)
	f.Add([]byte{'R', 1, 192, 0, 2, 1, 3, 'n', '1'}) // version 1
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseReleaseMessage(b)
		if err != nil {
			return
		}
		if r.Node < 1 || r.Node > nodeset.Max || r.From == "" || !r.VIP.IsValid() || r.VIP.Is4In6() {
			t.Fatalf("parsed an invalid release %+v", r)
		}
		again, err := r.encode()
		if err != nil || string(again) != string(b) {
			t.Fatalf("re-encoded %x as %x, %v", b, again, err)
		}
	})
}

// The wire layout is part of the protocol between daemons.
func TestReleaseMessageLayout(t *testing.T) {
	b, _ := releaseMsg{VIP: simVIP, Node: 2, From: "n1", Complete: true, Flows: []datapath.FlowID{{Src: src4(0x01020304), SPort: 0x0506, DPort: 0x0708, Proto: 9}}}.encode()
	if got, want := fmt.Sprintf("% x", b), "52 03 04 c0 00 02 64 02 01 02 6e 31 00 00 00 01 01 02 03 04 05 06 07 08 09"; got != want {
		t.Fatalf("release = %s\nwant       %s", got, want)
	}
}

// src4 is an IPv4 client as flows carry it: mapped into IPv6.
func src4(v uint32) [16]byte {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}).As16()
}
