package datapath

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/mdlayher/packet"
)

// The flood check. Everything rests on the switch delivering every frame
// sent to the cluster MAC to every node, and many switches do not (IGMP or
// MLD snooping with a querier, lookups by IP address): the cluster then
// answers nothing while each node looks healthy. So every node of a cluster
// sends, every floodInterval,
//
//   - a hello to the Ethernet broadcast address, which every switch floods,
//     so that every node learns which other nodes are on the link; and
//   - a probe to the cluster MAC that a switch treats as it treats clients'
//     frames: an IPv4 or IPv6 packet to the VIP, of protocol 253 (RFC
//     3692's, delivered to nothing) from the unspecified address (which no
//     stack answers or routes).
//
// A node that keeps hearing a peer's hellos but none of its probes is not
// reached by frames to the cluster MAC: the switch does not flood them. It
// says so; with --peers it gossips it, so every node can name the nodes
// affected. One node alone, or a cluster whose other nodes run the kernel
// target, cannot tell, and says "unknown".
const (
	floodEtherType = 0x88b5 // IEEE 802's local experimental EtherType
	floodInterval  = 2 * time.Second
	// floodWindow is how long a peer's probes may be missing while its
	// hellos arrive before the node is declared not flooded, and how long
	// a peer must have been heard before it is judged at all.
	floodWindow = 10 * time.Second
	// floodForget is when a peer whose hellos stopped is forgotten.
	floodForget = 60 * time.Second

	floodMagic   = "CIPF"
	floodVersion = 1
	floodHello   = 1
	floodProbe   = 2
	floodMaxName = 64
	floodMsgMin  = 4 + 1 + 1 + 4 + 16 + 1
)

// FloodState is what the flood check concludes.
type FloodState uint8

const (
	FloodUnknown FloodState = iota // no other node heard long enough to judge
	FloodOK                        // every peer's probes arrive
	FloodBroken                    // some peer's hellos arrive but not its probes
)

func (s FloodState) String() string {
	switch s {
	case FloodOK:
		return "ok"
	case FloodBroken:
		return "broken"
	}
	return "unknown"
}

// FloodReport is the flood check's view from this node.
type FloodReport struct {
	State FloodState
	// Peers are the other nodes heard on the link (their hellos), by name.
	Peers []string
	// Missing are the peers whose frames to the cluster MAC do not reach
	// this node.
	Missing []string
}

// Equal tells whether two reports say the same.
func (r FloodReport) Equal(o FloodReport) bool {
	return r.State == o.State && slices.Equal(r.Peers, o.Peers) && slices.Equal(r.Missing, o.Missing)
}

// floodMsg is the payload of hellos and probes: magic, version, kind, a
// sequence number, the VIP (16 bytes, IPv4 mapped) and the sender's name.
type floodMsg struct {
	kind uint8
	seq  uint32
	vip  netip.Addr
	name string
}

func (m floodMsg) appendTo(b []byte) []byte {
	b = append(b, floodMagic...)
	b = append(b, floodVersion, m.kind)
	b = binary.BigEndian.AppendUint32(b, m.seq)
	v := m.vip.As16()
	b = append(b, v[:]...)
	name := m.name
	if len(name) > floodMaxName {
		name = name[:floodMaxName]
	}
	b = append(b, byte(len(name)))
	return append(b, name...)
}

// parseFloodMsg parses a payload from the wire; anything malformed is false.
func parseFloodMsg(b []byte) (floodMsg, bool) {
	if len(b) < floodMsgMin || string(b[:4]) != floodMagic || b[4] != floodVersion {
		return floodMsg{}, false
	}
	m := floodMsg{kind: b[5], seq: binary.BigEndian.Uint32(b[6:10])}
	if m.kind != floodHello && m.kind != floodProbe {
		return floodMsg{}, false
	}
	m.vip = netip.AddrFrom16([16]byte(b[10:26])).Unmap()
	n := int(b[26])
	if n > floodMaxName || len(b) < floodMsgMin+n {
		return floodMsg{}, false
	}
	m.name = string(b[27 : 27+n])
	return m, true
}

