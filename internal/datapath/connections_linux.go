package datapath

import (
	"errors"
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

// adoptConnections enters into the flow table, as this node's own, the TCP
// connections to the VIP in the local socket table whose number is in
// numbers. The kernel path answers such connections without user space
// seeing them; when their number leaves it (a handoff, another node claiming
// the number), the flow table must know them, or user space would cut the
// quiet ones at their next packet.
//
// Both socket families are read: a server listening on [::] (Go's default
// for ":80") holds IPv4 connections as AF_INET6 sockets with mapped
// addresses, which the datapath keys the same way.
func (d *Datapath) adoptConnections(numbers nodeset.NodeSet, now int64) {
	adopted := 0
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		if d.v6 && family == unix.AF_INET {
			continue
		}
		socks, err := netlink.SocketDiagTCP(family)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			d.log.Error("read TCP connections for the flow table", "family", family, "err", err)
			continue
		}
		for _, s := range socks {
			local, client := s.ID.Source.To16(), s.ID.Destination.To16()
			if local == nil || client == nil || addr(local) != d.vip {
				continue
			}
			switch s.State {
			case tcpListen, tcpTimeWait, tcpClose:
				continue
			}
			// The key as the client's packets carry it: raw ports, as hashed.
			k := flowKey{
				src:   addr(client),
				sport: bits.ReverseBytes16(s.ID.DestinationPort),
				dport: bits.ReverseBytes16(s.ID.SourcePort),
				proto: protoTCP,
			}
			node := d.owner.node(&k.src, d.v6, k.sport, k.dport)
			if !numbers.Contains(node) {
				continue
			}
			closing := s.State == tcpCloseWait || s.State == tcpLastAck || s.State == tcpClosing
			if d.flows.adopt(k, uint8(node), closing, s.State != tcpSynRecv, now) {
				adopted++
			}
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
