package membership

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultPort is the gossip port (TCP and UDP) when --gossip-port is not set.
const DefaultPort = 7946

// Config is how this node joins the membership.
type Config struct {
	Name  string     // unique per node; defaults to the host name
	Bind  netip.Addr // address to gossip on and advertise
	Port  int
	Peers []string // host or host:port of nodes to join; unreachable ones are retried
	Key   []byte   // shared gossip key; nil only with Insecure
	// Insecure allows gossip without encryption or authentication.
	Insecure bool
	Log      *slog.Logger
	// ForgetDeadAfter is how long a member that died or left stays in the
	// view (and in status); 0 means DefaultForgetDeadAfter.
	ForgetDeadAfter time.Duration
}

// DefaultForgetDeadAfter is how long a dead member is remembered: long
// enough for an operator to see what happened, short enough that a cluster
// whose nodes come and go under new names does not grow without bound.
const DefaultForgetDeadAfter = 10 * time.Minute

// maxDeadMembers bounds the dead members remembered at once, whatever
// their age: the oldest deaths are forgotten first.
const maxDeadMembers = 128

// Timing, tuned for a LAN of up to 64 nodes so that a dead node is declared
// dead within about a second: a node is probed every 150 ms by someone,
// a probe that gets no ack within 80 ms (nor through 3 indirect probes and a
// TCP fallback before the next interval) makes it suspect, and suspicion
// lasts 2 × max(1, log10(n)) × 150 ms: 300 ms up to 10 nodes, 540 ms at 64.
// SuspicionMaxTimeoutMult 2 bounds how long missing confirmations can stretch
// that. Gossip every 30 ms to 3 nodes spreads a death or a metadata change
// in a few tens of milliseconds. A node that misses acks itself (its CPU
// starved, so the fault may be its own) stretches its probes' timeouts up
// to 8× (Lifeguard's local health, memberlist's default) rather than
// accuse healthy peers; healthy nodes detect a failure as fast as ever.
const (
	probeInterval = 150 * time.Millisecond
	probeTimeout  = 80 * time.Millisecond
)

func tune(c *memberlist.Config) {
	c.ProbeInterval = probeInterval
	c.ProbeTimeout = probeTimeout
	c.IndirectChecks = 3
	c.SuspicionMult = 2
	c.SuspicionMaxTimeoutMult = 2
	c.AwarenessMaxMultiplier = 8
	c.GossipInterval = 30 * time.Millisecond
	c.GossipNodes = 3
	c.RetransmitMult = 4
	c.PushPullInterval = 5 * time.Second
	c.TCPTimeout = time.Second
	c.GossipToTheDeadTime = 5 * time.Second
	c.DeadNodeReclaimTime = time.Second
	// Gossip messages are a few hundred bytes: LZW saves little of them
	// and costs every one an encoder's allocation and pass. Members
	// still decode a compressed message from a daemon that compresses.
	c.EnableCompression = false
}

// Membership is this node's view of the cluster of daemons.
type Membership struct {
	ml         *memberlist.Memberlist
	name       string
	log        *slog.Logger
	started    time.Time
	forgetDead time.Duration

	mu        sync.Mutex
	own       own                  // what this node published
	views     map[string]*view     // the cluster states of the others (see sync.go)
	asked     map[string]bool      // members waiting for this node's full state
	nodes     map[string]Member    // members seen, copied in memberlist's callbacks
	deadSince map[string]time.Time // when each dead member was seen to go
	lastAck   map[string]time.Time // last ack to this node's own probe of each member
	conflict  *Conflict            // the last time another node claimed this one's name
	warned    map[string]time.Time // conflicts between others, last logged
	fatal     chan error

	changes   chan struct{}
	msgs      chan []byte
	publishCh chan struct{}
	answerCh  chan struct{}
	done      chan struct{}
	joined    atomic.Bool
	left      sync.Once
}

