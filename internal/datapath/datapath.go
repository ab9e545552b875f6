package datapath

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/nodeset"
)

// Config is what one cluster's datapath needs: the fields of `clusterctl new`.
type Config struct {
	VIP        netip.Addr
	Interface  string
	ClusterMAC net.HardwareAddr
	Hash       hash.Config
}

// Stats counts what the datapath did with the frames it captured.
type Stats struct {
	Owned       uint64 // IPv4 packets handed to the local stack
	NotOwned    uint64 // IPv4 packets another node answers
	Malformed   uint64 // frames that failed validation
	ARPReplies  uint64
	HeldFrags   uint64 // fragments held until their first fragment came
	DroppedFrag uint64 // fragments dropped: table full or owner never known
	TapErrors   uint64
}

// Policy is what this node answers for, swapped whole so that each packet
// sees one consistent version.
type Policy struct {
	Serve nodeset.NodeSet // numbers whose new connections are answered here
	// The rest matters only with Track, for automatic failover.
	Guarded  nodeset.NodeSet // numbers another live node serves or holds connections for
	Observe  nodeset.NodeSet // numbers moving here: their connections are the other node's
	Track    bool            // keep a flow table, so connections survive moves
	DropKept bool            // forget connections of numbers no longer served (drain timeout)
}

// FlowStats describes the flow table, as of its last sweep.
type FlowStats struct {
	Tracked     int             `json:"tracked"`
	Kept        int             `json:"kept"`    // connections of numbers served elsewhere now
	Foreign     int             `json:"foreign"` // other nodes' connections, not answered here
	Untracked   uint64          `json:"untracked"`
	KeptNumbers nodeset.NodeSet `json:"kept_numbers"`
	SweptAt     time.Time       `json:"swept_at"`
}

// FlowSweepInterval is how often idle flows are forgotten and the kept
// numbers recounted; a handoff ends at most this long after its last kept
// connection does.
const FlowSweepInterval = 250 * time.Millisecond

type counters struct {
	owned, notOwned, malformed, arpReplies, heldFrags, droppedFrag, tapErrors atomic.Uint64
}

// Datapath is one running cluster on this node.
type Datapath struct {
	cfg    Config
	vip    [4]byte
	ifi    *net.Interface
	sock   *captureSocket
	tap    *tapDevice
	owner  Owner
	policy atomic.Pointer[Policy]
	flows  *flowTable
	flowSt atomic.Pointer[FlowStats]
	now    atomic.Int64 // coarse clock for flow timestamps, set by the sweeper
	frags  *fragTable
	stats  counters
	log    *slog.Logger

	wg        sync.WaitGroup
	closing   atomic.Bool
	stop      chan struct{}
	closeOnce sync.Once
}

// Open creates the TAP, opens the capture socket, starts the reader and
// announces the VIP. The interface's sysctls are the caller's business: they
// are shared by every cluster on the interface.
func Open(cfg Config, nodes nodeset.NodeSet, log *slog.Logger) (*Datapath, error) {
	if !cfg.VIP.Is4() {
		return nil, fmt.Errorf("datapath: VIP %s is not IPv4", cfg.VIP)
	}
	if err := cfg.Hash.Validate(); err != nil {
		return nil, fmt.Errorf("datapath: %w", err)
	}
	ifi, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", cfg.Interface, err)
	}
	d := &Datapath{
		cfg:   cfg,
		vip:   cfg.VIP.As4(),
		ifi:   ifi,
		owner: Owner{Hash: cfg.Hash},
		frags: newFragTable(),
		flows: newFlowTable(DefaultMaxFlows),
		stop:  make(chan struct{}),
		log:   log.With("vip", cfg.VIP.String()),
	}
	d.SetNodes(nodes)
	d.flowSt.Store(&FlowStats{})
	d.now.Store(time.Now().UnixNano())
	if d.tap, err = openTap(TapName(cfg.VIP), cfg.VIP); err != nil {
		return nil, err
	}
	if d.sock, err = openCaptureSocket(ifi, cfg.VIP, cfg.ClusterMAC); err != nil {
		d.tap.close()
		return nil, err
	}
	d.wg.Add(2)
	go d.receive()
	go d.sweep()
	if err := d.Announce(); err != nil {
		d.log.Warn("gratuitous ARP failed", "err", err)
	}
	return d, nil
}

// Nodes returns the node numbers this node answers for.
func (d *Datapath) Nodes() nodeset.NodeSet { return d.policy.Load().Serve }

// SetNodes makes this node answer for exactly s, as the kernel target did;
// the next packet sees the new set.
func (d *Datapath) SetNodes(s nodeset.NodeSet) { d.SetPolicy(Policy{Serve: s}) }

// SetPolicy replaces what this node answers for; the next packet sees it.
func (d *Datapath) SetPolicy(p Policy) { d.policy.Store(&p) }

// Flows describes the flow table as of its last sweep.
func (d *Datapath) Flows() FlowStats { return *d.flowSt.Load() }

// sweep ages the flow table and counts it, and keeps the coarse clock.
func (d *Datapath) sweep() {
	defer d.wg.Done()
	t := time.NewTicker(FlowSweepInterval)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case now := <-t.C:
			d.now.Store(now.UnixNano())
			pol := d.policy.Load()
			d.flows.mu.Lock()
			c := d.flows.sweep(now.UnixNano(), pol.Serve, pol.DropKept)
			untracked := d.flows.untracked
			d.flows.mu.Unlock()
			d.flowSt.Store(&FlowStats{Tracked: c.tracked, Kept: c.kept, Foreign: c.foreign,
				Untracked: untracked, KeptNumbers: c.keptNumbers, SweptAt: now})
		}
	}
}

// Config returns the configuration the datapath was opened with.
func (d *Datapath) Config() Config { return d.cfg }

// TapName returns the name of the cluster's TAP device.
func (d *Datapath) TapName() string { return d.tap.name }

// Stats returns a snapshot of the counters.
func (d *Datapath) Stats() Stats {
	return Stats{
		Owned:       d.stats.owned.Load(),
		NotOwned:    d.stats.notOwned.Load(),
		Malformed:   d.stats.malformed.Load(),
		ARPReplies:  d.stats.arpReplies.Load(),
		HeldFrags:   d.stats.heldFrags.Load(),
		DroppedFrag: d.stats.droppedFrag.Load(),
		TapErrors:   d.stats.tapErrors.Load(),
	}
}

// Announce sends a gratuitous ARP so that neighbours that cached another MAC
// for the VIP move to the cluster MAC.
func (d *Datapath) Announce() error {
	f, err := arpFrame(broadcastMAC, d.ifi.HardwareAddr, arpOpRequest, d.cfg.ClusterMAC, d.vip, make(net.HardwareAddr, 6), d.vip)
	if err == nil {
		err = d.sock.send(f, broadcastMAC)
	}
	if err != nil {
		return fmt.Errorf("announce %s: %w", d.cfg.VIP, err)
	}
	return nil
}

// Close stops the reader and removes the TAP (and with it the VIP). The
// multicast membership goes with the socket.
func (d *Datapath) Close() error {
	var err error
	d.closeOnce.Do(func() {
		d.closing.Store(true)
		close(d.stop)
		err = d.sock.close()
		d.wg.Wait()
		err = errors.Join(err, d.tap.close())
	})
	return err
}

// Closed tells whether Close has been called.
func (d *Datapath) Closed() bool { return d.closing.Load() }
