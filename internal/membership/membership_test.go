package membership_test

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterip/clusterip/internal/membership"
)

var loopback = netip.MustParseAddr("127.0.0.1")

func newKey(t *testing.T) []byte {
	t.Helper()
	s, err := membership.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	k, err := membership.ParseKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// testCluster starts members on loopback and makes them all leave when the
// test ends, except those the test made leave itself.
type testCluster struct {
	t    *testing.T
	mu   sync.Mutex
	left map[*membership.Membership]bool
}

func newTestCluster(t *testing.T) *testCluster {
	return &testCluster{t: t, left: map[*membership.Membership]bool{}}
}

// start starts a member on 127.0.0.1. Port 0 has memberlist bind TCP and
// UDP to one free port of the kernel's choosing (retrying if the UDP port
// is taken), so tests cannot collide with each other or a running daemon.
func (tc *testCluster) start(name string, key []byte, peers ...string) *membership.Membership {
	tc.t.Helper()
	return tc.startOn(name, key, 0, peers...)
}

func (tc *testCluster) startOn(name string, key []byte, port int, peers ...string) *membership.Membership {
	tc.t.Helper()
	return tc.startConfig(membership.Config{
		Name:  name,
		Bind:  loopback,
		Port:  port,
		Peers: peers,
		Key:   key,
		Log:   slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
}

// startConfig starts a member and has it leave when the test ends.
func (tc *testCluster) startConfig(cfg membership.Config) *membership.Membership {
	tc.t.Helper()
	m, err := membership.Start(cfg)
	if err != nil {
		tc.t.Fatalf("Start(%s): %v", cfg.Name, err)
	}
	tc.t.Cleanup(func() {
		tc.mu.Lock()
		left := tc.left[m]
		tc.left[m] = true
		tc.mu.Unlock()
		if !left {
			m.Leave()
		}
	})
	if m.Name() != cfg.Name {
		tc.t.Fatalf("Name() = %q, want %q", m.Name(), cfg.Name)
	}
	return m
}

func (tc *testCluster) leave(m *membership.Membership) {
	tc.t.Helper()
	tc.mu.Lock()
	tc.left[m] = true
	tc.mu.Unlock()
	if err := m.Leave(); err != nil {
		tc.t.Errorf("Leave(%s): %v", m.Name(), err)
	}
}

// addr is the gossip address m advertises, as its own member entry says.
func addr(t *testing.T, m *membership.Membership) string {
	t.Helper()
	for _, mem := range m.Members() {
		if mem.Name == m.Name() {
			if !strings.HasPrefix(mem.Addr, "127.0.0.1:") || strings.HasSuffix(mem.Addr, ":0") {
				t.Fatalf("%s advertises %q, want 127.0.0.1 and a real port", m.Name(), mem.Addr)
			}
			return mem.Addr
		}
	}
	t.Fatalf("%s is not among its own members: %+v", m.Name(), m.Members())
	return ""
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, %s: %v", timeout, what, err)
		}
		<-tick.C
	}
}

func find(ms []membership.Member, name string) (membership.Member, bool) {
	for _, m := range ms {
		if m.Name == name {
			return m, true
		}
	}
	return membership.Member{}, false
}

func TestStartErrors(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if m, err := membership.Start(membership.Config{Name: "x", Bind: loopback, Log: log}); err == nil {
		m.Leave()
		t.Errorf("Start without a key or Insecure succeeded")
	} else if !strings.Contains(err.Error(), "key") {
		t.Errorf("Start without a key: error %q does not mention the key", err)
	}
	for _, bind := range []netip.Addr{{}, netip.MustParseAddr("::1")} {
		if m, err := membership.Start(membership.Config{Name: "x", Bind: bind, Key: newKey(t), Log: log}); err == nil {
			m.Leave()
			t.Errorf("Start with bind address %v succeeded", bind)
		}
	}
}

// converged checks that each of ms sees exactly the members named in
// published, alive, each with the state it published.
func converged(ms []*membership.Membership, published map[string]membership.ClusterState) func() error {
	var names []string
	for name := range published {
		names = append(names, name)
	}
	slices.Sort(names)
	return func() error {
		for _, m := range ms {
			members := m.Members()
			var got []string
			for _, mem := range members {
				got = append(got, mem.Name)
			}
			if !slices.Equal(got, names) {
				return fmt.Errorf("%s sees %v, want %v", m.Name(), got, names)
			}
			for _, mem := range members {
				if mem.State != "alive" || !mem.Live() {
					return fmt.Errorf("%s sees %s %s", m.Name(), mem.Name, mem.State)
				}
				if mem.Pending {
					return fmt.Errorf("%s sees %s pending", m.Name(), mem.Name)
				}
				if want := []membership.ClusterState{published[mem.Name]}; !slices.Equal(mem.Clusters, want) {
					return fmt.Errorf("%s sees %s with %+v, want %+v", m.Name(), mem.Name, mem.Clusters, want)
				}
				if !strings.HasPrefix(mem.Addr, "127.0.0.1:") {
					return fmt.Errorf("%s sees %s at %q", m.Name(), mem.Name, mem.Addr)
				}
			}
		}
		return nil
	}
}

// startThree starts node-a, then node-b and node-c with node-a as their
// peer, each publishing one state of vip, and waits until all three see
// each other with those states.
func startThree(t *testing.T, tc *testCluster, key []byte, vip netip.Addr) (all []*membership.Membership, published map[string]membership.ClusterState, seed string) {
	t.Helper()
	published = map[string]membership.ClusterState{}
	publish := func(m *membership.Membership, home int) {
		t.Helper()
		st := membership.ClusterState{VIP: vip, Home: set(t, home), Serving: set(t, home)}
		if err := m.Publish([]membership.ClusterState{st}); err != nil {
			t.Fatalf("Publish(%s): %v", m.Name(), err)
		}
		published[m.Name()] = st
	}
	a := tc.start("node-a", key)
	publish(a, 1)
	seed = addr(t, a)
	b := tc.start("node-b", key, seed)
	publish(b, 2)
	c := tc.start("node-c", key, seed)
	publish(c, 3)
	all = []*membership.Membership{a, b, c}
	// A poll: usually well under a second, but metadata travels with
	// gossip, which slows down when make test loads the machine.
	eventually(t, 15*time.Second, "members did not converge", converged(all, published))
	return all, published, seed
}

// TestMembership runs three real members over loopback: they find each
// other through the first, see each other's published states, exchange a
// message, keep out a member with another key, and see one leave.
func TestMembership(t *testing.T) {
	tc := newTestCluster(t)
	key := newKey(t)
	vip := netip.MustParseAddr("192.0.2.10")
	all, _, seed := startThree(t, tc, key, vip)
	a, b, c := all[0], all[1], all[2]

	for _, m := range all {
		if !m.Joined() {
			t.Errorf("%s: Joined() = false after meeting the others", m.Name())
		}
		select {
		case <-m.Changes():
		default:
			t.Errorf("%s: no Changes() signal after members joined", m.Name())
		}
		got := membership.Assign(vip, 3, m.Members())
		if want := []string{"", "node-a", "node-b", "node-c"}; !slices.Equal(got, want) {
			t.Errorf("%s: Assign = %q, want %q", m.Name(), got, want)
		}
	}

	t.Run("send", func(t *testing.T) {
		if err := a.SendReliable("nobody", []byte("x")); err == nil {
			t.Errorf("SendReliable to an unknown member succeeded")
		}
		// A release with a long flow list is larger than a datagram.
		msg := bytes.Repeat([]byte("release 2 from node-a "), 10000)
		if err := a.SendReliable("node-b", msg); err != nil {
			t.Fatalf("SendReliable: %v", err)
		}
		select {
		case got := <-b.Messages():
			if !bytes.Equal(got, msg) {
				t.Fatalf("node-b got %d bytes, want the %d sent", len(got), len(msg))
			}
			select {
			case got := <-c.Messages():
				t.Errorf("node-c got %q, sent to node-b", got)
			default:
			}
		case <-time.After(3 * time.Second):
			t.Fatal("node-b got no message in 3s")
		}
	})

	t.Run("wrong key", func(t *testing.T) {
		d := tc.start("intruder", newKey(t), seed)
		if err := d.Publish([]membership.ClusterState{{VIP: vip, Home: set(t, 1, 2, 3)}}); err != nil {
			t.Fatalf("Publish(intruder): %v", err)
		}
		// It tries to join at once and then every second: watch for 2 s.
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			for _, m := range all {
				if _, ok := find(m.Members(), "intruder"); ok {
					t.Fatalf("%s sees the member with another key: %+v", m.Name(), m.Members())
				}
			}
			if ms := d.Members(); len(ms) != 1 || ms[0].Name != "intruder" {
				t.Fatalf("member with another key sees %+v", ms)
			}
			if d.Joined() {
				t.Fatalf("member with another key says it joined")
			}
			time.Sleep(20 * time.Millisecond)
		}
		tc.leave(d)
	})

	t.Run("leave", func(t *testing.T) {
		tc.leave(c)
		eventually(t, 3*time.Second, "node-c's leaving was not seen", func() error {
			for _, m := range []*membership.Membership{a, b} {
				ms := m.Members()
				gone, ok := find(ms, "node-c")
				if !ok {
					return fmt.Errorf("%s no longer lists node-c at all, want it kept as gone", m.Name())
				}
				if gone.Clusters != nil {
					return fmt.Errorf("%s still sees node-c with %+v", m.Name(), gone.Clusters)
				}
				if got := membership.Numbers(membership.Assign(vip, 3, ms), "node-c"); got != 0 {
					return fmt.Errorf("%s still assigns %v to node-c", m.Name(), got)
				}
			}
			return nil
		})
		for _, m := range []*membership.Membership{a, b} {
			got := membership.Assign(vip, 3, m.Members())
			if got[1] != "node-a" || got[2] != "node-b" || (got[3] != "node-a" && got[3] != "node-b") {
				t.Errorf("%s: Assign after node-c left = %q", m.Name(), got)
			}
		}
	})
}

