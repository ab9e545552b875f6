// Package daemon runs the clusterip daemon: it owns the clusters, the
// control files, the control socket and every change made to the host.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/clusterip/clusterip/internal/buildinfo"
	"github.com/clusterip/clusterip/internal/datapath"
	"github.com/clusterip/clusterip/internal/membership"
	"github.com/clusterip/clusterip/nodeset"
	"github.com/clusterip/clusterip/procfs"
)

// Defaults for a node's single daemon.
const (
	DefaultControlDir = "/run/clusterip"
	DefaultSocket     = "/run/clusterip.sock"
)

// Options configure a Daemon.
type Options struct {
	ControlDir string // where the control files are mounted
	Socket     string // control socket; the host journal lives beside it
	ConfigFile string // clusters to create at start; empty for none
	Workers    int    // datapath readers per cluster; 0: one per CPU
	UserOnly   bool   // answer every packet through user space, never in the kernel path
	Membership *MembershipOptions
	Log        *slog.Logger
	// MetricsAddress serves Prometheus metrics at /metrics on ADDR:PORT;
	// "" for none.
	MetricsAddress string
	// NodeName names the node to the other nodes' flood checks without
	// membership (with it, the member name does); "": the host name.
	NodeName string
	// Notify is a program run on every change of the numbers served and
	// on members going up or down (see hooks); "" for none.
	Notify        string
	NotifyTimeout time.Duration
}

// MembershipOptions turn on heartbeats and automatic failover. Without
// them the daemon does what the kernel target did: the control files are the
// only way numbers move.
type MembershipOptions struct {
	Name     string
	Bind     netip.Addr // zero: the address this host would use to reach the first peer
	Port     int
	Peers    []string
	KeyFile  string
	Insecure bool
	// AloneAfter lets a node that has met no peer for this long serve every
	// number by itself (0: never). Without it, a node that cannot reach or
	// authenticate with any peer serves nothing: a node with a wrong key
	// must not answer its neighbours' clients.
	AloneAfter time.Duration
}

// Daemon serves clusters until its context ends.
type Daemon struct {
	opts    Options
	log     *slog.Logger
	journal *hostJournal
	ctl     *procfs.Dir
	ms      *membership.Membership // nil without membership
	kickCh  chan struct{}

	reloadMu sync.Mutex // one reload at a time

	mu         sync.Mutex
	clusters   map[netip.Addr]*cluster
	deleting   map[netip.Addr]bool // clusters whose datapath is closing
	ifaceUsers map[ifaceFamily]int
	links      map[string]linkState // interfaces in use, as last seen
	// retired are the counters of clusters deleted by a reload that
	// recreated them: counters never go back.
	retired map[netip.Addr]retiredCounters

	hooks *hooks // the --notify program
	beats beats  // the loops' last rounds, for the watchdog
	// live is the set of live members the hooks last heard of, by name.
	live map[string]string
}

// retiredCounters are what earlier incarnations of a VIP's cluster counted.
type retiredCounters struct {
	stats    datapath.Stats
	handoffs uint64
}

