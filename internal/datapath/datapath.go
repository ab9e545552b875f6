package datapath

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/nodeset"
	"golang.org/x/sys/unix"
)

// Config is what one cluster's datapath needs: the fields of `clusterctl new`.
type Config struct {
	VIP        netip.Addr
	Interface  string
	ClusterMAC net.HardwareAddr
	MACMode    MACMode // how the cluster MAC reaches the node (see MACMode)
	// NodeName names this node in the flood check's hellos and probes.
	NodeName string
	// OnFlood, if set, hears each change of the flood check's report
	// (see flood.go), from the datapath's own goroutine.
	OnFlood func(FloodReport)
	Hash    hash.Config
	// Workers is how many readers the interface's capture group has, and
	// so how many queues the TAP has; 0: one per CPU. The first cluster
	// on an interface sets it for the group.
	Workers int
	// KernelPath lets the kernel answer the settled numbers' packets itself
	// (see kernelPath) when it can; without it, or when the kernel refuses
	// the program, every answered packet goes through user space.
	KernelPath bool
}

// Stats counts what the datapath did with the frames it captured.
type Stats struct {
	Owned       uint64 // packets handed to the local stack through the TAP
	KernelTaken uint64 // frames the kernel path handed to the local stack
	NotOwned    uint64 // packets that reached user space and were not answered here
	Held        uint64 // packets held while their number moved here (see Datapath.TakeOver)
	Malformed   uint64 // frames that failed validation
	ARPReplies  uint64
	NDReplies   uint64 // neighbour advertisements answering solicitations
	HeldFrags   uint64 // fragments held until their first fragment came
	DroppedFrag uint64 // fragments dropped: table full or owner never known
	TapErrors   uint64
}

// Add adds o's counters to s.
func (s *Stats) Add(o Stats) {
	s.Owned += o.Owned
	s.KernelTaken += o.KernelTaken
	s.NotOwned += o.NotOwned
	s.Held += o.Held
	s.Malformed += o.Malformed
	s.ARPReplies += o.ARPReplies
	s.NDReplies += o.NDReplies
	s.HeldFrags += o.HeldFrags
	s.DroppedFrag += o.DroppedFrag
	s.TapErrors += o.TapErrors
}

// Policy is what this node answers for, swapped whole so that each packet
// sees one consistent version.
type Policy struct {
	Serve nodeset.NodeSet // numbers whose new connections are answered here
	// The rest matters only with Track, for automatic failover.
	Guarded nodeset.NodeSet // numbers another live node serves or holds connections for
	Observe nodeset.NodeSet // numbers moving here: their connections are the other node's
	// Hold is the part of Observe whose handoff has begun on the other
	// node: packets opening new connections are held, not dropped, until
	// TakeOver says whether that node answered them.
	Hold     nodeset.NodeSet
	Keep     nodeset.NodeSet // numbers no longer served whose connections this node keeps
	Leaving  nodeset.NodeSet // numbers still served while being handed to another node
	Track    bool            // keep a flow table, so connections survive moves
	DropKept bool            // forget connections of numbers no longer served (drain timeout)
}

// pass is the set of numbers whose packets must reach user space, unless
// the kernel path takes them.
func (p *Policy) pass() nodeset.NodeSet { return p.Serve | p.Observe | p.Keep }

// settled is the set of numbers every packet of which p answers here, so
// that the kernel path may take them: with flow tracking, served numbers
// that no other live node holds connections of, none of which are moving
// here, and that are not being handed off. A number leaving this set has its
// connections read from the socket table (adoptConnections).
func (p *Policy) settled() nodeset.NodeSet {
	if !p.Track {
		return p.Serve
	}
	return p.Serve &^ (p.Guarded | p.Observe | p.Leaving)
}

// kernelProtocols is what the kernel path may take under p: everything but
// ICMP, and with flow tracking it records the connectionless flows it
// takes, so that they can be read back as TCP connections are from the
// socket table.
func (p *Policy) kernelProtocols() kernelProtos {
	if p.Track {
		return kernelAllRecorded
	}
	return kernelAllButICMP
}

// FlowStats describes the flow table, as of its last sweep.
type FlowStats struct {
	Tracked     int             `json:"tracked"`
	Kept        int             `json:"kept"`    // connections of numbers served elsewhere now
	Foreign     int             `json:"foreign"` // other nodes' connections, not answered here
	Untracked   uint64          `json:"untracked"`
	Evicted     uint64          `json:"evicted"` // flows seen only in packets that gave way to others in a full table
	Held        int             `json:"held"`    // packets held for numbers moving here
	KeptNumbers nodeset.NodeSet `json:"kept_numbers"`
	SweptAt     time.Time       `json:"swept_at"`
}

