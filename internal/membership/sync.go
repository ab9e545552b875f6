package membership

import (
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/hashicorp/memberlist"
)

// How cluster states travel. memberlist's node metadata holds 512 bytes,
// 11 clusters' worth, so it carries only a summary (Meta: a generation, a
// count and a digest) and the states go in messages of their own:
//
//   - a change goes at once, as delta messages of the changed clusters, in
//     one UDP packet each, to every live member;
//   - a member whose view of a node falls behind that node's metadata for
//     longer than syncGrace (a lost packet, or a node that joined after the
//     states were sent) asks it for its full state, and gets it over a TCP
//     stream;
//   - memberlist's push/pull carries the full state too (at join, and every
//     few seconds with one random member).
//
// Each cluster's state carries the version at which it last changed, so the
// messages may come in any order: the newest version of each cluster wins.
const (
	syncGrace    = 250 * time.Millisecond // a view may lag its metadata this long before a request
	syncRetry    = time.Second            // an unanswered request is repeated after this
	syncInterval = 100 * time.Millisecond // how often views are checked against metadata
	maxAsking    = 4                      // requests in flight at once: answers come as TCP streams, which the transport caps
	maxPending   = 1024                   // deltas not sent yet; past it they are dropped and members sync
)

// view is this node's copy of another node's cluster states, for one start
// of that node.
type view struct {
	started int64
	meta    Meta
	hasMeta bool
	badMeta bool // the node's metadata could not be read

	entries map[netip.Addr]Entry // gone clusters too, so an older delta cannot bring one back
	floor   uint64               // the generation of the last full state: older deltas carry nothing new
	gen     uint64
	count   uint32
	digest  uint64
	// clusters are the live states sorted by VIP; replaced, never changed
	// in place, so Members can hand the slice out.
	clusters []ClusterState

	synced      bool // the view matched the node's metadata once
	behindSince time.Time
	askedAt     time.Time
}

func newView(started int64) *view {
	return &view{started: started, entries: map[netip.Addr]Entry{}}
}

// behind tells whether the node's metadata shows states the view lacks. A
// view ahead of the metadata (states came before it) is not behind.
func (v *view) behind() bool {
	if !v.hasMeta || !v.meta.Published {
		return false
	}
	return v.gen < v.meta.Gen || v.gen == v.meta.Gen && (v.count != v.meta.Count || v.digest != v.meta.Digest)
}

// check marks the view synced when it matches the metadata, and notes
// since when it has been behind.
func (v *view) check(now time.Time) {
	if v.behind() {
		if v.behindSince.IsZero() {
			v.behindSince = now
		}
		return
	}
	v.behindSince = time.Time{}
	// A view ahead of the metadata may still lack older states: only an
	// exact match says it holds them all.
	if v.hasMeta && v.meta.Published && v.gen == v.meta.Gen && v.count == v.meta.Count && v.digest == v.meta.Digest {
		v.synced = true
		v.askedAt = time.Time{}
	}
}

// apply merges a state message into the view and tells whether it changed
// anything.
func (v *view) apply(s StateMessage) bool {
	changed := false
	if s.Full {
		if s.Gen < v.floor {
			return false
		}
		in := make(map[netip.Addr]bool, len(s.Entries))
		for _, e := range s.Entries {
			in[e.State.VIP] = true
			if old, ok := v.entries[e.State.VIP]; !ok || old.Version < e.Version {
				v.entries[e.State.VIP] = e
				changed = true
			}
		}
		// What the full state does not list, it did not have at its
		// generation: only newer deltas may add to it.
		for vip, e := range v.entries {
			if !in[vip] && e.Version <= s.Gen {
				delete(v.entries, vip)
				changed = changed || !e.Gone
			}
		}
		v.floor = s.Gen
		v.askedAt = time.Time{}
	} else {
		for _, e := range s.Entries {
			if e.Version <= v.floor {
				continue
			}
			if old, ok := v.entries[e.State.VIP]; ok && old.Version >= e.Version {
				continue
			}
			v.entries[e.State.VIP] = e
			changed = true
		}
	}
	if changed {
		v.recount()
	}
	return changed
}

