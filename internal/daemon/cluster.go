package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
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
		return controlError(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fo != nil {
		return c.overrideLocked(cmd)
	}
	next, err := c.dp.Nodes().Apply(cmd, c.spec.TotalNodes)
	if err != nil {
		return controlError(err)
	}
	c.dp.SetNodes(next)
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
			c.log.Warn("health check", "healthy", healthy, "err", err)
			c.kick()
		})
	}()
}

// reconcile runs one failover step and carries it out: the datapath's new
// policy first, then the releases (returned for the caller to send: the
// datapath no longer takes new connections of their numbers, so the
// receivers may), then the takeovers. Callers hold c.mu.
func (c *cluster) reconcile(me string, members []membership.Member, now time.Time) (membership.ClusterState, []release) {
	out := c.fo.step(stepInput{VIP: c.spec.VIP, Total: c.spec.TotalNodes, Me: me, Members: members, Now: now, Flows: c.dp.Flows()})
	c.dp.SetPolicy(out.Policy)
	var releases []release
	for _, h := range out.Release {
		// A connectionless flow silent through the whole handoff was
		// never seen by the receiver, which will take it for new: it
		// must then be the receiver's alone.
		c.dp.ForgetQuiet(h.Node, h.Since)
		if h.To == "" {
			continue
		}
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
		if n := c.dp.TakeOver(t.Node, t.Theirs); n > 0 {
			c.log.Info("answered connections that began during the handoff", "node", t.Node, "packets", n)
		}
	}
	for _, e := range out.Events {
		c.log.Info(e)
	}
	return out.State, releases
}

// status describes the cluster; members is the membership view, if any.
func (c *cluster) status(members []membership.Member) ClusterStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.spec
	s.LocalNodes = c.dp.Nodes()
	st := ClusterStatus{Serving: c.dp.Nodes(), Tap: c.dp.TapName(), Stats: c.dp.Stats(), Flows: c.dp.Flows(), Health: c.lastCheck}
	if c.linkProblem != "" {
		st.Serving = 0 // held, but nothing reaches it
		st.Problems = append(st.Problems, c.linkProblem)
	}
	st.Kernel, st.KernelPath = c.dp.KernelPath()
	if c.fo != nil {
		s.LocalNodes = c.fo.home
		st.Draining = c.fo.draining
		st.Members = memberStatuses(s.VIP, members)
	}
	st.Args = s.Args()
	return st
}