// FlowSweepInterval is how often idle flows are forgotten and the kept
// numbers recounted; a handoff ends at most this long after its last kept
// connection does.
const FlowSweepInterval = 250 * time.Millisecond

// Datapath is one running cluster on this node: a TAP that holds the VIP,
// and, while the interface exists, the capture sockets and the kernel path
// attached to it. The interface can go and come back (a veth or bond
// rebuilt, a driver reloaded): Detach and Attach follow it, keeping the
// TAP, the policy and the flow table.
type Datapath struct {
	cfg   Config
	v6    bool    // the VIP is IPv6
	vip   addr    // the VIP as packets are keyed (IPv4 mapped)
	vip4  [4]byte // an IPv4 VIP as ARP and the kernel path want it
	tap   *tapDevice
	owner Owner
	log   *slog.Logger

	policy   atomic.Pointer[Policy]
	filterMu sync.Mutex      // serializes filter swaps and attachment; guards the fields below
	filtered nodeset.NodeSet // numbers the capture filter passes now
	att      *attachment     // nil while detached
	kernel   *kernelPath
	retired  Stats // counters of kernel paths of earlier attachments

	stats     counters
	lanes     []lane       // per reader of the capture group
	floodNext atomic.Int64 // when the flood check next sends (Unix ns)
	floodSeq  atomic.Uint32

	flows  *flowTable
	flowSt atomic.Pointer[FlowStats]
	// servingSince is when each number last began to be served here.
	servingSince [nodeset.Max + 1]atomic.Int64
	// late counts held packets answered by TakeOver.
	late  counters
	flood floodWatch

	sweeping  sync.WaitGroup
	closing   atomic.Bool
	stop      chan struct{}
	closeOnce sync.Once
}

// attachment is what the datapath has on one incarnation of its interface.
type attachment struct {
	ifi     *net.Interface
	capture *captureGroup
	groups  []int // sockets holding IP multicast groups: an IPv6 VIP's solicited-node group, igmp mode's group
}

// closeGroups leaves the multicast groups the attachment joined on
// sockets of their own.
func (a *attachment) closeGroups() {
	for _, fd := range a.groups {
		unix.Close(fd)
	}
	a.groups = nil
}

// Open creates the TAP and attaches to the interface (see Attach). The
// interface's sysctls are the caller's business: they are shared by every
// cluster on the interface.
func Open(cfg Config, nodes nodeset.NodeSet, log *slog.Logger) (*Datapath, error) {
	if !cfg.VIP.IsValid() || cfg.VIP.Zone() != "" || cfg.VIP.Is4In6() {
		return nil, fmt.Errorf("datapath: VIP %s: want an IPv4 or IPv6 address without zone", cfg.VIP)
	}
	if err := cfg.Hash.Validate(); err != nil {
		return nil, fmt.Errorf("datapath: %w", err)
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.NumCPU()
	}
	d := &Datapath{
		cfg:   cfg,
		v6:    cfg.VIP.Is6(),
		vip:   cfg.VIP.As16(),
		owner: Owner{Hash: cfg.Hash},
		flows: newFlowTable(DefaultMaxFlows),
		lanes: make([]lane, cfg.Workers),
		stop:  make(chan struct{}),
		log:   log.With("vip", cfg.VIP.String()),
	}
	if !d.v6 {
		d.vip4 = cfg.VIP.As4()
	}
	d.policy.Store(&Policy{Serve: nodes})
	d.filtered = nodes
	d.flowSt.Store(&FlowStats{})
	var err error
	if d.tap, err = openTap(TapName(cfg.VIP), cfg.VIP, cfg.Workers); err != nil {
		return nil, err
	}
	if err := d.Attach(); err != nil {
		d.tap.close()
		return nil, err
	}
	d.sweeping.Add(1)
	go d.sweep()
	return d, nil
}