// Start joins the membership. It returns once this node is up, even if no
// peer answered yet: peers are retried in the background, so nodes can start
// in any order.
func Start(cfg Config) (*Membership, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Key == nil && !cfg.Insecure {
		return nil, fmt.Errorf("membership: no gossip key (--gossip-key FILE; or --gossip-insecure to run without encryption)")
	}
	if !cfg.Bind.Is4() {
		return nil, fmt.Errorf("membership: bind address %s is not IPv4", cfg.Bind)
	}
	m := &Membership{
		name:       cfg.Name,
		log:        cfg.Log,
		started:    time.Now(),
		forgetDead: cfg.ForgetDeadAfter,
		nodes:      map[string]Member{},
		views:      map[string]*view{},
		asked:      map[string]bool{},
		deadSince:  map[string]time.Time{},
		lastAck:    map[string]time.Time{},
		warned:     map[string]time.Time{},
		fatal:      make(chan error, 1),
		changes:    make(chan struct{}, 1),
		publishCh:  make(chan struct{}, 1),
		answerCh:   make(chan struct{}, 1),
		msgs:       make(chan []byte, 64),
		done:       make(chan struct{}),
	}
	if m.forgetDead <= 0 {
		m.forgetDead = DefaultForgetDeadAfter
	}
	transport, err := newBoundedTransport(cfg.Bind.String(), cfg.Port, cfg.Log)
	if err != nil {
		return nil, fmt.Errorf("membership: %w", err)
	}
	c := memberlist.DefaultLANConfig()
	tune(c)
	c.Name = cfg.Name
	port := cfg.Port
	if port == 0 {
		port = transport.GetAutoBindPort() // as memberlist does for its own transport
	}
	c.BindAddr = cfg.Bind.String()
	c.BindPort = port
	c.AdvertiseAddr = cfg.Bind.String()
	c.AdvertisePort = port
	c.SecretKey = cfg.Key
	c.GossipVerifyIncoming = cfg.Key != nil
	c.GossipVerifyOutgoing = cfg.Key != nil
	c.Delegate = (*delegate)(m)
	c.Events = (*events)(m)
	c.Ping = (*pings)(m)
	c.Conflict = (*conflicts)(m)
	c.Transport = transport
	c.Logger = log.New(&slogWriter{cfg.Log}, "", 0)
	ml, err := memberlist.Create(c)
	if err != nil {
		transport.Shutdown()
		return nil, fmt.Errorf("membership: %w", err)
	}
	m.ml = ml
	go m.join(cfg.Peers, cfg.Port)
	go m.publisher()
	go m.answerer()
	go m.syncer()
	return m, nil
}