// Run starts the daemon and blocks until ctx is done, then removes every
// cluster and restores the host. A bad config file stops it before anything
// on the host changes.
func Run(ctx context.Context, opts Options) error {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	// SIGHUP reloads; until the daemon is ready, it waits (its default
	// action would kill the daemon without restoring the host).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	opts.Log.Info("clusterip starting", "version", buildinfo.Version())
	var specs []Spec
	if opts.ConfigFile != "" {
		var err error
		if specs, err = readConfig(opts.ConfigFile, opts.Membership != nil); err != nil {
			return err
		}
	}
	var msCfg *membership.Config
	if opts.Membership != nil {
		c, err := opts.Membership.config(opts.Log)
		if err != nil {
			return err
		}
		msCfg = &c
	}
	var metricsLn net.Listener
	if opts.MetricsAddress != "" {
		var err error
		if metricsLn, err = net.Listen("tcp", opts.MetricsAddress); err != nil {
			return fmt.Errorf("--metrics-address: %w", err)
		}
		defer metricsLn.Close()
	}
	ln, err := listenControlSocket(opts.Socket)
	if err != nil {
		return err
	}
	d := &Daemon{opts: opts, log: opts.Log, clusters: map[netip.Addr]*cluster{}, ifaceUsers: map[ifaceFamily]int{},
		links: map[string]linkState{}, retired: map[netip.Addr]retiredCounters{}, deleting: map[netip.Addr]bool{}, live: map[string]string{}, kickCh: make(chan struct{}, 1)}
	node := ""
	if msCfg != nil {
		node = msCfg.Name
	}
	d.hooks = newHooks(opts.Notify, opts.NotifyTimeout, node, d.log)
	defer d.hooks.close()
	defer d.shutdown(ln)
	if d.journal, err = openHostJournal(opts.Socket + ".journal"); err != nil {
		d.log.Warn("restoring settings left by a previous run", "err", err)
	}
	if d.ctl, err = procfs.Mount(opts.ControlDir); err != nil {
		return err
	}
	if msCfg != nil {
		if d.ms, err = membership.Start(*msCfg); err != nil {
			return err
		}
		d.log.Info("membership started", "name", msCfg.Name, "bind", msCfg.Bind, "port", msCfg.Port, "peers", msCfg.Peers)
	}
	for _, s := range specs {
		if err := d.newClusterFrom(s, true); err != nil {
			return fmt.Errorf("%s: VIP %s: %w", opts.ConfigFile, s.VIP, err)
		}
	}
	loopCtx, stopLoop := context.WithCancel(ctx)
	loopDone := make(chan struct{})
	if d.ms != nil {
		go func() { d.failoverLoop(loopCtx); close(loopDone) }()
	} else {
		close(loopDone)
	}
	linksDone := make(chan struct{})
	go func() { d.watchLinks(loopCtx); close(linksDone) }()
	defer func() { stopLoop(); <-loopDone; <-linksDone }()
	go newControlServer(ln, d.do, d.log).serve()
	if metricsLn != nil {
		srv := d.serveMetrics(metricsLn)
		defer srv.Close()
	}
	go d.watchdog(loopCtx)
	d.log.Info("daemon ready", "socket", opts.Socket, "control", opts.ControlDir, "clusters", len(specs), "metrics", opts.MetricsAddress)
	sdNotify("READY=1")
	var fatal <-chan error
	if d.ms != nil {
		fatal = d.ms.Fatal()
	}
	for {
		select {
		case <-ctx.Done():
			sdNotify("STOPPING=1")
			return nil
		case err := <-fatal:
			d.log.Error("cannot go on", "err", err)
			sdNotify("STOPPING=1")
			return err
		case <-hup:
			// systemd's reload protocol: RELOADING=1, then READY=1 once
			// done, whether the file was good or not.
			sdNotify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", monotonicMicros()))
			d.log.Info("SIGHUP: reloading the config")
			d.reload()
			sdNotify("READY=1")
		}
	}
}

func (d *Daemon) shutdown(ln net.Listener) {
	ln.Close()
	if d.ms != nil {
		// Stop answering, then leave: the others take over at once rather
		// than after detecting a failure, and never while this node still
		// answers. Without flow tracking: the connections are given up
		// anyway, and reading them from the socket table for each of a
		// thousand clusters took seconds.
		d.mu.Lock()
		for _, c := range d.clusters {
			c.dp.SetPolicy(datapath.Policy{})
		}
		d.mu.Unlock()
		if err := d.ms.Leave(); err != nil {
			d.log.Warn("leave membership", "err", err)
		}
	}
	d.mu.Lock()
	vips := make([]netip.Addr, 0, len(d.clusters))
	for vip := range d.clusters {
		vips = append(vips, vip)
	}
	d.mu.Unlock()
	// Side by side: a thousand clusters one after another would take
	// their TAPs' removal times over.
	var wg sync.WaitGroup
	todo := make(chan netip.Addr)
	for range min(len(vips), 16) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for vip := range todo {
				if err := d.deleteCluster(vip); err != nil {
					d.log.Error("stop cluster", "vip", vip, "err", err)
				}
			}
		}()
	}
	for _, vip := range vips {
		todo <- vip
	}
	close(todo)
	wg.Wait()
	if d.ctl != nil {
		if err := d.ctl.Close(); err != nil {
			d.log.Error("unmount control files", "err", err)
		}
	}
	if d.journal != nil {
		if err := d.journal.restoreAll(); err != nil {
			d.log.Error("restore host settings", "err", err)
		}
	}
	d.log.Info("daemon stopped")
}