// helloFrame is a hello from src to every node on the link.
func helloFrame(src net.HardwareAddr, m floodMsg) []byte {
	b := make([]byte, 0, ethHdrLen+floodMsgMin+len(m.name))
	b = append(b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	b = append(b, src...)
	b = binary.BigEndian.AppendUint16(b, floodEtherType)
	return m.appendTo(b)
}

// probeFrame is a probe from src to the cluster MAC dst: an IP packet to
// the VIP as clients send it, from the unspecified address.
func probeFrame(dst, src net.HardwareAddr, m floodMsg) []byte {
	payload := m.appendTo(nil)
	b := make([]byte, 0, ethHdrLen+ipv6HdrLen+len(payload))
	b = append(b, dst...)
	b = append(b, src...)
	if m.vip.Is6() {
		b = binary.BigEndian.AppendUint16(b, etherTypeIPv6)
		b = append(b, 0x60, 0, 0, 0)
		b = binary.BigEndian.AppendUint16(b, uint16(len(payload)))
		b = append(b, protoFloodProbe, 1) // next header, hop limit
		b = append(b, make([]byte, 16)...)
		v := m.vip.As16()
		b = append(b, v[:]...)
		return append(b, payload...)
	}
	b = binary.BigEndian.AppendUint16(b, etherTypeIPv4)
	ip := len(b)
	b = append(b, 0x45, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(ipv4MinHdrLen+len(payload)))
	b = append(b, 0, 0, 0x40, 0, 1, protoFloodProbe, 0, 0) // id, DF, TTL 1, protocol, checksum
	b = append(b, 0, 0, 0, 0)
	v := m.vip.As4()
	b = append(b, v[:]...)
	binary.BigEndian.PutUint16(b[ip+10:], ipChecksum(b[ip:ip+ipv4MinHdrLen]))
	return append(b, payload...)
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// floodPeer is another node as the flood check has heard it.
type floodPeer struct {
	name                             string
	firstHello, lastHello, lastProbe time.Time
}

// floodWatch is the flood check's state for one cluster. It outlives the
// attachments: an interface that comes back keeps what was learned.
type floodWatch struct {
	mu    sync.Mutex
	peers map[string]*floodPeer // by sender MAC and name
	last  FloodReport           // as last reported
}

func peerKey(mac net.HardwareAddr, name string) string { return string(mac) + "\x00" + name }

// saw records a hello or probe from the Ethernet source mac.
func (f *floodWatch) saw(mac net.HardwareAddr, m floodMsg, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.peers == nil {
		f.peers = map[string]*floodPeer{}
	}
	k := peerKey(mac, m.name)
	p := f.peers[k]
	if p == nil {
		if m.kind != floodHello {
			// Probes alone tell nothing: who sends them is learned
			// from the hellos, which every switch floods.
			p = &floodPeer{name: m.name}
			f.peers[k] = p
			p.lastProbe = now
			return
		}
		p = &floodPeer{name: m.name, firstHello: now}
		f.peers[k] = p
	}
	if m.kind == floodProbe {
		p.lastProbe = now
		return
	}
	if p.firstHello.IsZero() {
		p.firstHello = now
	}
	p.lastHello = now
}

// report judges every peer heard long enough: one whose hellos arrive but
// whose probes have not for floodWindow does not reach this node through
// the cluster MAC.
func (f *floodWatch) report(now time.Time) FloodReport {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := FloodReport{Peers: []string{}, Missing: []string{}}
	judged := 0
	for k, p := range f.peers {
		recent := func(t time.Time, d time.Duration) bool { return !t.IsZero() && now.Sub(t) <= d }
		if !recent(p.lastHello, floodForget) && !recent(p.lastProbe, floodForget) {
			delete(f.peers, k)
			continue
		}
		if !recent(p.lastHello, floodWindow) || p.firstHello.IsZero() || now.Sub(p.firstHello) < floodWindow {
			continue
		}
		judged++
		r.Peers = append(r.Peers, p.name)
		if !recent(p.lastProbe, floodWindow) {
			r.Missing = append(r.Missing, p.name)
		}
	}
	slices.Sort(r.Peers)
	slices.Sort(r.Missing)
	switch {
	case len(r.Missing) > 0:
		r.State = FloodBroken
	case judged > 0:
		r.State = FloodOK
	}
	return r
}

// floodSocket sends hellos and probes and reads the hellos of the link.
type floodSocket struct {
	conn *packet.Conn
	ifi  *net.Interface
}

func openFloodSocket(ifi *net.Interface) (*floodSocket, error) {
	conn, err := packet.Listen(ifi, packet.Raw, floodEtherType, nil)
	if err != nil {
		return nil, fmt.Errorf("flood check socket on %s: %w", ifi.Name, err)
	}
	return &floodSocket{conn: conn, ifi: ifi}, nil
}

// sendFlood sends the cluster's hello and probe on s.
func (d *Datapath) sendFlood(s *floodSocket) {
	seq := d.floodSeq.Add(1)
	hello := floodMsg{kind: floodHello, seq: seq, vip: d.cfg.VIP, name: d.cfg.NodeName}
	probe := hello
	probe.kind = floodProbe
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	if _, err := s.conn.WriteTo(helloFrame(s.ifi.HardwareAddr, hello), &packet.Addr{HardwareAddr: bcast}); err != nil {
		d.log.Debug("flood check: send hello", "err", err)
	}
	if _, err := s.conn.WriteTo(probeFrame(d.cfg.ClusterMAC, s.ifi.HardwareAddr, probe), &packet.Addr{HardwareAddr: d.cfg.ClusterMAC}); err != nil {
		d.log.Debug("flood check: send probe", "err", err)
	}
}

// sawFlood takes a hello (an Ethernet payload) or a probe (an IP payload)
// of kind from the Ethernet source src. Anything else is ignored: frames of
// other clusters, or not ours at all.
func (d *Datapath) sawFlood(payload []byte, src net.HardwareAddr, kind uint8) bool {
	m, ok := parseFloodMsg(payload)
	if !ok || m.kind != kind || m.vip != d.cfg.VIP {
		return false
	}
	d.flood.saw(src, m, time.Now())
	return true
}

// reportFlooding tells Config.OnFlood when the report changed.
func (d *Datapath) reportFlooding(now time.Time) {
	r := d.flood.report(now)
	d.flood.mu.Lock()
	changed := !r.Equal(d.flood.last)
	d.flood.last = r
	d.flood.mu.Unlock()
	if changed && d.cfg.OnFlood != nil {
		d.cfg.OnFlood(r)
	}
}

// Flooding is the flood check's view from this node now.
func (d *Datapath) Flooding() FloodReport { return d.flood.report(time.Now()) }