func (v *view) recount() {
	v.gen, v.count, v.digest = v.floor, 0, 0
	clusters := make([]ClusterState, 0, len(v.entries))
	for vip, e := range v.entries {
		v.gen = max(v.gen, e.Version)
		if e.Gone {
			continue
		}
		v.count++
		v.digest += digestTerm(vip, e.Version)
		clusters = append(clusters, e.State)
	}
	sortStates(clusters)
	v.clusters = clusters
}

func sortStates(s []ClusterState) {
	slices.SortFunc(s, func(a, b ClusterState) int { return a.VIP.Compare(b.VIP) })
}

// own is this node's published state.
type own struct {
	published bool
	version   uint64
	entries   map[netip.Addr]Entry
	clusters  []ClusterState // sorted by VIP; replaced, never changed in place
	digest    uint64
	full      []byte   // the full state message, encoded when first asked for
	pending   [][]byte // deltas the publisher has not sent yet
}

// update makes states the published state and returns the entries that
// changed (those of clusters gone marked Gone), each with a new version.
func (o *own) update(states []ClusterState) []Entry {
	if o.entries == nil {
		o.entries = map[netip.Addr]Entry{}
	}
	var changed []Entry
	in := make(map[netip.Addr]bool, len(states))
	for _, st := range states {
		in[st.VIP] = true
		if e, ok := o.entries[st.VIP]; ok && e.State == st {
			continue
		}
		o.version++
		e := Entry{Version: o.version, State: st}
		o.entries[st.VIP] = e
		changed = append(changed, e)
	}
	for vip := range o.entries {
		if !in[vip] {
			o.version++
			delete(o.entries, vip)
			changed = append(changed, Entry{Version: o.version, Gone: true, State: ClusterState{VIP: vip}})
		}
	}
	if len(changed) > 0 || !o.published {
		o.digest = 0
		clusters := make([]ClusterState, 0, len(o.entries))
		for vip, e := range o.entries {
			o.digest += digestTerm(vip, e.Version)
			clusters = append(clusters, e.State)
		}
		sortStates(clusters)
		o.clusters, o.full = clusters, nil
	}
	o.published = true
	return changed
}

func (o *own) meta(started time.Time) Meta {
	return Meta{Started: started, Published: o.published, Gen: o.version, Count: uint32(len(o.entries)), Digest: o.digest}
}

// fullMessage is the whole published state as a full state message.
func (o *own) fullMessage(name string, started time.Time) []byte {
	if o.full == nil {
		entries := make([]Entry, 0, len(o.entries))
		for _, st := range o.clusters {
			entries = append(entries, o.entries[st.VIP])
		}
		b, err := StateMessage{Full: true, Node: name, Started: started, Gen: o.version, Entries: entries}.Encode()
		if err != nil {
			return nil // Publish checked every state it took
		}
		o.full = b
	}
	return o.full
}

// viewLocked returns the view of node name for its start started, a new one
// if the node started again. Callers hold m.mu.
func (m *Membership) viewLocked(name string, started int64) *view {
	v := m.views[name]
	if v == nil || v.started < started {
		v = newView(started)
		m.views[name] = v
	}
	return v
}

// receiveState takes a state message of another node.
func (m *Membership) receiveState(b []byte) {
	s, err := DecodeStateMessage(b)
	if err != nil {
		m.log.Warn("state message ignored", "err", err, "bytes", len(b))
		return
	}
	if s.Node == m.name {
		return // this node's own, come back
	}
	m.mu.Lock()
	v := m.viewLocked(s.Node, s.Started.UnixNano())
	changed := false
	if v.started == s.Started.UnixNano() {
		changed = v.apply(s)
		v.check(time.Now())
	}
	m.mu.Unlock()
	if changed {
		m.notify()
	}
}