func (d *Daemon) do(req request, resp *response) error {
	switch req.Op {
	case opNew:
		s, err := ParseSpec(req.Args)
		if err != nil {
			return err
		}
		return d.newClusterFrom(s, false)
	case opDelete:
		vip, err := netip.ParseAddr(req.VIP)
		if err != nil {
			return fmt.Errorf("VIP %q: not an IP address", req.VIP)
		}
		return d.deleteCluster(vip)
	case opStatus:
		resp.Status = d.status()
		return nil
	case opSave:
		resp.Text = d.save()
		return nil
	case opReload:
		summary, err := d.reload()
		resp.Text = summary
		return err
	case opDrain, opResume:
		vip, err := netip.ParseAddr(req.VIP)
		if err != nil {
			return fmt.Errorf("VIP %q: not an IP address", req.VIP)
		}
		return d.drain(vip, req.Op == opDrain, req.Timeout)
	}
	return fmt.Errorf("unknown request %q", req.Op)
}

// newClusterFrom creates a cluster; fromConfig tells whether the config
// file declares it (a reload then manages it).
func (d *Daemon) newClusterFrom(s Spec, fromConfig bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.clusters[s.VIP]; ok {
		return fmt.Errorf("--vip %s: cluster already exists (delete it first)", s.VIP)
	}
	if d.deleting[s.VIP] {
		return fmt.Errorf("--vip %s: cluster still being deleted; try again", s.VIP)
	}
	if d.ms != nil && len(d.clusters) >= membership.MaxClusters {
		return fmt.Errorf("--vip %s: at most %d clusters per daemon with --peers", s.VIP, membership.MaxClusters)
	}
	if s.Check != nil && d.ms == nil {
		return fmt.Errorf("--check needs a daemon with --peers (automatic failover)")
	}
	if err := checkHost(s); err != nil {
		return err
	}
	var uid, gid uint32
	if s.ControlOwner != "" {
		var err error
		if uid, gid, err = resolveOwner(s.ControlOwner); err != nil {
			return err
		}
	}
	if err := d.useInterface(s.Interface, s.VIP.Is6()); err != nil {
		return fmt.Errorf("--interface %s: %w", s.Interface, err)
	}
	initial := s.LocalNodes
	if d.ms != nil {
		initial = 0 // the failover loop hands out numbers once it knows who is alive
	}
	c := &cluster{spec: s, log: d.log.With("vip", s.VIP.String()), kick: d.kick, stopChecks: func() {}, fromConfig: fromConfig, hooks: d.hooks, node: d.nodeName()}
	if d.ms != nil {
		c.fo = newFailover(s.LocalNodes)
	}
	dp, err := datapath.Open(datapath.Config{VIP: s.VIP, Interface: s.Interface, ClusterMAC: s.ClusterMAC, MACMode: s.MACMode,
		Hash: s.HashConfig(), Workers: d.opts.Workers, KernelPath: !d.opts.UserOnly, NodeName: c.node, OnFlood: c.floodChanged}, initial, d.log)
	if err == nil {
		c.dp = dp
		if d.ms != nil {
			dp.SetPolicy(datapath.Policy{Track: true})
			c.startChecks()
		}
		if err = d.ctl.Add(s.VIP.String(), c); err == nil && s.ControlOwner != "" {
			if err = d.ctl.Chown(s.VIP.String(), uid, gid); err != nil {
				d.ctl.Remove(s.VIP.String())
			}
		}
		if err == nil {
			d.kick()
			d.clusters[s.VIP] = c
			c.mu.Lock()
			c.servingChangedLocked()
			c.mu.Unlock()
			d.log.Info("cluster created", "vip", s.VIP, "interface", s.Interface, "mode", s.Mode,
				"total", s.TotalNodes, "nodes", s.LocalNodes.String(), "tap", dp.TapName())
			return nil
		}
		c.stopChecks()
		dp.Close()
	}
	d.releaseInterface(s.Interface, s.VIP.Is6())
	return err
}

