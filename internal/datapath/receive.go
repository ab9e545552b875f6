package datapath

import (
	"encoding/binary"
	"time"

	"golang.org/x/sys/unix"
)

// maxFrame is the largest frame the socket hands over: a 64 KB GSO
// super-frame plus its Ethernet header and some slack for VLAN tags.
const maxFrame = 65536 + ethHdrLen + 8

// receive is the cluster's reader: one frame per loop, decided and either
// written to the TAP or dropped. It returns when the socket is closed.
func (d *Datapath) receive() {
	defer d.wg.Done()
	buf := make([]byte, vnetHdrLen+maxFrame)
	var n int
	var rerr error
	readOne := func(fd uintptr) bool {
		n, rerr = unix.Read(int(fd), buf)
		return rerr != unix.EAGAIN
	}
	for {
		if err := d.sock.read(readOne); err != nil {
			if !d.closing.Load() {
				d.log.Error("capture socket failed", "err", err)
			}
			return
		}
		if rerr != nil {
			// The interface went down or away; the socket stays bound and
			// resumes when it returns.
			d.log.Warn("capture read", "err", rerr)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		d.handle(buf[:n])
	}
}

// handle takes one virtio-net header plus frame. It must not retain b.
func (d *Datapath) handle(b []byte) {
	if len(b) < vnetHdrLen+ethHdrLen {
		d.stats.malformed.Add(1)
		return
	}
	frame := b[vnetHdrLen:]
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case etherTypeIPv4:
		d.handleIPv4(b)
	case etherTypeARP:
		d.handleARP(frame)
	default:
		d.stats.malformed.Add(1)
	}
}

func (d *Datapath) handleIPv4(b []byte) {
	var p ipv4Packet
	if !parseIPv4(b[vnetHdrLen+ethHdrLen:], &p) || p.dst != binary.BigEndian.Uint32(d.vip[:]) {
		d.stats.malformed.Add(1)
		return
	}
	if !d.owner.needsFragmentTable(&p) {
		d.deliver(b, d.accept(&p))
		return
	}
	k := fragKey{src: p.src, id: p.id, proto: p.proto}
	now := time.Now().UnixNano()
	if p.fragOff == 0 {
		ok := d.accept(&p)
		v := fragDrop
		if ok {
			v = fragAccept
		}
		held := d.frags.first(k, v, now)
		d.deliver(b, ok)
		for _, h := range held {
			d.deliver(h, ok)
		}
		return
	}
	if v := d.frags.lookup(k); v != fragUnknown {
		d.deliver(b, v == fragAccept)
		return
	}
	if d.frags.hold(k, b, now) {
		d.stats.heldFrags.Add(1)
	} else {
		d.stats.droppedFrag.Add(1)
	}
}

// deliver writes b to the TAP if accepted, else drops it. The destination
// MAC becomes the TAP's own so the stack takes the packet as addressed to
// this host (TCP discards anything else), as the kernel target set pkt_type
// to PACKET_HOST.
func (d *Datapath) deliver(b []byte, accepted bool) {
	if !accepted {
		d.stats.notOwned.Add(1)
		return
	}
	copy(b[vnetHdrLen:vnetHdrLen+6], d.tap.mac)
	if err := d.tap.write(b); err != nil {
		d.stats.tapErrors.Add(1)
		return
	}
	d.stats.owned.Add(1)
}

// handleARP answers requests for the VIP with the cluster MAC. Every node
// answers, with identical replies, as every node did with the kernel target:
// the client learns one MAC whoever replies first.
func (d *Datapath) handleARP(frame []byte) {
	sha, spa, ok := arpRequestForVIP(frame, d.vip)
	if !ok {
		return
	}
	reply, err := arpFrame(sha, d.ifi.HardwareAddr, arpOpReply, d.cfg.ClusterMAC, d.vip, sha, spa)
	if err == nil {
		err = d.sock.send(reply, sha)
	}
	if err != nil {
		d.log.Warn("ARP reply", "to", sha.String(), "err", err)
		return
	}
	d.stats.arpReplies.Add(1)
}