// receiveRequest queues an answer to a member that asked for this node's
// full state.
func (m *Membership) receiveRequest(b []byte) {
	from, err := parseRequest(b)
	if err != nil {
		m.log.Warn("state request ignored", "err", err)
		return
	}
	m.mu.Lock()
	if len(m.asked) < maxPending {
		m.asked[from] = true
	}
	m.mu.Unlock()
	select {
	case m.answerCh <- struct{}{}:
	default:
	}
}

// answerer sends the full state to the members that asked for it, one at a
// time.
func (m *Membership) answerer() {
	for {
		select {
		case <-m.done:
			return
		case <-m.answerCh:
		}
		m.mu.Lock()
		asked := m.asked
		m.asked = map[string]bool{}
		full := m.own.fullMessage(m.name, m.started)
		m.mu.Unlock()
		if full == nil {
			continue
		}
		for name := range asked {
			// A state that fits one packet goes as one: when a cluster of
			// many nodes starts, every member asks every other, and as
			// many TCP streams (each a connection, a key exchange and
			// a slot of the transport's stream limit) would take the CPU
			// the probes need. A lost answer is asked for again.
			send := m.SendReliable
			if len(full) <= maxDeltaLen {
				send = m.sendBestEffort
			}
			if err := send(name, full); err != nil {
				m.log.Debug("full state not sent", "to", name, "err", err)
			}
		}
	}
}

// syncer checks every view against its node's metadata and asks the nodes
// it has fallen behind for their full state.
func (m *Membership) syncer() {
	t := time.NewTicker(syncInterval)
	defer t.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-t.C:
		}
		now := time.Now()
		var ask []string
		m.mu.Lock()
		asking := 0
		for _, v := range m.views {
			if !v.askedAt.IsZero() && now.Sub(v.askedAt) < syncRetry {
				asking++
			}
		}
		for name, n := range m.nodes {
			v := m.views[name]
			if name == m.name || !n.Live() || v == nil {
				continue
			}
			v.check(now)
			if v.behindSince.IsZero() || now.Sub(v.behindSince) < syncGrace || now.Sub(v.askedAt) < syncRetry || asking >= maxAsking {
				continue
			}
			v.askedAt = now
			asking++
			ask = append(ask, name)
		}
		m.mu.Unlock()
		for _, name := range ask {
			m.log.Debug("view behind; asking for the full state", "member", name)
			if err := m.sendBestEffort(name, requestMessage(m.name)); err != nil {
				m.log.Debug("state request", "member", name, "err", err)
			}
		}
	}
}

// sendDeltas sends the deltas published since the last call to every live
// member.
func (m *Membership) sendDeltas() {
	m.mu.Lock()
	deltas := m.own.pending
	m.own.pending = nil
	var to []string
	for name, n := range m.nodes {
		if name != m.name && n.Live() {
			to = append(to, name)
		}
	}
	m.mu.Unlock()
	for _, name := range to {
		for _, d := range deltas {
			if err := m.sendBestEffort(name, d); err != nil {
				m.log.Debug("state delta", "member", name, "err", err)
				break
			}
		}
	}
}

// sendBestEffort sends a message to a member in one UDP packet.
func (m *Membership) sendBestEffort(name string, msg []byte) error {
	n, err := m.memberNode(name)
	if err != nil {
		return err
	}
	return m.ml.SendBestEffort(n, msg)
}

// memberNode is a member's address for memberlist, from this node's own
// copy of it: memberlist's *Node values change under its lock while others
// read them.
func (m *Membership) memberNode(name string) (*memberlist.Node, error) {
	m.mu.Lock()
	n, ok := m.nodes[name]
	m.mu.Unlock()
	if !ok || !n.Live() {
		return nil, errNoMember(name)
	}
	addr, err := net.ResolveUDPAddr("udp", n.Addr)
	if err != nil {
		return nil, err
	}
	return &memberlist.Node{Name: name, Addr: addr.IP, Port: uint16(addr.Port)}, nil
}