// join keeps trying the configured peers that are not live members: a node
// that starts first has nobody to join yet, and after a partition the two
// sides have declared each other dead and would never speak again.
func (m *Membership) join(peers []string, port int) {
	addrs := make([]string, 0, len(peers))
	for _, p := range peers {
		if _, _, err := net.SplitHostPort(p); err != nil {
			p = net.JoinHostPort(p, strconv.Itoa(port))
		}
		// Members are known by IP:port; a host name would never match.
		if a, err := net.ResolveTCPAddr("tcp4", p); err == nil {
			p = a.String()
		}
		addrs = append(addrs, p)
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for len(addrs) > 0 {
		live := map[string]bool{}
		for _, n := range m.Members() {
			if n.Live() {
				live[n.Addr] = true
			}
		}
		var missing []string
		for _, a := range addrs {
			if !live[a] {
				missing = append(missing, a)
			}
		}
		if len(missing) > 0 {
			if _, err := m.ml.Join(missing); err != nil {
				m.log.Debug("join", "peers", missing, "err", err)
			}
		}
		select {
		case <-m.done:
			return
		case <-t.C:
		}
	}
}

// Joined tells whether this node has met another member since it started.
func (m *Membership) Joined() bool { return m.joined.Load() }

// Name is this node's member name.
func (m *Membership) Name() string { return m.name }

// Changes signals (coalesced) whenever a member joins, leaves, fails or
// changes its metadata.
func (m *Membership) Changes() <-chan struct{} { return m.changes }

// Messages delivers direct messages from other members.
func (m *Membership) Messages() <-chan []byte { return m.msgs }

func (m *Membership) notify() {
	select {
	case m.changes <- struct{}{}:
	default:
	}
}

// Publish sets this node's cluster states, one per VIP; they are sent to
// the others in the background. States it cannot send are refused whole.
func (m *Membership) Publish(states []ClusterState) error {
	if len(states) > MaxClusters {
		return fmt.Errorf("membership: %d clusters, more than the %d one node may have with --peers", len(states), MaxClusters)
	}
	seen := make(map[netip.Addr]bool, len(states))
	for _, st := range states {
		if !st.VIP.IsValid() || st.VIP.Is4In6() || st.VIP.Zone() != "" {
			return fmt.Errorf("membership: VIP %s is neither IPv4 nor IPv6", st.VIP)
		}
		if seen[st.VIP] {
			return fmt.Errorf("membership: two states for VIP %s", st.VIP)
		}
		seen[st.VIP] = true
	}
	m.mu.Lock()
	first := !m.own.published
	changed := m.own.update(states)
	if len(changed) > 0 {
		deltas, err := deltaMessages(m.name, m.started, m.own.version, changed)
		if err != nil || len(m.own.pending)+len(deltas) > maxPending {
			// The members will find their views behind the metadata
			// and ask for the full state.
			deltas, m.own.pending = nil, nil
		}
		m.own.pending = append(m.own.pending, deltas...)
	}
	m.mu.Unlock()
	if first || len(changed) > 0 {
		select {
		case m.publishCh <- struct{}{}:
		default: // the publisher will read the newest metadata anyway
		}
	}
	return nil
}

// Publishing: memberlist sends a metadata update as an alive message with a
// new incarnation, and UpdateNode waits until it has been gossiped. An
// update that races with memberlist refuting a suspicion of this node (the
// refutation takes a newer incarnation, with the old metadata) is dropped
// without a word: it is never gossiped, and peers keep the old state until
// the next update. So updates are sent from a goroutine of their own, which
// sends again, with a newer incarnation, when one is not gossiped in time;
// the failover loop never waits on the network.
const (
	publishWait     = 250 * time.Millisecond
	publishAttempts = 4
)

func (m *Membership) publisher() {
	for {
		select {
		case <-m.done:
			return
		case <-m.publishCh:
		}
		// The states first, then the metadata that summarizes them, so
		// that members rarely see metadata ahead of their views.
		m.sendDeltas()
		var err error
		for range publishAttempts {
			if err = m.ml.UpdateNode(publishWait); err == nil {
				break
			}
			m.log.Debug("state update not gossiped in time; sending it again", "err", err)
		}
		if err != nil {
			m.log.Warn("state update not gossiped", "attempts", publishAttempts, "err", err)
		}
	}
}

// SendReliable sends a direct message to a member over a TCP stream: it
// arrives whole or the call fails.
func (m *Membership) SendReliable(name string, msg []byte) error {
	n, err := m.memberNode(name)
	if err != nil {
		return err
	}
	return m.ml.SendReliable(n, msg)
}

func errNoMember(name string) error { return fmt.Errorf("membership: no live member %q", name) }

// Members returns every member known, this node included, live ones and
// those seen dead or gone, sorted by name.
//
// The view is a copy kept by memberlist's event callbacks, which run under
// memberlist's lock: the *Node values memberlist hands out are rewritten in
// place when a member changes, so reading them later would race.
//
// memberlist v0.7 keeps its own suspicion to itself, so a live member shows
// as "suspect" here when this node's direct probes of it have gone unanswered
// for three rounds of probing. It is for operators; failover waits for
// memberlist to declare the member dead.
func (m *Membership) Members() []Member {
	m.mu.Lock()
	now := time.Now()
	m.forgetLocked(now)
	out := make([]Member, 0, len(m.nodes))
	live := 0
	for _, n := range m.nodes {
		if n.Live() {
			live++
		}
	}
	suspectAfter := time.Duration(3*max(live-1, 1))*probeInterval + probeTimeout
	for _, n := range m.nodes {
		if at, ok := m.lastAck[n.Name]; ok && n.State == "alive" && n.Name != m.name && now.Sub(at) > suspectAfter {
			n.State = "suspect"
		}
		switch v := m.views[n.Name]; {
		case !n.Live():
		case n.Name == m.name:
			n.Clusters, n.Pending = m.own.clusters, !m.own.published
		case v == nil:
			n.Pending = true
		default:
			// A member whose metadata this version cannot read (a newer
			// daemon in a rolling upgrade, or garbage) holds readiness
			// back like one that has not spoken yet: nobody can tell
			// what it serves.
			n.Clusters, n.Pending = v.clusters, v.badMeta || !v.meta.Published || !v.synced
		}
		out = append(out, n)
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// forgetLocked drops members dead for longer than forgetDead, and the
// oldest dead ones past maxDeadMembers. Callers hold m.mu.
func (m *Membership) forgetLocked(now time.Time) {
	for name, at := range m.deadSince {
		if now.Sub(at) > m.forgetDead {
			m.dropLocked(name)
		}
	}
	for len(m.deadSince) > maxDeadMembers {
		oldest, at := "", now
		for name, t := range m.deadSince {
			if oldest == "" || t.Before(at) {
				oldest, at = name, t
			}
		}
		m.dropLocked(oldest)
	}
}

func (m *Membership) dropLocked(name string) {
	delete(m.nodes, name)
	delete(m.views, name)
	delete(m.deadSince, name)
	delete(m.lastAck, name)
}

// Fatal delivers the error that makes this node unable to go on: another
// node that started earlier holds its name.
func (m *Membership) Fatal() <-chan error { return m.fatal }

// Conflict is another node claiming this node's name.
type Conflict struct {
	Name string
	Addr string // the other node's address
	At   time.Time
}

// NameConflict returns the last time another node claimed this node's
// name, if one did in the last conflictShown.
func (m *Membership) NameConflict() (Conflict, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conflict == nil || time.Since(m.conflict.At) > conflictShown {
		return Conflict{}, false
	}
	return *m.conflict, true
}

// conflictShown is how long a refused claim on this node's name stays in
// status after memberlist last reported it (it does on every message the
// other node sends).
const conflictShown = time.Minute

// member copies what the daemon needs of a node, its metadata into its
// view. memberlist v0.7 does not fill Node.State (its own state field
// shadows it), so the state comes from which callback saw the node.
// Callers hold m.mu.
func (m *Membership) memberLocked(n *memberlist.Node, state string) Member {
	mem := Member{Name: n.Name, Addr: n.Address(), State: state}
	if n.Name == m.name {
		return mem
	}
	meta, err := DecodeMeta(n.Meta)
	if err != nil {
		m.log.Warn("member metadata", "member", n.Name, "err", err)
		v := m.views[n.Name]
		if v == nil {
			v = newView(0)
			m.views[n.Name] = v
		}
		v.badMeta = true
		return mem
	}
	v := m.viewLocked(n.Name, meta.Started.UnixNano())
	if v.started == meta.Started.UnixNano() {
		v.meta, v.hasMeta, v.badMeta = meta, true, false
		v.check(time.Now())
	}
	return mem
}

// Leave tells the others this node is going, so they take over at once
// instead of waiting to detect a failure, then stops.
func (m *Membership) Leave() error {
	err := errors.New("membership: already left")
	m.left.Do(func() {
		close(m.done)
		err = m.ml.Leave(time.Second)
		if serr := m.ml.Shutdown(); err == nil {
			err = serr
		}
	})
	return err
}

type delegate Membership

// NodeMeta is the summary of the published state; before the first
// Publish, just the start time, so that a name conflict can be settled from
// the first message.
func (d *delegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.own.meta(d.started).Encode()
}

// NotifyMsg takes the membership's own messages and passes the daemon's on.
func (d *delegate) NotifyMsg(b []byte) {
	m := (*Membership)(d)
	if len(b) == 0 {
		return
	}
	switch b[0] {
	case kindDelta, kindFull:
		m.receiveState(b)
	case kindRequest:
		m.receiveRequest(b)
	default:
		select {
		case d.msgs <- append([]byte(nil), b...):
		default:
		}
	}
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }

// LocalState gives memberlist's push/pull this node's full state.
func (d *delegate) LocalState(join bool) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.own.published {
		return nil
	}
	return d.own.fullMessage(d.name, d.started)
}

func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	if len(buf) > 0 {
		(*Membership)(d).receiveState(buf)
	}
}

type events Membership

func (e *events) NotifyJoin(n *memberlist.Node) {
	mem := e.record(n, "alive")
	e.mu.Lock()
	e.lastAck[n.Name] = time.Now() // a member that just joined is not suspect
	var sameAddr []string
	for _, o := range e.nodes {
		if o.Name != n.Name && o.Addr == mem.Addr && o.Live() {
			sameAddr = append(sameAddr, o.Name)
		}
	}
	e.mu.Unlock()
	if n.Name != e.name {
		e.joined.Store(true)
	}
	e.log.Info("member joined", "member", n.Name, "addr", mem.Addr)
	if len(sameAddr) > 0 {
		// A restarted node under a new name, or a member that is not who
		// it says: an operator should look either way.
		e.log.Warn("member joined with the address of another live member", "member", n.Name, "addr", mem.Addr, "others", sameAddr)
	}
}

// NotifyLeave comes for a member that failed and for one that left;
// memberlist does not say which, so both show as dead.
func (e *events) NotifyLeave(n *memberlist.Node) {
	e.record(n, "dead")
	e.log.Info("member gone", "member", n.Name)
}

func (e *events) NotifyUpdate(n *memberlist.Node) { e.record(n, "alive") }

// record copies a node into the view (memberlist calls under its lock, so
// the node is consistent here and only here) and signals a change.
func (e *events) record(n *memberlist.Node, state string) Member {
	m := (*Membership)(e)
	e.mu.Lock()
	mem := m.memberLocked(n, state)
	if state == "dead" {
		e.deadSince[n.Name] = time.Now()
	} else {
		delete(e.deadSince, n.Name)
	}
	e.nodes[n.Name] = mem
	m.forgetLocked(time.Now())
	e.mu.Unlock()
	m.notify()
	return mem
}

// conflicts learns from memberlist that two nodes claim one name; memberlist
// then ignores the later claim, so without this one of them would be shut
// out without a word.
type conflicts Membership

// NotifyConflict is called with the node memberlist knows under the name
// and the other node that claims it. When the name is this node's own, the
// node that started later yields: it stops with an error (its supervisor
// shows it failed), and the earlier one logs the intruder and shows it in
// status. A node without readable metadata has not spoken yet: it just
// started.
func (c *conflicts) NotifyConflict(existing, other *memberlist.Node) {
	m := (*Membership)(c)
	otherAddr := other.Address()
	if existing.Name != m.name {
		key := existing.Name + " " + otherAddr
		m.mu.Lock()
		last, seen := m.warned[key]
		if !seen || time.Since(last) > conflictShown {
			m.warned[key] = time.Now()
		}
		m.mu.Unlock()
		if !seen || time.Since(last) > conflictShown {
			m.log.Warn("two nodes claim one member name; the later is refused until it is renamed",
				"name", existing.Name, "member", existing.Address(), "other", otherAddr)
		}
		return
	}
	meta, err := DecodeMeta(other.Meta)
	theirs := meta.Started
	if err != nil || len(other.Meta) == 0 || theirs.IsZero() {
		theirs = time.Now()
	}
	if theirs.Before(m.started) {
		err := fmt.Errorf("--node-name %q is already used by the member at %s, which started first; give this node a name of its own", m.name, otherAddr)
		select {
		case m.fatal <- err:
			m.log.Error("member name conflict: this node yields", "name", m.name, "other", otherAddr)
		default:
		}
		return
	}
	m.mu.Lock()
	first := m.conflict == nil || m.conflict.Addr != otherAddr || time.Since(m.conflict.At) > conflictShown
	m.conflict = &Conflict{Name: m.name, Addr: otherAddr, At: time.Now()}
	m.mu.Unlock()
	if first {
		m.log.Error("another node claims this node's member name; it was refused and must be given a name of its own",
			"name", m.name, "other", otherAddr)
	}
}

type pings Membership

func (p *pings) AckPayload() []byte { return nil }

func (p *pings) NotifyPingComplete(other *memberlist.Node, rtt time.Duration, payload []byte) {
	p.mu.Lock()
	p.lastAck[other.Name] = time.Now()
	p.mu.Unlock()
}

// slogWriter passes memberlist's log lines to slog at debug level; its
// warnings about failed probes are the normal business of failure detection.
type slogWriter struct{ log *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	w.log.Debug(string(bytes.TrimSpace(p)), "component", "memberlist")
	return len(p), nil
}

var _ io.Writer = (*slogWriter)(nil)