// nodeName names this node to the other nodes' flood checks: its member
// name, or without --peers its host name.
func (d *Daemon) nodeName() string {
	if d.ms != nil {
		return d.ms.Name()
	}
	if d.opts.NodeName != "" {
		return d.opts.NodeName
	}
	name, _ := os.Hostname()
	return name
}

// deleteCluster stops and removes a cluster. Its datapath closes without
// d.mu held (removing a TAP takes the kernel a few milliseconds, and a
// stopping daemon closes its clusters side by side); until it has, the VIP
// cannot be created again.
func (d *Daemon) deleteCluster(vip netip.Addr) error {
	d.mu.Lock()
	c, ok := d.clusters[vip]
	if !ok {
		d.mu.Unlock()
		return fmt.Errorf("VIP %s: no such cluster", vip)
	}
	delete(d.clusters, vip)
	d.deleting[vip] = true
	d.mu.Unlock()
	c.stopChecks()
	c.mu.Lock() // let a running reconcile finish before the datapath goes
	err := errors.Join(d.ctl.Remove(vip.String()), c.dp.Close())
	if c.notified != 0 {
		c.hooks.serving(vip.String(), c.notified.String(), "")
	}
	c.mu.Unlock()
	d.mu.Lock()
	err = errors.Join(err, d.releaseInterface(c.spec.Interface, c.spec.VIP.Is6()))
	delete(d.deleting, vip)
	d.mu.Unlock()
	d.kick()
	d.log.Info("cluster deleted", "vip", vip)
	return err
}

// ifaceFamily is an interface as clusters of one family use it: each
// family has its own settings.
type ifaceFamily struct {
	name string
	v6   bool
}

// useInterface records one more cluster of family v6 on iface, applying the
// family's settings for the first, and following the link from the first
// of either family. Callers hold d.mu.
func (d *Daemon) useInterface(iface string, v6 bool) error {
	k := ifaceFamily{iface, v6}
	if d.ifaceUsers[k] == 0 {
		if err := applyInterfaceSettings(d.journal, iface, v6); err != nil {
			restoreInterfaceSettings(d.journal, iface, v6)
			return err
		}
	}
	if _, ok := d.links[iface]; !ok {
		st := readLink(iface)
		st.since = time.Now()
		d.links[iface] = st
	}
	d.ifaceUsers[k]++
	return nil
}

// releaseInterface drops one cluster's use of iface and restores its
// family's settings when no cluster of that family uses it any more.
// Callers hold d.mu.
func (d *Daemon) releaseInterface(iface string, v6 bool) error {
	k := ifaceFamily{iface, v6}
	d.ifaceUsers[k]--
	if d.ifaceUsers[k] > 0 {
		return nil
	}
	delete(d.ifaceUsers, k)
	if d.ifaceUsers[ifaceFamily{iface, !v6}] == 0 {
		delete(d.links, iface)
	}
	return restoreInterfaceSettings(d.journal, iface, v6)
}