// Attach joins the capture group of the interface as it is now (by its
// current index), attaches the kernel path and announces the VIP. It
// detaches first from an earlier incarnation of the interface, if any.
func (d *Datapath) Attach() error {
	d.filterMu.Lock()
	defer d.filterMu.Unlock()
	if d.closing.Load() {
		return fmt.Errorf("datapath %s: closed", d.cfg.VIP)
	}
	d.detachLocked()
	ifi, err := InterfaceByName(d.cfg.Interface)
	if err != nil {
		return fmt.Errorf("interface %s: %w", d.cfg.Interface, err)
	}
	a := &attachment{ifi: ifi}
	fail := func(err error) error {
		a.closeGroups()
		return err
	}
	if d.v6 {
		// Neighbours solicit the VIP at its solicited-node group: join it
		// as the stack would, so that MLD-snooping switches forward it.
		sn, _ := SolicitedNode(d.cfg.VIP)
		fd, err := joinGroup(ifi, sn)
		if err != nil {
			return fail(err)
		}
		a.groups = append(a.groups, fd)
	}
	if d.cfg.MACMode == MACIGMP {
		group, ok := IGMPGroup(d.cfg.ClusterMAC, d.v6)
		if !ok {
			return fail(fmt.Errorf("igmp mode: cluster MAC %s is not mapped from a group", d.cfg.ClusterMAC))
		}
		fd, err := joinGroup(ifi, group)
		if err != nil {
			return fail(err)
		}
		a.groups = append(a.groups, fd)
	}
	if a.capture, err = attachCapture(d, ifi, uint64(d.filtered)); err != nil {
		return fail(err)
	}
	d.floodNext.Store(0)
	d.att = a
	if d.cfg.KernelPath {
		if d.kernel, err = openKernelPath(ifi.Index, d.cfg.VIP, d.cfg.ClusterMAC, d.cfg.Hash); err != nil {
			d.log.Warn("serving in user space only", "err", err)
			d.kernel = nil
		} else {
			p := d.policy.Load()
			d.setKernel(p.settled(), d.filtered, p.kernelProtocols())
			// User space no longer sees their TCP packets.
			d.flows.forget(p.settled(), protoTCP)
		}
	}
	if err := d.announceLocked(); err != nil {
		d.log.Warn("announcing the VIP failed", "err", err)
	}
	return nil
}

// Detach leaves the interface: the capture group stops handing this
// cluster frames (and closes with its last cluster), the multicast
// memberships go, the kernel path forgets the cluster. The TAP, the VIP,
// the policy and the flow table stay, for Attach.
func (d *Datapath) Detach() {
	d.filterMu.Lock()
	defer d.filterMu.Unlock()
	d.detachLocked()
}

func (d *Datapath) detachLocked() {
	if d.kernel != nil {
		d.retired.KernelTaken += d.kernel.taken()
		if err := d.kernel.close(); err != nil {
			d.log.Debug("kernel path close", "err", err)
		}
		d.kernel = nil
	}
	a := d.att
	if a == nil {
		return
	}
	d.att = nil
	a.capture.remove(d)
	a.closeGroups()
}

// Nodes returns the node numbers this node answers for.
func (d *Datapath) Nodes() nodeset.NodeSet { return d.policy.Load().Serve }

// SetNodes makes this node answer for exactly s, as the kernel target did;
// the next packet sees the new set.
func (d *Datapath) SetNodes(s nodeset.NodeSet) { d.SetPolicy(Policy{Serve: s}) }

// SetPolicy replaces what this node answers for; the next packet sees it.
// When the numbers that must reach user space change, the cluster's entry
// in the capture filter's map is updated: widened before the policy
// changes, narrowed after, so that no packet the new policy accepts is
// filtered out on the way. Its entry in the kernel path's map is updated in
// between; the capture filter leaves out whatever the kernel path took (see
// program), so a number moves between the two paths at one instant, with
// no packet lost or answered twice.
func (d *Datapath) SetPolicy(p Policy) {
	if again := d.SetPolicyShared(p, NewSocketReader(d.log)); again != 0 {
		d.AdoptAfter(ReadSocketTable(d.log), again)
	}
}

// SetPolicyShared is SetPolicy for a round that moves many clusters: the
// connections it must know before the swap come from before, one reading
// for the round, and it returns the numbers whose connections must be read
// again after the swap (those opened in between). Pass them to AdoptAfter
// with a reading taken after the round's last swap; until then, a packet
// of such a connection that the kernel path no longer takes is judged as
// one of a connection never seen.
func (d *Datapath) SetPolicyShared(p Policy, before *SocketReader) (again nodeset.NodeSet) {
	d.filterMu.Lock()
	defer d.filterMu.Unlock()
	now := time.Now().UnixNano()
	prev := d.policy.Load()
	for _, n := range (p.Serve &^ prev.Serve).Nodes() {
		d.servingSince[n].Store(now)
	}
	var inKernel, toKernel nodeset.NodeSet
	if d.kernel != nil {
		inKernel, toKernel = d.kernel.set, p.settled()
	}
	// Connections the kernel path served are unknown to the flow table;
	// it must know them before user space judges their packets. And the
	// connections of a number being handed off are read from the socket
	// table too, so that they are known for certain (a flood of spoofed
	// flows cannot push them out) while the handoff lasts.
	leaving, entering := inKernel&^toKernel, toKernel&^inKernel
	adopt := leaving | (p.Leaving &^ prev.Leaving)
	if p.Track && adopt != 0 {
		d.adoptConnections(before.Table(), adopt, now)
	}
	old, want := d.filtered, p.pass()
	if want&^old != 0 {
		d.setFilters(old | want)
	}
	d.policy.Store(&p)
	if d.kernel != nil {
		d.setKernel(toKernel, d.filtered, p.kernelProtocols())
	}
	if old|want != want {
		d.setFilters(want)
	}
	if entering != 0 {
		// User space sees no more of their TCP packets: flows it tracked
		// would only go stale. adoptConnections reads them back if needed.
		d.flows.forget(entering, protoTCP)
	}
	// A handoff to this node that ended without it taking the number.
	d.flows.dropHeld(prev.Hold &^ p.Hold &^ p.Serve)
	if p.Track {
		return adopt
	}
	return 0
}

