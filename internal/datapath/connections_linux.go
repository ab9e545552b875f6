package datapath

import (
	"encoding/binary"
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
func (d *Datapath) adoptConnections(numbers nodeset.NodeSet, now int64) {
	socks, err := netlink.SocketDiagTCP(unix.AF_INET)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		d.log.Error("read TCP connections for the flow table", "err", err)
		return
	}
	adopted := 0
	for _, s := range socks {
		local, client := s.ID.Source.To4(), s.ID.Destination.To4()
		if local == nil || client == nil || [4]byte(local) != d.vip {
			continue
		}
		switch s.State {
		case tcpListen, tcpTimeWait, tcpClose:
			continue
		}
		// The key as the client's packets carry it: raw ports, as hashed.
		k := flowKey{
			src:   binary.BigEndian.Uint32(client),
			sport: bits.ReverseBytes16(s.ID.DestinationPort),
			dport: bits.ReverseBytes16(s.ID.SourcePort),
			proto: protoTCP,
		}
		node := d.owner.Hash.Node(k.src, k.sport, k.dport)
		if !numbers.Contains(node) {
			continue
		}
		closing := s.State == tcpCloseWait || s.State == tcpLastAck || s.State == tcpClosing
		if d.flows.adopt(k, uint8(node), closing, s.State != tcpSynRecv, now) {
			adopted++
		}
	}
	d.log.Debug("adopted connections from the socket table", "numbers", numbers.String(), "adopted", adopted)
}