// reapplyInterfaceSettings applies again the settings of every family whose
// clusters use iface: after the interface came back. Callers hold d.mu.
func (d *Daemon) reapplyInterfaceSettings(iface string) error {
	var errs []error
	for _, v6 := range []bool{false, true} {
		if d.ifaceUsers[ifaceFamily{iface, v6}] > 0 {
			errs = append(errs, applyInterfaceSettings(d.journal, iface, v6))
		}
	}
	return errors.Join(errs...)
}

func (d *Daemon) status() *Status {
	var members []membership.Member
	st := &Status{Schema: StatusSchema, Version: buildinfo.Version(), Problems: []string{}, Clusters: []ClusterStatus{}}
	if d.ms != nil {
		members = d.ms.Members()
		st.Node = d.ms.Name()
		if c, ok := d.ms.NameConflict(); ok {
			st.Problems = append(st.Problems, fmt.Sprintf("member name conflict: the node at %s also calls itself %q (last seen %s); it was refused and must get its own --node-name",
				c.Addr, c.Name, c.At.Format(time.TimeOnly)))
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, vip := range d.vipsLocked() {
		cs := d.clusters[vip].status(members, d.retired[vip].stats)
		cs.Problems = append(slices.Clone(st.Problems), cs.Problems...)
		st.Clusters = append(st.Clusters, cs)
	}
	return st
}

// vipsLocked returns the clusters' VIPs in order. Callers hold d.mu.
func (d *Daemon) vipsLocked() []netip.Addr {
	vips := make([]netip.Addr, 0, len(d.clusters))
	for vip := range d.clusters {
		vips = append(vips, vip)
	}
	sort.Slice(vips, func(i, j int) bool { return vips[i].Less(vips[j]) })
	return vips
}

// save renders the running clusters as a config file.
func (d *Daemon) save() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	specs := make([]Spec, 0, len(d.clusters))
	for _, vip := range d.vipsLocked() {
		specs = append(specs, d.clusters[vip].savedSpec())
	}
	return FormatConfig(specs)
}

// drain hands this node's numbers of a cluster to the others (or takes them
// back), keeping the connections it has. With a timeout, connections still
// open after it are dropped.
//
// timeout nil keeps the one a drain already in progress has.
func (d *Daemon) drain(vip netip.Addr, on bool, timeout *time.Duration) error {
	op := "resume"
	if on {
		op = "drain"
	}
	if d.ms == nil {
		return fmt.Errorf("%s needs a daemon with --peers: without membership no other node would take over", op)
	}
	if timeout != nil && *timeout < 0 {
		return fmt.Errorf("--timeout %s: must not be negative", *timeout)
	}
	d.mu.Lock()
	c, ok := d.clusters[vip]
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("VIP %s: no such cluster", vip)
	}
	c.mu.Lock()
	switch {
	case !on:
		c.fo.drainEnd = time.Time{}
	case timeout != nil && *timeout > 0:
		c.fo.drainEnd = time.Now().Add(*timeout)
	case timeout != nil || !c.fo.draining:
		c.fo.drainEnd = time.Time{}
	}
	c.fo.draining = on
	end := c.fo.drainEnd
	c.mu.Unlock()
	if on && !end.IsZero() {
		c.log.Info("drain", "until", end.Format(time.TimeOnly))
	} else {
		c.log.Info(op)
	}
	d.kick()
	return nil
}

// memberHooks tells the hooks which members went up or down since they
// last heard. Only the failover loop calls it.
func (d *Daemon) memberHooks(me string, members []membership.Member) {
	now := map[string]string{}
	for _, m := range members {
		if m.Name != me && m.Live() {
			now[m.Name] = m.Addr
		}
	}
	for name, addr := range now {
		if _, ok := d.live[name]; !ok {
			d.hooks.member(true, name, addr)
		}
	}
	for name, addr := range d.live {
		if _, ok := now[name]; !ok {
			d.hooks.member(false, name, addr)
		}
	}
	d.live = now
}

// kick asks the failover loop to reconcile now.
func (d *Daemon) kick() {
	select {
	case d.kickCh <- struct{}{}:
	default:
	}
}

