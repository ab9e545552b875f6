package datapath

import (
	"errors"
	"log/slog"
	"math/bits"

	"github.com/clusterip/clusterip/nodeset"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TCP states, as the socket table reports them (include/net/tcp_states.h).
const (
	tcpSynRecv   = 3
	tcpTimeWait  = 6
	tcpClose     = 7
	tcpCloseWait = 8
	tcpLastAck   = 9
	tcpListen    = 10
	tcpClosing   = 11
)

// SocketTable is one reading of the host's TCP connections, by local
// address. Reading it dumps the socket table, which walks the host's whole
// TCP hash (a millisecond or two, however few connections there are): a
// failover round that moves a thousand clusters reads it once for all of
// them (see SetPolicyShared), not four times for each.
type SocketTable struct {
	byLocal map[addr][]tcpSocket
}

// tcpSocket is a connection as the socket table reports it.
type tcpSocket struct {
	client       addr
	sport, dport uint16 // as the client's packets carry them: raw, as hashed
	state        uint8
}

// ReadSocketTable reads both socket families: a server listening on [::]
// (Go's default for ":80") holds IPv4 connections as AF_INET6 sockets with
// mapped addresses, which the datapath keys the same way. What it cannot
// read is logged and left out.
func ReadSocketTable(log *slog.Logger) *SocketTable {
	t := &SocketTable{byLocal: map[addr][]tcpSocket{}}
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := netlink.SocketDiagTCP(family)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			log.Error("read TCP connections for the flow table", "family", family, "err", err)
			continue
		}
		for _, s := range socks {
			local, client := s.ID.Source.To16(), s.ID.Destination.To16()
			if local == nil || client == nil {
				continue
			}
			switch s.State {
			case tcpListen, tcpTimeWait, tcpClose:
				continue
			}
			t.byLocal[addr(local)] = append(t.byLocal[addr(local)], tcpSocket{
				client: addr(client),
				sport:  bits.ReverseBytes16(s.ID.DestinationPort),
				dport:  bits.ReverseBytes16(s.ID.SourcePort),
				state:  s.State,
			})
		}
	}
	return t
}

// SocketReader reads the socket table once, when first asked, for every
// cluster a failover round moves before its last swap.
type SocketReader struct {
	log   *slog.Logger
	table *SocketTable
}

// NewSocketReader returns a reader that has not read yet.
func NewSocketReader(log *slog.Logger) *SocketReader { return &SocketReader{log: log} }

// Table reads the socket table the first time, and returns that reading.
func (r *SocketReader) Table() *SocketTable {
	if r.table == nil {
		r.table = ReadSocketTable(r.log)
	}
	return r.table
}

// adoptConnections enters into the flow table, as this node's own, the TCP
// connections to the VIP in the socket table t whose number is in
// numbers. The kernel path answers such connections without user space
// seeing them; when their number leaves it (a handoff, another node claiming
// the number), the flow table must know them, or user space would cut the
// quiet ones at their next packet. Callers hold d.filterMu.
func (d *Datapath) adoptConnections(t *SocketTable, numbers nodeset.NodeSet, now int64) {
	adopted := 0
	for _, s := range t.byLocal[d.vip] {
		k := flowKey{src: s.client, sport: s.sport, dport: s.dport, proto: protoTCP}
		node := d.owner.node(&k.src, d.v6, k.sport, k.dport)
		if !numbers.Contains(node) {
			continue
		}
		closing := s.state == tcpCloseWait || s.state == tcpLastAck || s.state == tcpClosing
		if d.flows.adopt(k, uint8(node), closing, s.state != tcpSynRecv, now) {
			adopted++
		}
	}
	d.log.Debug("adopted connections from the socket table", "numbers", numbers.String(), "adopted", adopted)
	d.adoptKernelFlows(numbers)
}

// adoptKernelFlows enters into the flow table the connectionless flows of
// numbers that the kernel path took, with the time of their last packet:
// when the number leaves the kernel path, user space keeps answering them
// as if it had seen them all along, a flow quiet through the whole handoff
// included. Callers hold d.filterMu.
func (d *Datapath) adoptKernelFlows(numbers nodeset.NodeSet) {
	if d.kernel == nil || d.kernel.protos != kernelAllRecorded {
		return
	}
	flows, err := d.kernel.flows(numbers)
	if err != nil {
		d.log.Error("read the kernel path's flows for the flow table", "err", err)
	}
	for _, f := range flows {
		d.flows.adoptSeen(f.key, f.node, f.lastSeen)
	}
	d.log.Debug("adopted flows from the kernel path", "numbers", numbers.String(), "adopted", len(flows))
}