// TestMembershipPublishUpdate: a changed state spreads to the others, and
// Publish refuses states it cannot encode.
func TestMembershipPublishUpdate(t *testing.T) {
	tc := newTestCluster(t)
	vip := netip.MustParseAddr("192.0.2.10")
	all, published, _ := startThree(t, tc, newKey(t), vip)
	a, b, c := all[0], all[1], all[2]

	// Publishing the same state again is a no-op; a change spreads.
	if err := a.Publish([]membership.ClusterState{published["node-a"]}); err != nil {
		t.Fatalf("Publish(same): %v", err)
	}
	st := published["node-a"]
	st.Draining = true
	if err := a.Publish([]membership.ClusterState{st}); err != nil {
		t.Fatalf("Publish(draining): %v", err)
	}
	published["node-a"] = st
	eventually(t, 3*time.Second, "draining state did not spread", converged(all, published))
	for _, m := range []*membership.Membership{b, c} {
		got := membership.Assign(vip, 3, m.Members())
		if got[1] == "node-a" || got[1] == "" || got[2] != "node-b" || got[3] != "node-c" {
			t.Errorf("%s: Assign with node-a draining = %q", m.Name(), got)
		}
	}
	// Bad states are refused and leave the published one alone.
	if err := a.Publish([]membership.ClusterState{{VIP: netip.MustParseAddr("::ffff:10.0.0.1")}}); err == nil {
		t.Errorf("Publish(IPv4-mapped VIP) succeeded")
	}
	if err := a.Publish(make([]membership.ClusterState, membership.MaxClusters+1)); err == nil {
		t.Errorf("Publish(MaxClusters+1) succeeded")
	}
	if err := converged(all, published)(); err != nil {
		t.Errorf("after refused publishes: %v", err)
	}
}

