package datapath

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

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

type counters struct {
	owned, notOwned, malformed, arpReplies, heldFrags, droppedFrag, tapErrors atomic.Uint64
}

// Datapath is one running cluster on this node.
type Datapath struct {
	cfg   Config
	vip   [4]byte
	ifi   *net.Interface
	sock  *captureSocket
	tap   *tapDevice
	owner Owner
	nodes atomic.Uint64 // nodeset.NodeSet, swapped whole so each packet sees one consistent set
	frags *fragTable
	stats counters
	log   *slog.Logger

	wg        sync.WaitGroup
	closing   atomic.Bool
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
		log:   log.With("vip", cfg.VIP.String()),
	}
	d.nodes.Store(uint64(nodes))
	if d.tap, err = openTap(TapName(cfg.VIP), cfg.VIP); err != nil {
		return nil, err
	}
	if d.sock, err = openCaptureSocket(ifi, cfg.VIP, cfg.ClusterMAC); err != nil {
		d.tap.close()
		return nil, err
	}
	d.wg.Add(1)
	go d.receive()
	if err := d.Announce(); err != nil {
		d.log.Warn("gratuitous ARP failed", "err", err)
	}
	return d, nil
}

// Nodes returns the node numbers this node answers for.
func (d *Datapath) Nodes() nodeset.NodeSet { return nodeset.NodeSet(d.nodes.Load()) }

// SetNodes changes the node numbers this node answers for; the next packet
// sees the new set.
func (d *Datapath) SetNodes(s nodeset.NodeSet) { d.nodes.Store(uint64(s)) }

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
		err = d.sock.close()
		d.wg.Wait()
		err = errors.Join(err, d.tap.close())
	})
	return err
}
