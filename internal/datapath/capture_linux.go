package datapath

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// captureGroup is what every cluster on one interface shares: the capture
// sockets (one per worker for each address family in use, in a fanout
// group, plus one for ARP), their readers, one capture filter program over
// maps of the clusters' VIPs (see program), the cluster MACs' memberships
// and the flood check's socket. Readers hand each frame to the cluster its
// destination (or ARP or neighbour solicitation target) names. So a frame
// costs one filter run and one map lookup however many clusters the
// interface has, and a node runs a fixed number of reader threads.
type captureGroup struct {
	key     groupKey
	ifi     *net.Interface
	workers int

	filter *ebpf.Program
	vips   vipMaps // what the filter passes, per cluster
	member int     // a socket holding the cluster MACs' memberships
	macs   map[macMembership]int

	readers  map[uint16][]*worker // by EtherType: IPv4, IPv6 and ARP
	flood    *floodSocket
	clusters atomic.Pointer[map[addr]*Datapath]
	// batches is held for reading while a reader handles a batch, so that
	// a cluster taken out of clusters can wait until no reader still
	// hands it frames (its TAP's descriptors are about to close).
	batches sync.RWMutex
	strays  atomic.Uint64 // frames for no cluster (one just removed)

	stop atomic.Bool
	wg   sync.WaitGroup
	refs int
}

// groupKey names an interface as it is now: a rebuilt interface with the
// same name is another.
type groupKey struct {
	name  string
	index int
}

type macMembership struct {
	mac  string
	mode MACMode
}

// groups holds the capture groups, by interface.
var groups struct {
	sync.Mutex
	byKey map[groupKey]*captureGroup
}

// attachCapture adds d to the capture group of ifi, creating the group or
// the sockets of d's family if d is the first to need them; the filter
// passes d's numbers in pass.
func attachCapture(d *Datapath, ifi *net.Interface, pass uint64) (*captureGroup, error) {
	groups.Lock()
	defer groups.Unlock()
	if groups.byKey == nil {
		groups.byKey = map[groupKey]*captureGroup{}
	}
	key := groupKey{ifi.Name, ifi.Index}
	g := groups.byKey[key]
	if g == nil {
		var err error
		if g, err = newCaptureGroup(key, ifi, d.cfg.Workers); err != nil {
			return nil, err
		}
		groups.byKey[key] = g
	}
	g.refs++
	if err := g.add(d, pass); err != nil {
		g.release()
		return nil, err
	}
	return g, nil
}

func newCaptureGroup(key groupKey, ifi *net.Interface, workers int) (*captureGroup, error) {
	g := &captureGroup{key: key, ifi: ifi, workers: workers, member: -1, macs: map[macMembership]int{}, readers: map[uint16][]*worker{}}
	empty := map[addr]*Datapath{}
	g.clusters.Store(&empty)
	var err error
	if g.vips, err = newVIPMaps("cip_pass"); err != nil {
		return nil, fmt.Errorf("capture filter: %w", err)
	}
	g.filter, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "cip_capture",
		Type:         ebpf.SocketFilter,
		Instructions: program(capturePass, g.vips, nil, nil),
		License:      "Dual MIT/GPL",
	})
	if err != nil {
		g.close()
		return nil, fmt.Errorf("capture filter: load program: %w", err)
	}
	// A packet socket of protocol 0 receives nothing: it only holds the
	// memberships, which the kernel drops when it closes, a crash included.
	if g.member, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0); err != nil {
		g.close()
		return nil, fmt.Errorf("packet socket on %s: %w", ifi.Name, err)
	}
	if g.flood, err = openFloodSocket(ifi); err != nil {
		g.close()
		return nil, err
	}
	g.wg.Add(1)
	go g.floodLoop()
	return g, nil
}

// add makes d one of the group's clusters.
func (g *captureGroup) add(d *Datapath, pass uint64) error {
	families := []uint16{unix.ETH_P_IP, unix.ETH_P_ARP}
	if d.v6 {
		families = []uint16{unix.ETH_P_IPV6}
	}
	for _, et := range families {
		if err := g.openReaders(et); err != nil {
			return err
		}
	}
	m := macMembership{string(d.cfg.ClusterMAC), d.cfg.MACMode}
	if g.macs[m] == 0 {
		if err := joinMAC(g.member, g.ifi, d.cfg.ClusterMAC, d.cfg.MACMode, unix.PACKET_ADD_MEMBERSHIP); err != nil {
			return fmt.Errorf("join %s on %s: %w", d.cfg.ClusterMAC, g.ifi.Name, err)
		}
	}
	g.macs[m]++
	if err := g.setPass(d, pass); err != nil {
		g.dropMAC(m)
		return err
	}
	g.updateClusters(func(c map[addr]*Datapath) { c[d.vip] = d })
	return nil
}

// openReaders opens the sockets and starts the readers for EtherType et,
// unless the group has them already: one per worker (in one fanout group)
// for IP, one for ARP.
func (g *captureGroup) openReaders(et uint16) error {
	if len(g.readers[et]) > 0 {
		return nil
	}
	n, frameLen := g.workers, maxFrame
	if et == unix.ETH_P_ARP {
		n, frameLen = 1, maxARPFrame
	}
	var ws []*worker
	var fanout uint16
	for i := 0; i < n; i++ {
		sock, err := openCaptureSocket(g.ifi, et, g.filter)
		if err == nil && et != unix.ETH_P_ARP {
			if err = sock.joinFanout(fanout); err == nil && i == 0 {
				fanout, err = sock.fanoutGroup()
			}
		}
		if err != nil {
			if sock != nil {
				sock.close()
			}
			for _, w := range ws {
				w.sock.close()
			}
			return fmt.Errorf("packet socket on %s: %w", g.ifi.Name, err)
		}
		ws = append(ws, newWorker(g, i, sock, frameLen))
	}
	g.readers[et] = ws
	for _, w := range ws {
		g.wg.Add(1)
		go w.run()
	}
	return nil
}