// TestMembershipGoneState: a member that left must show as left (or at
// least not live) in the others' Members(): the daemon's status and its
// readiness check (a live Pending member holds readiness back) rely on it.
func TestMembershipGoneState(t *testing.T) {
	tc := newTestCluster(t)
	key := newKey(t)
	all, _, seed := startThree(t, tc, key, netip.MustParseAddr("192.0.2.10"))
	a, b := all[0], all[1]
	quiet := tc.start("node-quiet", key, seed) // never publishes
	eventually(t, 5*time.Second, "node-quiet not seen", func() error {
		if m, ok := find(a.Members(), "node-quiet"); !ok || !m.Pending {
			return fmt.Errorf("node-a sees node-quiet: %+v, %v", m, ok)
		}
		return nil
	})
	tc.leave(b)
	tc.leave(quiet)
	eventually(t, 3*time.Second, "leaving members still live", func() error {
		for _, name := range []string{"node-b", "node-quiet"} {
			m, ok := find(a.Members(), name)
			if !ok {
				return fmt.Errorf("%s not listed", name)
			}
			if m.Live() || (m.State != "left" && m.State != "dead") {
				return fmt.Errorf("%s: State %q, Live() %v, Pending %v; want left, not live", name, m.State, m.Live(), m.Pending)
			}
		}
		return nil
	})
}