// failoverLoop reconciles every cluster whenever the membership changes, a
// peer releases a number, an operator or health check changes something, and
// on a short tick for handoff timers and kept-flow counts.
func (d *Daemon) failoverLoop(ctx context.Context) {
	start := time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		d.beats.failover.Store(time.Now().UnixNano())
		select {
		case <-ctx.Done():
			return
		case <-d.ms.Changes():
		case <-d.kickCh:
		case <-tick.C:
		case msg := <-d.ms.Messages():
			d.released(msg)
		}
		// Until it has met a peer, and heard from every live one, a node
		// cannot know who serves what, and taking numbers that live peers
		// serve would answer their clients twice. It still says what it
		// has, so that the others can start handing its numbers over.
		alone := d.opts.Membership.AloneAfter
		ready := d.ms.Joined() || (alone > 0 && time.Since(start) >= alone)
		d.reconcileAll(ready)
	}
}

func (d *Daemon) released(msg []byte) {
	r, err := parseReleaseMessage(msg)
	if err != nil {
		d.log.Warn("gossip message ignored", "err", err, "bytes", len(msg))
		return
	}
	d.mu.Lock()
	c := d.clusters[r.VIP]
	d.mu.Unlock()
	if c == nil {
		return
	}
	c.mu.Lock()
	c.fo.received(r, time.Now())
	c.mu.Unlock()
}

func (d *Daemon) reconcileAll(ready bool) {
	me := d.ms.Name()
	members := d.ms.Members()
	d.memberHooks(me, members)
	for _, m := range members {
		if m.Name != me && m.Live() && m.Pending {
			ready = false
		}
	}
	d.mu.Lock()
	clusters := make([]*cluster, 0, len(d.clusters))
	for _, c := range d.clusters {
		clusters = append(clusters, c)
	}
	d.mu.Unlock()
	sort.Slice(clusters, func(i, j int) bool { return clusters[i].spec.VIP.Less(clusters[j].spec.VIP) })

	// This node's own entry is what it decides now, not what it gossiped last.
	local := make([]membership.ClusterState, 0, len(clusters))
	for _, c := range clusters {
		c.mu.Lock()
		local = append(local, c.fo.localState(c.spec.VIP))
		c.mu.Unlock()
	}
	for i := range members {
		if members[i].Name == me {
			members[i].Clusters = local
		}
	}
	now := time.Now()
	states := make([]membership.ClusterState, 0, len(clusters))
	var releases []release
	// One reading of the socket table before the round's first policy
	// swap, and one after its last, whatever the number of clusters moved.
	sockets := datapath.NewSocketReader(d.log)
	type adoption struct {
		c       *cluster
		numbers nodeset.NodeSet
	}
	var again []adoption
	for _, c := range clusters {
		c.mu.Lock()
		switch {
		case c.dp.Closed():
		case ready:
			st, r, adopt := c.reconcile(me, members, now, sockets)
			states = append(states, st)
			releases = append(releases, r...)
			if adopt != 0 {
				again = append(again, adoption{c, adopt})
			}
		default:
			states = append(states, c.fo.localState(c.spec.VIP))
		}
		c.mu.Unlock()
	}
	if len(again) > 0 {
		after := datapath.ReadSocketTable(d.log)
		for _, a := range again {
			a.c.dp.AdoptAfter(after, a.numbers)
		}
	}
	// The datapaths stopped serving what they release: the messages may
	// go before the gossip, which they should beat (the receiver waits a
	// little for them when it does not). Reliably, since the receiver
	// answers the connections it held only with the list a message
	// carries; and off the loop, as a peer that just died could take the
	// stream timeout to refuse.
	for _, r := range releases {
		go func() {
			if err := d.ms.SendReliable(r.to, r.msg); err != nil {
				d.log.Warn("release message", "to", r.to, "err", err)
			}
		}()
	}
	if err := d.ms.Publish(states); err != nil {
		d.log.Warn("publish state", "err", err)
	}
}
