package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/clusterip/clusterip/internal/datapath"
	"github.com/clusterip/clusterip/internal/membership"
	"github.com/clusterip/clusterip/nodeset"
)

// cluster is one VIP served by this daemon.
type cluster struct {
	spec Spec
	dp   *datapath.Datapath
	log  *slog.Logger
	kick func() // asks the failover loop to reconcile now

	mu          sync.Mutex // serializes control-file writes and failover state
	fo          *failover  // nil without membership: the control file is the whole truth
	stopChecks  func()
	lastCheck   string // why the health check last changed its mind
	linkProblem string // why the interface cannot carry the cluster now; "" when it can
	fromConfig  bool   // declared by the config file: a reload manages it

	node     string               // this node's name in the flood check
	floodMu  sync.Mutex           // guards flood: the datapath reports while c.mu may wait for it
	flood    datapath.FloodReport // the flood check's last report
	hooks    *hooks               // the --notify program
	notified nodeset.NodeSet      // the numbers served as hooks last heard
	handoffs atomic.Uint64        // numbers handed to or taken from another node by a release
}

// servedLocked is what the node answers for now: the numbers held, unless
// nothing reaches it. Callers hold c.mu.
func (c *cluster) servedLocked() nodeset.NodeSet {
	if c.linkProblem != "" {
		return 0
	}
	return c.dp.Nodes()
}

// servingChangedLocked tells the hooks when the numbers served changed
// since they last heard. Callers hold c.mu.
func (c *cluster) servingChangedLocked() {
	now := c.servedLocked()
	if now == c.notified {
		return
	}
	c.hooks.serving(c.spec.VIP.String(), c.notified.String(), now.String())
	c.notified = now
}

// setLinkProblem records why the cluster's interface cannot carry it (""
// when it can). Under automatic failover the node then gives its numbers
// up at once.
func (c *cluster) setLinkProblem(problem string) {
	c.mu.Lock()
	changed := c.linkProblem != problem
	c.linkProblem = problem
	if c.fo != nil {
		c.fo.linkDown = problem != ""
	}
	c.servingChangedLocked()
	c.mu.Unlock()
	if changed {
		if problem != "" {
			c.log.Error("cannot serve", "problem", problem)
		} else {
			c.log.Info("interface carries the cluster again")
		}
		c.kick()
	}
}

// floodChanged hears the flood check's new report: it logs the change once,
// and under automatic failover gossips it.
//
// It must not take c.mu: a delete holds c.mu while it closes the datapath,
// which waits for the goroutine that calls this.
func (c *cluster) floodChanged(r datapath.FloodReport) {
	c.floodMu.Lock()
	prev := c.flood
	c.flood = r
	c.floodMu.Unlock()
	if c.fo != nil {
		c.fo.notFlooded.Store(r.State == datapath.FloodBroken)
	}
	switch {
	case r.State == datapath.FloodBroken && prev.State == datapath.FloodBroken:
		c.log.Warn("flood check: frames to the cluster MAC still do not reach this node", "missing_from", strings.Join(r.Missing, ","))
	case r.State == datapath.FloodBroken:
		c.log.Error("frames sent to the cluster MAC do not reach this node: the switch does not flood them, and clients' connections go unanswered",
			"clustermac", c.spec.ClusterMAC.String(), "missing_from", strings.Join(r.Missing, ","), "mac_mode", c.spec.MACMode.String(),
			"likely", floodHint(c.spec.MACMode), "see", `README, "Switches"`)
	case prev.State == datapath.FloodBroken:
		c.log.Info("frames sent to the cluster MAC reach this node again", "peers", strings.Join(r.Peers, ","))
	case r.State != prev.State:
		c.log.Info("flood check", "flooding", r.State.String(), "peers", strings.Join(r.Peers, ","))
	}
	c.kick()
}

// floodHint names the likely cause of frames to the cluster MAC not
// arriving in mode.
func floodHint(mode datapath.MACMode) string {
	switch mode {
	case datapath.MACUnicast:
		return "the switch does not flood unknown unicast (unknown-unicast blocking, port security, or a static entry for the cluster MAC)"
	case datapath.MACIGMP:
		return "the switch forwards multicast by IP address, not by MAC (a Linux bridge does); use --mac-mode unicast"
	}
	return "IGMP/MLD snooping with a querier, or a switch that forwards multicast by IP address; use --mac-mode unicast"
}

// Contents is the control file's text: the node numbers held, as the
// kernel's /proc/net/ipt_CLUSTERIP/<VIP> printed them ("1,3\n", and nothing
// at all when no node is held).
func (c *cluster) Contents() []byte {
	s := c.dp.Nodes()
	if s.Len() == 0 {
		return nil
	}
	return []byte(s.String() + "\n")
}