// TestMembershipManyClusters: a thousand clusters a node, far past the 11
// that memberlist's metadata holds, reach every member: a node that joined
// after the states went out gets them by asking, and a change to one
// cluster spreads as a delta.
func TestMembershipManyClusters(t *testing.T) {
	tc := newTestCluster(t)
	key := newKey(t)
	const n = 1000
	states := func(home int, draining int) []membership.ClusterState {
		out := make([]membership.ClusterState, n)
		for i := range out {
			out[i] = membership.ClusterState{VIP: netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), Home: set(t, home), Serving: set(t, home)}
			if i%250 == 0 {
				out[i].VIP = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)})
			}
			out[i].Draining = i == draining
		}
		return out
	}
	published := map[string][]membership.ClusterState{}
	publish := func(m *membership.Membership, st []membership.ClusterState) {
		t.Helper()
		if err := m.Publish(st); err != nil {
			t.Fatalf("Publish(%s): %v", m.Name(), err)
		}
		published[m.Name()] = st
	}
	check := func(ms ...*membership.Membership) func() error {
		return func() error {
			for _, m := range ms {
				members := m.Members()
				if len(members) != len(published) {
					return fmt.Errorf("%s sees %d members", m.Name(), len(members))
				}
				for _, mem := range members {
					if mem.Pending {
						return fmt.Errorf("%s sees %s pending", m.Name(), mem.Name)
					}
					want := slices.Clone(published[mem.Name])
					slices.SortFunc(want, func(a, b membership.ClusterState) int { return a.VIP.Compare(b.VIP) })
					if !slices.Equal(mem.Clusters, want) {
						return fmt.Errorf("%s sees %s with %d clusters, not the %d published", m.Name(), mem.Name, len(mem.Clusters), len(want))
					}
					for _, st := range want[:5] {
						if got, ok := mem.Cluster(st.VIP); !ok || got != st {
							return fmt.Errorf("%s: Cluster(%s) of %s = %+v, %v", m.Name(), st.VIP, mem.Name, got, ok)
						}
					}
				}
			}
			return nil
		}
	}
	a := tc.start("node-a", key)
	publish(a, states(1, -1))
	b := tc.start("node-b", key, addr(t, a))
	publish(b, states(2, -1))
	eventually(t, 15*time.Second, "a and b did not converge", check(a, b))
	// node-c joins through b: a's states went out before it was there.
	start := time.Now()
	c := tc.start("node-c", key, addr(t, b))
	publish(c, states(3, -1))
	eventually(t, 15*time.Second, "node-c did not converge", check(a, b, c))
	t.Logf("node-c converged with 2 × %d clusters in %s", n, time.Since(start).Round(time.Millisecond))
	start = time.Now()
	publish(a, states(1, 500))
	eventually(t, 5*time.Second, "a drained cluster did not spread", check(a, b, c))
	t.Logf("one changed cluster of %d spread in %s", n, time.Since(start).Round(time.Millisecond))
}