// setPass makes the filter pass d's numbers in pass; frames see the old
// entry or the new one whole.
func (g *captureGroup) setPass(d *Datapath, pass uint64) error {
	e := newVIPEntry(d.cfg.VIP, d.cfg.ClusterMAC, d.cfg.Hash, 0)
	e.Set = pass
	if err := g.vips.put(d.cfg.VIP, e); err != nil {
		return fmt.Errorf("capture filter: %w", err)
	}
	return nil
}

func (g *captureGroup) updateClusters(change func(map[addr]*Datapath)) {
	old := *g.clusters.Load()
	c := make(map[addr]*Datapath, len(old)+1)
	for k, v := range old {
		c[k] = v
	}
	change(c)
	g.clusters.Store(&c)
}

// cluster returns the cluster of VIP vip, or nil.
func (g *captureGroup) cluster(vip addr) *Datapath { return (*g.clusters.Load())[vip] }

func (g *captureGroup) dropMAC(m macMembership) {
	if g.macs[m]--; g.macs[m] > 0 {
		return
	}
	delete(g.macs, m)
	joinMAC(g.member, g.ifi, net.HardwareAddr(m.mac), m.mode, unix.PACKET_DROP_MEMBERSHIP)
}

// remove takes d out of the group, closing the group with its last
// cluster.
func (g *captureGroup) remove(d *Datapath) {
	groups.Lock()
	defer groups.Unlock()
	g.updateClusters(func(c map[addr]*Datapath) { delete(c, d.vip) })
	g.batches.Lock() // a barrier: batches that began with d are done
	g.batches.Unlock()
	if err := g.vips.delete(d.cfg.VIP); err != nil {
		d.log.Debug("capture filter", "err", err)
	}
	g.dropMAC(macMembership{string(d.cfg.ClusterMAC), d.cfg.MACMode})
	g.release()
}

// release drops a hold on the group; the last closes it. Callers hold
// groups.
func (g *captureGroup) release() {
	if g.refs--; g.refs > 0 {
		return
	}
	if groups.byKey[g.key] == g {
		delete(groups.byKey, g.key)
	}
	g.close()
}

// close stops the readers and closes everything. The sockets close only
// after the readers have left their reads: a file descriptor closed under
// a blocked read could be reused before the read returns.
func (g *captureGroup) close() {
	g.stop.Store(true)
	g.wg.Wait()
	for _, ws := range g.readers {
		for _, w := range ws {
			w.sock.close()
		}
	}
	if g.flood != nil {
		g.flood.conn.Close()
	}
	if g.member >= 0 {
		unix.Close(g.member)
	}
	if g.filter != nil {
		g.filter.Close()
	}
	g.vips.close()
}

// sender returns the socket to send d's frames on: ARP's for IPv4, an
// IPv6 reader's for IPv6.
func (g *captureGroup) sender(v6 bool) *worker {
	groups.Lock()
	defer groups.Unlock()
	et := uint16(unix.ETH_P_ARP)
	if v6 {
		et = unix.ETH_P_IPV6
	}
	if ws := g.readers[et]; len(ws) > 0 {
		return ws[0]
	}
	return nil
}

// stalled names a reader that has not come round its loop for longer than
// maxAge (readers do at least every readTimeout, frames or not), or returns
// "".
func (g *captureGroup) stalled(maxAge time.Duration) string {
	groups.Lock()
	defer groups.Unlock()
	now := time.Now().UnixNano()
	var out []string
	for et, ws := range g.readers {
		for i, w := range ws {
			if beat := w.beat.Load(); beat != 0 && now-beat > int64(maxAge) {
				out = append(out, fmt.Sprintf("reader %d for EtherType %#04x on %s silent for %s", i, et, g.ifi.Name, time.Duration(now-beat).Round(time.Millisecond)))
			}
		}
	}
	return strings.Join(out, "; ")
}

// sweepFragments lets go, for every cluster, of the fragments reader i
// holds whose datagram never completed.
func (g *captureGroup) sweepFragments(i int, now int64) {
	for _, d := range *g.clusters.Load() {
		if t := d.lanes[i%len(d.lanes)].frags.Load(); t != nil {
			t.sweep(now)
		}
	}
}

// floodLoop sends each cluster's hello and probe every floodInterval and
// reads the hellos of the link in between, until the group closes; after
// each cluster's round it tells the cluster's Config.OnFlood when its
// report changed.
func (g *captureGroup) floodLoop() {
	defer g.wg.Done()
	buf := make([]byte, 2048)
	for !g.stop.Load() {
		now := time.Now()
		for _, d := range *g.clusters.Load() {
			if next := d.floodNext.Load(); next == 0 || now.UnixNano() >= next {
				d.sendFlood(g.flood)
				d.reportFlooding(now)
				d.floodNext.Store(now.Add(floodInterval).UnixNano())
			}
		}
		g.flood.conn.SetReadDeadline(now.Add(readTimeout))
		for {
			n, _, err := g.flood.conn.ReadFrom(buf)
			if err != nil || g.stop.Load() {
				break
			}
			if n < ethHdrLen {
				continue
			}
			m, ok := parseFloodMsg(buf[ethHdrLen:n])
			if !ok {
				continue
			}
			if d := g.cluster(m.vip.As16()); d != nil {
				d.sawFlood(buf[ethHdrLen:n], net.HardwareAddr(buf[6:12]), floodHello)
			}
			if time.Since(now) >= readTimeout {
				break
			}
		}
	}
}