// Write applies one control-file command, "+N" or "-N". A refused command
// fails the writer's write(2) with the errno the kernel used and changes
// nothing.
func (c *cluster) Write(data []byte) error {
	cmd, err := nodeset.ParseCommand(data)
	if err != nil {
		c.log.Warn("control file: write refused", "data", strings.TrimSpace(string(data)), "reason", err)
		return controlError(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fo != nil {
		return c.overrideLocked(cmd)
	}
	next, err := c.dp.Nodes().Apply(cmd, c.spec.TotalNodes)
	if err != nil {
		c.log.Warn("control file: write refused", "command", cmd.String(), "nodes", c.dp.Nodes().String(), "reason", err)
		return controlError(err)
	}
	c.dp.SetNodes(next)
	c.servingChangedLocked()
	c.log.Info("control file", "command", cmd.String(), "nodes", next.String())
	return nil
}

// overrideLocked applies a control-file write under automatic assignment:
// +N makes N one of this node's home numbers (it serves N whenever it is
// available) and -N takes N away from this node for good (no home, never a
// survivor's pick), until the opposite write. Reads still show what the node
// serves right now.
func (c *cluster) overrideLocked(cmd nodeset.Command) error {
	f := c.fo
	if !cmd.Add && !f.home.Contains(cmd.Node) && f.serving.Contains(cmd.Node) {
		f.excluded = f.excluded.Add(cmd.Node)
	} else {
		home, err := f.home.Apply(cmd, c.spec.TotalNodes)
		if err != nil {
			c.log.Warn("control file: write refused", "command", cmd.String(), "home", f.home.String(), "reason", err)
			return controlError(err)
		}
		f.home = home
		if cmd.Add {
			f.excluded = f.excluded.Remove(cmd.Node)
		} else {
			f.excluded = f.excluded.Add(cmd.Node)
		}
	}
	c.log.Info("control file", "command", cmd.String(), "home", f.home.String(), "excluded", f.excluded.String())
	c.kick()
	return nil
}

// controlError maps nodeset's errors to the errno the kernel's
// clusterip_proc_write returned for the same mistake.
func controlError(err error) error {
	errno := syscall.EIO
	switch {
	case errors.Is(err, nodeset.ErrOutOfRange), errors.Is(err, nodeset.ErrAlreadyHeld):
		errno = syscall.ENOMEM
	case errors.Is(err, nodeset.ErrNotHeld):
		errno = syscall.ENOENT
	}
	return fmt.Errorf("%w: %w", errno, err)
}

// startChecks runs the cluster's health check, if it has one, until
// stopChecks. A failing service makes the node unavailable, which hands its
// numbers to the others exactly as a drain does.
func (c *cluster) startChecks() {
	if c.spec.Check == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	c.stopChecks = func() { cancel(); <-done }
	go func() {
		defer close(done)
		c.spec.Check.Run(ctx, c.spec.VIP, func(healthy bool, err error) {
			c.mu.Lock()
			c.fo.unhealthy = !healthy
			c.lastCheck = fmt.Sprintf("healthy since %s", time.Now().Format(time.TimeOnly))
			if !healthy {
				c.lastCheck = fmt.Sprintf("unhealthy since %s: %v", time.Now().Format(time.TimeOnly), err)
			}
			c.mu.Unlock()
			if healthy {
				c.log.Info("health check passes again; taking the numbers back", "check", c.spec.Check.String())
			} else {
				c.log.Warn("health check fails; handing the numbers to the others", "check", c.spec.Check.String(), "err", err)
			}
			c.kick()
		})
	}()
}

// reconcile runs one failover step and carries it out: the datapath's new
// policy first, then the releases (returned for the caller to send: the
// datapath no longer takes new connections of their numbers, so the
// receivers may), then the takeovers. sockets is the round's reading of
// the socket table; the numbers whose connections must be read again once
// the round's policies are all in place are returned in adopt (see
// datapath.SetPolicyShared). Callers hold c.mu.
func (c *cluster) reconcile(me string, members []membership.Member, now time.Time, sockets *datapath.SocketReader) (_ membership.ClusterState, _ []release, adopt nodeset.NodeSet) {
	out := c.fo.step(stepInput{VIP: c.spec.VIP, Total: c.spec.TotalNodes, Me: me, Members: members, Now: now, Flows: c.dp.Flows()})
	adopt = c.dp.SetPolicyShared(out.Policy, sockets)
	c.servingChangedLocked()
	c.handoffs.Add(uint64(len(out.Release)))
	var releases []release
	for _, h := range out.Release {
		if h.To == "" {
			// No release tells anyone of the connectionless flows
			// silent through the handoff: whoever takes the number
			// will take them for new, so they must be its alone.
			c.dp.ForgetQuiet(h.Node, h.Since)
			continue
		}
		// The receiver never saw the quiet flows either: the release
		// lists them, so that they stay with this node.
		flows, complete := c.dp.KeptFlows(h.Node, h.Since)
		msg, err := releaseMsg{VIP: c.spec.VIP, Node: h.Node, From: me, Complete: complete, Flows: flows}.encode()
		if err != nil {
			c.log.Error("release message", "node", h.Node, "err", err)
			continue
		}
		if !complete {
			c.log.Warn("release lists only part of the flows kept; new connections of the handoff wait for their retransmission", "node", h.Node, "flows", len(flows))
		}
		releases = append(releases, release{to: h.To, msg: msg})
	}
	for _, t := range out.Take {
		if t.Theirs != nil {
			c.handoffs.Add(1)
		}
		if n := c.dp.TakeOver(t.Node, t.Theirs); n > 0 {
			c.log.Info("answered connections that began during the handoff", "node", t.Node, "packets", n)
		}
	}
	for _, e := range out.Events {
		c.log.Info(e)
	}
	return out.State, releases, adopt
}

// status describes the cluster; members is the membership view, if any,
// and retired the counters of earlier incarnations of its VIP (a reload
// that recreated it), so that counters never go back.
func (c *cluster) status(members []membership.Member, retired datapath.Stats) ClusterStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.spec
	serving, home := c.dp.Nodes(), c.dp.Nodes()
	if c.fo != nil {
		home = c.fo.home
	}
	st := ClusterStatus{
		VIP: s.VIP.String(), Interface: s.Interface, HashMode: s.Mode.String(), ClusterMAC: s.ClusterMAC.String(),
		TotalNodes: s.TotalNodes, HashInit: s.HashInit, HashCompat: s.HashCompat.String(), MACMode: s.MACMode.String(), LocalNodes: numbers(home),
		Tap: c.dp.TapName(), Members: []MemberStatus{}, Problems: []string{},
	}
	fr := c.dp.Flooding()
	st.Flooding = FloodingStatus{State: fr.State.String(), Nodes: []string{}, MissingFrom: fr.Missing, Peers: fr.Peers}
	if fr.State == datapath.FloodBroken {
		st.Flooding.Nodes = append(st.Flooding.Nodes, c.node)
		st.Problems = append(st.Problems, fmt.Sprintf("frames to the cluster MAC %s from %s do not reach this node: the switch does not flood them (%s; README, \"Switches\")",
			s.ClusterMAC, strings.Join(fr.Missing, ", "), floodHint(s.MACMode)))
	}
	if ch := s.Check; ch != nil {
		st.Check = &CheckStatus{Check: ch.String(), Interval: ch.Interval.String(), Timeout: ch.Timeout.String(),
			Fall: ch.Fall, Rise: ch.Rise, Healthy: c.fo == nil || !c.fo.unhealthy, Last: c.lastCheck}
	}
	if c.linkProblem != "" {
		serving = 0 // held, but nothing reaches it
		st.Problems = append(st.Problems, c.linkProblem)
	}
	st.Serving = numbers(serving)
	inKernel, attached := c.dp.KernelPath()
	st.KernelPath, st.InKernel = attached, numbers(inKernel)
	stats := c.dp.Stats()
	stats.Add(retired)
	st.Packets = PacketCounts{
		KernelAnswered: stats.KernelTaken, UserAnswered: stats.Owned, UserNotAnswered: stats.NotOwned,
		Malformed: stats.Malformed, Held: stats.Held, ARPReplies: stats.ARPReplies, NDReplies: stats.NDReplies,
		FragmentsHeld: stats.HeldFrags, FragmentsDropped: stats.DroppedFrag, TapErrors: stats.TapErrors,
	}
	f := c.dp.Flows()
	st.Flows = FlowCounts{Tracked: f.Tracked, Kept: f.Kept, Foreign: f.Foreign, Untracked: f.Untracked, Evicted: f.Evicted,
		HeldPackets: f.Held, KeptNumbers: numbers(f.KeptNumbers)}
	if c.fo != nil {
		st.Draining = c.fo.draining
		if c.fo.draining && !c.fo.drainEnd.IsZero() {
			st.DrainUntil = c.fo.drainEnd.Format(time.RFC3339)
		}
		st.Members = memberStatuses(s.VIP, members)
		for _, m := range members {
			if cs, ok := m.Cluster(s.VIP); ok && cs.NotFlooded && m.Live() && m.Name != c.node {
				st.Flooding.Nodes = append(st.Flooding.Nodes, m.Name)
				if st.Flooding.State != "broken" {
					st.Flooding.State = "broken" // it is, for that node
				}
			}
		}
		slices.Sort(st.Flooding.Nodes)
	}
	return st
}

// savedSpec is the cluster as `save` writes it: with the numbers held now,
// or with automatic failover the home numbers.
func (c *cluster) savedSpec() Spec {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.spec
	s.LocalNodes = c.dp.Nodes()
	if c.fo != nil {
		s.LocalNodes = c.fo.home
	}
	return s
}