// AdoptAfter enters the connections of numbers in t, a reading of the
// socket table taken after SetPolicyShared swapped the policy that
// returned them: those opened between the first reading and the swap.
func (d *Datapath) AdoptAfter(t *SocketTable, numbers nodeset.NodeSet) {
	d.filterMu.Lock()
	defer d.filterMu.Unlock()
	d.adoptConnections(t, numbers, time.Now().UnixNano())
}

func (d *Datapath) setFilters(pass nodeset.NodeSet) {
	// The kernel path drops the frames of numbers it neither takes nor
	// leaves to user space: it leaves both the old and the new set while
	// the capture filter changes, and then the new one.
	if d.kernel != nil {
		d.setKernel(d.kernel.set, d.filtered|pass, d.kernel.protos)
	}
	var err error
	if d.att != nil {
		err = d.att.capture.setPass(d, uint64(pass))
	}
	if err != nil {
		if !d.closing.Load() {
			d.log.Error("swap capture filter", "pass", pass.String(), "err", err)
		}
		return
	}
	d.filtered = pass
	if d.kernel != nil {
		d.setKernel(d.kernel.set, pass, d.kernel.protos)
	}
}

// setKernel changes what the kernel path takes and what it leaves to user
// space (see kernelPath.update). If the kernel refuses, the kernel path is
// detached, and user space answers everything from then on.
func (d *Datapath) setKernel(set, pass nodeset.NodeSet, protos kernelProtos) {
	if err := d.kernel.update(set, pass, protos); err != nil {
		d.log.Error("kernel path: serving in user space only from now", "err", err)
		d.kernel.close()
		d.kernel = nil
	}
}

// Stalled names a reader that has not come round its loop for longer than
// maxAge (readers do at least every readTimeout, frames or not), or
// returns "" when every one has.
func (d *Datapath) Stalled(maxAge time.Duration) string {
	d.filterMu.Lock()
	defer d.filterMu.Unlock()
	if d.att == nil {
		return ""
	}
	if why := d.att.capture.stalled(maxAge); why != "" {
		return fmt.Sprintf("VIP %s: %s", d.cfg.VIP, why)
	}
	return ""
}

// KernelPath returns the numbers the kernel path takes now, and whether it
// is attached at all.
func (d *Datapath) KernelPath() (nodeset.NodeSet, bool) {
	d.filterMu.Lock()
	defer d.filterMu.Unlock()
	if d.kernel == nil {
		return 0, false
	}
	return d.kernel.set, true
}

// switchGap is how long before this node took a number a SYN nobody answered
// may have been first seen: the time a release message takes to arrive.
const switchGap = 100 * time.Millisecond

// ForgetQuiet forgets this node's connectionless flows of number node that
// have been silent since before since, when it gives node up with no
// receiver to tell: a node that takes the number later would take their
// next packets for new flows.
func (d *Datapath) ForgetQuiet(node int, since time.Time) {
	d.flows.forgetQuiet(uint8(node), since.UnixNano())
}

// maxReleaseFlows bounds the flows one release lists: past it quiet flows
// are forgotten, and past it with active ones alone the list is marked
// incomplete and the receiver answers nothing it held.
const maxReleaseFlows = 1 << 14

// KeptFlows lists the flows of number node this node keeps after giving it
// up, as a release tells the receiving node (see flowTable.kept); cutoff is
// when the handoff began. Call it after the policy that stops serving node
// is in place, and send the list at once: it then holds every flow this
// node ever answered for it since cutoff, and every connectionless flow
// quiet since (the kernel path's included, read when the number left it),
// whose idle time starts again now. complete is false when the list cannot
// be trusted whole.
func (d *Datapath) KeptFlows(node int, cutoff time.Time) (ids []FlowID, complete bool) {
	return d.flows.kept(uint8(node), cutoff.UnixNano(), time.Now().UnixNano(), maxReleaseFlows)
}

// flowSet is ids as a set; nil (no complete list) stays nil.
func flowSet(ids []FlowID) map[FlowID]bool {
	if ids == nil {
		return nil
	}
	set := make(map[FlowID]bool, len(ids))
	for _, id := range ids {
		set[id] = true
	}
	return set
}

// TakeOver ends the handoff of number node to this node, which must serve
// it already: the packets it held for connections that the node giving the
// number up did not answer (those not in theirs, its kept flows) are
// answered now, and become this node's connections. With theirs nil (no
// complete release), the held packets are dropped: the clients retransmit.
// It returns how many packets it answered.
func (d *Datapath) TakeOver(node int, theirs []FlowID) int {
	answer := d.flows.settle(uint8(node), flowSet(theirs), time.Now().UnixNano())
	for _, b := range answer {
		d.deliverLate(b)
	}
	return len(answer)
}

// deliverLate hands a held packet to the local stack through the first
// TAP queue (a worker writes to it concurrently; a TAP takes whole packets
// per write).
func (d *Datapath) deliverLate(b []byte) {
	d.tap.deliver(d.tap.queues[0], b, &d.late)
}

// Config returns the configuration the datapath was opened with.
func (d *Datapath) Config() Config { return d.cfg }

// TapName returns the name of the cluster's TAP device.
func (d *Datapath) TapName() string { return d.tap.name }

// Stats returns the counters summed over the workers, these and those of
// earlier attachments.
func (d *Datapath) Stats() Stats {
	d.filterMu.Lock()
	defer d.filterMu.Unlock()
	s := d.retired
	d.late.addTo(&s)
	d.stats.addTo(&s)
	for i := range d.lanes {
		if t := d.lanes[i].frags.Load(); t != nil {
			s.DroppedFrag += t.evicted.Load()
		}
	}
	if d.kernel != nil {
		s.KernelTaken += d.kernel.taken()
	}
	return s
}

// Flows describes the flow table as of its last sweep.
func (d *Datapath) Flows() FlowStats { return *d.flowSt.Load() }

// sweep ages the flow table and counts it, and keeps the coarse clock.
func (d *Datapath) sweep() {
	defer d.sweeping.Done()
	t := time.NewTicker(FlowSweepInterval)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case now := <-t.C:
			pol := d.policy.Load()
			c := d.flows.sweep(now.UnixNano(), pol.Serve, pol.DropKept)
			d.flowSt.Store(&FlowStats{Tracked: c.tracked, Kept: c.kept, Foreign: c.foreign, Held: c.held,
				Untracked: c.untracked, Evicted: c.evicted, KeptNumbers: c.keptNumbers, SweptAt: now})
		}
	}
}

// Announce sends a gratuitous ARP (for IPv6, an unsolicited neighbour
// advertisement to all nodes) so that neighbours that cached another MAC
// for the VIP move to the cluster MAC.
func (d *Datapath) Announce() error {
	d.filterMu.Lock()
	defer d.filterMu.Unlock()
	return d.announceLocked()
}

func (d *Datapath) announceLocked() error {
	if d.att == nil {
		return fmt.Errorf("announce %s: interface %s not attached", d.cfg.VIP, d.cfg.Interface)
	}
	w := d.att.capture.sender(d.v6)
	if w == nil {
		return fmt.Errorf("announce %s: no socket to send on", d.cfg.VIP)
	}
	var err error
	if d.v6 {
		err = w.send(unsolicitedAdvertFrame(d.att.ifi.HardwareAddr, d.vip, d.cfg.ClusterMAC), allNodesMAC)
	} else {
		var f []byte
		f, err = arpFrame(broadcastMAC, d.att.ifi.HardwareAddr, arpOpRequest, d.cfg.ClusterMAC, d.vip4, make(net.HardwareAddr, 6), d.vip4)
		if err == nil {
			err = w.send(f, broadcastMAC)
		}
	}
	if err != nil {
		return fmt.Errorf("announce %s: %w", d.cfg.VIP, err)
	}
	return nil
}

// Closed tells whether Close has been called.
func (d *Datapath) Closed() bool { return d.closing.Load() }

// Close detaches from the interface and removes the TAP (and with it the
// VIP).
func (d *Datapath) Close() error {
	var err error
	d.closeOnce.Do(func() {
		d.closing.Store(true)
		d.Detach()
		close(d.stop)
		d.sweeping.Wait()
		err = d.tap.close()
	})
	return err
}
