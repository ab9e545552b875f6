package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/nodeset"
)

// The two eBPF programs every interface with clusters runs, generated from
// one description so that they cannot disagree on which number a packet
// has:
//
//   - the kernel path (kernelTake), on the TCX ingress hook, takes the
//     packets of each cluster's settled numbers for the stack;
//   - the capture filter (capturePass), on the interface's capture sockets,
//     passes to user space what it must judge: ARP and neighbour
//     solicitations for a VIP, fragments, ICMP and the flood check's probes
//     to a VIP, and packets to a VIP whose number user space answers now.
//
// Both look the frame's destination address up in maps of VIPs (vipMaps),
// so a frame costs one lookup however many clusters the interface has, and
// a cluster's numbers change with one map update, which the kernel makes
// atomic. The capture sockets are bound to one EtherType each, so they see
// a frame after the ingress hook: the capture filter leaves out a frame the
// kernel path took (its packet type is PACKET_HOST by then), and each frame
// is judged once, by whichever entry the kernel path read at that instant.
type programKind int

const (
	kernelTake programKind = iota
	capturePass
)

// maxVIPs bounds the clusters one interface serves.
const maxVIPs = 8192

// vipEntry is a cluster's value in a program's VIP maps.
type vipEntry struct {
	MAC   [6]byte
	Words uint8 // 1: source address; 2: and source port; 3: and destination port
	Flags uint8 // entryNFTables, entryTCPOnly, entryRecordFlows
	Set   uint64
	Total uint32
	IV    uint32 // jhash's initial value
	Slot  uint32 // the cluster's counter (kernel path)
	// Pass (kernel path): the numbers user space wants the frames of. The
	// kernel path drops the cluster's frames of every other number it does
	// not take: they are other nodes' to answer, and dropping them at the
	// hook spares the node the capture sockets' and the stack's work on
	// the flooded frames that are not its share.
	Pass uint64
}

// Offsets in vipEntry, as the programs load them.
const (
	entryMAC   = 0
	entryWords = 6
	entryFlags = 7
	entrySet   = 8
	entryTotal = 16
	entryIV    = 20
	entrySlot  = 24
	entryPass  = 32
	entryLen   = 40

	entryNFTables = 1 << 0 // IPv4: hash the address as loaded and every protocol's first four bytes
	entryTCPOnly  = 1 << 1 // kernel path: take TCP only
	// entryRecordFlows: the kernel path records the connectionless flows
	// it takes in its flow map (see flowMapKey).
	entryRecordFlows = 1 << 2
)

// The kernel path's flow map: an LRU hash of the connectionless flows it
// took, so that when a number leaves it, user space learns the flows it
// must keep answering (see Datapath.adoptKernelFlows), as it learns TCP
// connections from the socket table. The key is the cluster's slot, the
// client's address (IPv4 mapped into IPv6), the raw ports (as the flow table
// keys them) and the protocol; the value is when the flow was last taken
// (CLOCK_MONOTONIC_COARSE: the tick is precise enough, and cheaper) and its
// number.
const (
	flowMapKeyLen   = 32
	flowMapValueLen = 16
	flowKeySlot     = 0
	flowKeySrc      = 4
	flowKeyPorts    = 20
	flowKeyProto    = 24
	flowValueSeen   = 0
	flowValueNode   = 8
	// flowSeenStep is how stale a flow's last-seen time may be: the
	// flow table expires flows after seconds, not milliseconds.
	flowSeenStep = 100 * time.Millisecond
	// maxKernelFlows bounds the flow map of an interface: past it, the
	// least recently taken flows go first.
	maxKernelFlows = 1 << 16
)

// newVIPEntry is the map value for a cluster whose numbers in set the
// program takes (kernel path) or passes (capture filter).
func newVIPEntry(vip netip.Addr, mac net.HardwareAddr, cfg hash.Config, set nodeset.NodeSet) vipEntry {
	e := vipEntry{Set: uint64(set), Total: cfg.TotalNodes}
	copy(e.MAC[:], mac)
	words, iv := jhashWords(cfg)
	if vip.Is6() {
		// nftables hashes 16 address bytes and 0, 4 or 8 bytes of ports.
		iv = 0xdeadbeef + 12 + 4*words + cfg.Seed
	}
	e.Words, e.IV = uint8(words), iv
	if cfg.Compat == hash.NFTables {
		e.Flags |= entryNFTables
	}
	return e
}

func (e vipEntry) marshal() []byte {
	b := make([]byte, entryLen)
	copy(b[entryMAC:], e.MAC[:])
	b[entryWords], b[entryFlags] = e.Words, e.Flags
	binary.NativeEndian.PutUint64(b[entrySet:], e.Set)
	binary.NativeEndian.PutUint32(b[entryTotal:], e.Total)
	binary.NativeEndian.PutUint32(b[entryIV:], e.IV)
	binary.NativeEndian.PutUint32(b[entrySlot:], e.Slot)
	binary.NativeEndian.PutUint64(b[entryPass:], e.Pass)
	return b
}

// vipMaps are a program's VIP maps: IPv4 VIPs by their 4 bytes, IPv6 ones
// by their 16.
type vipMaps struct {
	v4, v6 *ebpf.Map
}

func newVIPMaps(name string) (vipMaps, error) {
	var m vipMaps
	var err error
	for _, x := range []struct {
		m   **ebpf.Map
		key uint32
		fam string
	}{{&m.v4, 4, "4"}, {&m.v6, 16, "6"}} {
		// Not preallocated: a replaced element is freed after an RCU
		// grace period, so a frame never reads one half old, half new.
		*x.m, err = ebpf.NewMap(&ebpf.MapSpec{Name: name + x.fam, Type: ebpf.Hash, KeySize: x.key, ValueSize: entryLen,
			MaxEntries: maxVIPs, Flags: 1 /* BPF_F_NO_PREALLOC */})
		if err != nil {
			m.close()
			return vipMaps{}, fmt.Errorf("VIP map: %w", err)
		}
	}
	return m, nil
}

func (m vipMaps) close() error {
	var errs []error
	for _, x := range []*ebpf.Map{m.v4, m.v6} {
		if x != nil {
			errs = append(errs, x.Close())
		}
	}
	return errors.Join(errs...)
}

func (m vipMaps) mapOf(vip netip.Addr) (*ebpf.Map, []byte) {
	if vip.Is6() {
		a := vip.As16()
		return m.v6, a[:]
	}
	a := vip.As4()
	return m.v4, a[:]
}

// put sets vip's entry; the program sees the old or the new one whole.
func (m vipMaps) put(vip netip.Addr, e vipEntry) error {
	mp, key := m.mapOf(vip)
	if err := mp.Put(key, e.marshal()); err != nil {
		return fmt.Errorf("VIP map: set %s: %w", vip, err)
	}
	return nil
}

// delete removes vip's entry, if it has one.
func (m vipMaps) delete(vip netip.Addr) error {
	mp, key := m.mapOf(vip)
	if err := mp.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("VIP map: remove %s: %w", vip, err)
	}
	return nil
}

func le32(b []byte) int32 { return int32(binary.LittleEndian.Uint32(b)) }
func le16(b []byte) int32 { return int32(binary.LittleEndian.Uint16(b)) }

// Offsets in struct __sk_buff (include/uapi/linux/bpf.h).
const (
	skbPktType     = 4
	skbProtocol    = 16
	skbVLANPresent = 20
)

// Stack layout of the programs, each field in an aligned slot: the
// Ethernet destination, the IP header (IPv4's 20 bytes or IPv6's 40), the
// ports, the counter's key, the cluster's map value and an address looked
// up (an ARP or neighbour solicitation target).
const (
	stackMAC    = -8   // 6 bytes
	stackIP     = -48  // 40 bytes
	stackPorts  = -56  // 4 bytes
	stackKey    = -60  // the counter's key
	stackEntry  = -72  // the pointer to the cluster's vipEntry
	stackTarget = -88  // 16 bytes
	stackFlow   = -120 // the flow map's key, 32 bytes
	stackSeen   = -136 // and its value, 16 bytes

	stackDst4 = stackIP + 16 // the IPv4 destination: the key of vips4
	stackDst6 = stackIP + 24 // the IPv6 destination: the key of vips6
)

// Labels every program ends with.
const (
	labelNext   = "next"   // kernel path: leave the frame to the stack (and user space)
	labelDrop   = "drop"   // capture filter: not for user space
	labelAccept = "accept" // capture filter: for user space
)

// program builds a program of kind over the VIP maps (counters: the kernel
// path's per-slot counts; flows: its flow map).
//
// Registers: R6 the skb; R7 the IP header's length (IPv4) or next header
// (IPv6); R8 the protocol; R9 the source address (IPv4); the hash uses
// R1-R5 once no more helpers are called. The cluster's entry is kept on
// the stack, since helpers clobber R0-R5.
func program(kind programKind, maps vipMaps, counters, flows *ebpf.Map) asm.Instructions {
	g := progGen{kind: kind, notOurs: labelNext, userSpace: labelNext}
	if kind == capturePass {
		g.notOurs, g.userSpace = labelDrop, labelAccept
	}
	p := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		// VLAN-tagged frames belong to the VLAN's interface.
		asm.LoadMem(asm.R0, asm.R6, skbVLANPresent, asm.Word),
		asm.JNE.Imm(asm.R0, 0, g.notOurs),
		asm.LoadMem(asm.R0, asm.R6, skbProtocol, asm.Word),
		asm.JEq.Imm(asm.R0, be16(etherTypeIPv4), "ipv4"),
		asm.JEq.Imm(asm.R0, be16(etherTypeIPv6), "ipv6"),
	}
	if kind == capturePass {
		p = append(p, asm.JEq.Imm(asm.R0, be16(etherTypeARP), "arp"))
	}
	p = append(p, asm.Ja.Label(g.notOurs))
	p = append(p, g.ipv4(maps.v4)...)
	p = append(p, g.ipv6(maps.v6)...)
	if kind == capturePass {
		p = append(p, g.arp(maps.v4)...)
		return append(p, g.pass()...)
	}
	return append(p, g.take(counters.FD(), flows.FD())...)
}

// be16 is an EtherType as skb->protocol holds it, loaded as a word.
func be16(v uint16) int32 { return le16([]byte{byte(v >> 8), byte(v)}) }

// progGen generates the parts of a program of one kind.
type progGen struct {
	kind      programKind
	notOurs   string // where frames that are no cluster's go
	userSpace string // where frames only user space may judge go
}

// loadBytes loads n bytes of the frame at offset off (a register) to the
// stack slot at slot; a frame too short is not ours (the capture filter
// drops it, as a classic filter's load past the end does).
func (g progGen) loadBytes(off asm.Register, slot int16, n int32) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, off),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, int32(slot)),
		asm.Mov.Imm(asm.R4, n),
		asm.FnSkbLoadBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, g.notOurs),
	}
}

// lookup looks the address at stack slot key up in the map m, leaving the
// entry's pointer in R0; a VIP no cluster has is not ours.
func (g progGen) lookup(m *ebpf.Map, key int16, label string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMapPtr(asm.R1, m.FD()).WithSymbol(label),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, int32(key)),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, g.notOurs),
	}
}

// entry looks the destination up, keeps the entry at stackEntry and checks
// the frame's destination MAC against the cluster's: IP to a VIP sent to
// any other MAC (a stale ARP entry's unicast MAC) is left to the kernel,
// not judged, so it is never answered twice.
func (g progGen) entry(m *ebpf.Map, dst int16, label string) asm.Instructions {
	p := asm.Instructions{asm.Mov.Imm(asm.R7, 0).WithSymbol(label)}
	p = append(p, g.loadBytes(asm.R7, stackMAC, 6)...)
	p = append(p, g.lookup(m, dst, label+"-lookup")...)
	return append(p,
		asm.StoreMem(asm.RFP, stackEntry, asm.R0, asm.DWord),
		asm.LoadMem(asm.R1, asm.R0, entryMAC, asm.Word),
		asm.LoadMem(asm.R2, asm.RFP, stackMAC, asm.Word),
		asm.JNE.Reg(asm.R1, asm.R2, g.notOurs),
		asm.LoadMem(asm.R1, asm.R0, entryMAC+4, asm.Half),
		asm.LoadMem(asm.R2, asm.RFP, stackMAC+4, asm.Half),
		asm.JNE.Reg(asm.R1, asm.R2, g.notOurs),
	)
}

// notTaken drops, in the capture filter, a frame the kernel path took.
func (g progGen) notTaken() asm.Instructions {
	if g.kind != capturePass {
		return nil
	}
	return asm.Instructions{
		asm.LoadMem(asm.R0, asm.R6, skbPktType, asm.Word),
		asm.JEq.Imm(asm.R0, 0 /* PACKET_HOST */, labelDrop),
	}
}

// arp passes ARP whose target is a VIP, whatever its destination MAC.
func (g progGen) arp(v4 *ebpf.Map) asm.Instructions {
	p := asm.Instructions{asm.Mov.Imm(asm.R7, ethHdrLen+24).WithSymbol("arp")}
	p = append(p, g.loadBytes(asm.R7, stackTarget, 4)...)
	p = append(p, g.lookup(v4, stackTarget, "arp-lookup")...)
	return append(p, asm.Ja.Label(labelAccept))
}

// ipv4 handles an IPv4 frame, leaving the hash in R3 for the ending.
func (g progGen) ipv4(v4 *ebpf.Map) asm.Instructions {
	// The header first: the VIP is its destination.
	p := asm.Instructions{asm.Mov.Imm(asm.R7, ethHdrLen).WithSymbol("ipv4")}
	p = append(p, g.notTaken()...)
	p = append(p, g.loadBytes(asm.R7, stackIP, ipv4MinHdrLen)...)
	p = append(p, g.entry(v4, stackDst4, "ipv4-entry")...)
	p = append(p,
		// Version 4, and the header length in bytes into R7; a packet to a
		// VIP with neither right is user space's to count as malformed.
		asm.LoadMem(asm.R7, asm.RFP, stackIP, asm.Byte),
		asm.Mov.Reg(asm.R0, asm.R7),
		asm.RSh.Imm(asm.R0, 4),
		asm.JNE.Imm(asm.R0, 4, g.userSpace),
		asm.And.Imm(asm.R7, 0x0f),
		asm.JLT.Imm(asm.R7, 5, g.userSpace),
		asm.LSh.Imm(asm.R7, 2),
		// Fragments are user space's: MF or an offset.
		asm.LoadMem(asm.R0, asm.RFP, stackIP+6, asm.Half),
		asm.And.Imm(asm.R0, le16([]byte{ipFlagMF>>8 | ipFragOffMask>>8, 0xff})),
		asm.JNE.Imm(asm.R0, 0, g.userSpace),
		asm.LoadMem(asm.R8, asm.RFP, stackIP+9, asm.Byte),
		asm.JEq.Imm(asm.R8, protoICMP, g.userSpace),
		asm.JEq.Imm(asm.R8, protoFloodProbe, g.userSpace),
		asm.LoadMem(asm.R0, asm.RFP, stackEntry, asm.DWord),
		asm.LoadMem(asm.R9, asm.R0, entryFlags, asm.Byte),
		asm.JSet.Imm(asm.R9, entryTCPOnly, "ipv4-tcponly"),
		asm.Ja.Label("ipv4-proto-ok"),
		asm.JNE.Imm(asm.R8, protoTCP, g.userSpace).WithSymbol("ipv4-tcponly"),
		// The ports as an x86-64 kernel loads them, little-endian, from
		// the protocol's ports offset into the L4 header (every protocol's
		// first four bytes for the nftables hash); zeros for protocols
		// without ports. A packet too short to hold them is not taken,
		// nor passed: a classic filter's load past the end dropped it.
		asm.StoreImm(asm.RFP, stackPorts, 0, asm.Word).WithSymbol("ipv4-proto-ok"),
		asm.LoadMem(asm.R1, asm.R0, entryWords, asm.Byte),
		asm.JLE.Imm(asm.R1, 1, "ipv4-hash"),
		asm.Mov.Reg(asm.R1, asm.R7),
		asm.Add.Imm(asm.R1, ethHdrLen),
		asm.JSet.Imm(asm.R9, entryNFTables, "ipv4-ports"),
	)
	p = append(p, portsOffset(asm.R1, "ipv4", "ipv4-ports")...)
	p = append(p, asm.Ja.Label("ipv4-hash"))
	p = append(p, asm.Mov.Reg(asm.R0, asm.R1).WithSymbol("ipv4-ports"))
	p = append(p, g.loadBytes(asm.R0, stackPorts, 4)...)
	p = append(p, zeroUnhashedPorts("ipv4")...)
	// The source address, as x86-64 loads it; CLUSTERIP hashes
	// ntohl(saddr).
	p = append(p,
		asm.LoadMem(asm.R0, asm.RFP, stackEntry, asm.DWord).WithSymbol("ipv4-hash"),
		asm.LoadMem(asm.R9, asm.RFP, stackIP+12, asm.Word),
		asm.LoadMem(asm.R1, asm.R0, entryFlags, asm.Byte),
		asm.JSet.Imm(asm.R1, entryNFTables, "ipv4-swapped"),
		asm.HostTo(asm.BE, asm.R9, asm.Word),
	)
	const a, b, c, t, u = asm.R1, asm.R2, asm.R3, asm.R4, asm.R5
	abc := [3]asm.Register{a, b, c}
	p = append(p,
		asm.LoadMem(t, asm.R0, entryIV, asm.Word).WithSymbol("ipv4-swapped"),
		asm.Mov.Reg32(a, asm.R9),
		asm.Add.Reg32(a, t),
		asm.LoadMem(b, asm.RFP, stackPorts, asm.Half),
		asm.Add.Reg32(b, t),
		asm.LoadMem(c, asm.RFP, stackPorts+2, asm.Half),
		asm.Add.Reg32(c, t),
	)
	p = append(p, jhashFinalInsns(abc, t, u)...)
	return append(p,
		asm.Mov.Reg(asm.R9, asm.R7), // the transport header's offset, for take
		asm.Add.Imm(asm.R9, ethHdrLen),
		asm.Ja.Label("number"),
	)
}

// portsOffset adds to off the CLUSTERIP ports offset of the protocol in R8
// (hash.PortsOffset) and goes on to found; a protocol without ports falls
// through, with R0 clobbered. prefix makes its labels unique.
func portsOffset(off asm.Register, prefix, found string) asm.Instructions {
	var p asm.Instructions
	for proto := 0; proto < 256; proto++ {
		o := hash.PortsOffset(uint8(proto))
		if o < 0 {
			continue
		}
		skip := fmt.Sprintf("%s-notproto%d", prefix, proto)
		p = append(p,
			asm.JNE.Imm(asm.R8, int32(proto), skip),
			asm.Add.Imm(off, int32(o)),
			asm.Ja.Label(found),
			asm.Mov.Imm(asm.R0, 0).WithSymbol(skip),
		)
	}
	return p
}

// zeroUnhashedPorts clears the destination port unless the entry's mode
// hashes three words, so that adding it adds nothing.
func zeroUnhashedPorts(prefix string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R0, asm.RFP, stackEntry, asm.DWord),
		asm.LoadMem(asm.R1, asm.R0, entryWords, asm.Byte),
		asm.JGE.Imm(asm.R1, 3, prefix+"-ports-done"),
		asm.StoreImm(asm.RFP, stackPorts+2, 0, asm.Half),
		asm.Mov.Imm(asm.R0, 0).WithSymbol(prefix + "-ports-done"),
	}
}

// ipv6 handles an IPv6 frame. The capture filter first passes neighbour
// solicitations for a VIP, whatever their destination (the solicited-node
// group, the cluster MAC, the NIC's MAC). The hash is computed only for
// packets whose transport header follows the fixed header at once:
// packets with extension headers (fragments among them), ICMPv6 and the
// flood check's probes are user space's, which walks the chain and matches
// errors to the flows they quote. It hashes as nftables does
// (hash.Config.Node6): one mix round over the first three source words,
// then the fourth and the port words into the final round, leaving the
// hash in R3 for the ending.
func (g progGen) ipv6(v6 *ebpf.Map) asm.Instructions {
	p := asm.Instructions{asm.Mov.Imm(asm.R7, ethHdrLen).WithSymbol("ipv6")}
	p = append(p, g.loadBytes(asm.R7, stackIP, ipv6HdrLen)...)
	p = append(p, asm.LoadMem(asm.R7, asm.RFP, stackIP+6, asm.Byte)) // next header
	if g.kind == capturePass {
		p = append(p,
			asm.JNE.Imm(asm.R7, protoICMPv6, "ipv6-not-ns"),
			asm.Mov.Imm(asm.R0, ethHdrLen+ipv6HdrLen),
		)
		p = append(p, g.loadBytes(asm.R0, stackTarget, 1)...)
		p = append(p,
			asm.LoadMem(asm.R0, asm.RFP, stackTarget, asm.Byte),
			asm.JNE.Imm(asm.R0, ndNeighborSolicit, "ipv6-not-ns"),
			asm.Mov.Imm(asm.R0, ethHdrLen+ipv6HdrLen+8),
		)
		p = append(p, g.loadBytes(asm.R0, stackTarget, 16)...)
		p = append(p, g.lookup(v6, stackTarget, "ipv6-ns-lookup")...)
		p = append(p,
			asm.Ja.Label(labelAccept),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("ipv6-not-ns"),
		)
		p = append(p, g.notTaken()...)
	}
	p = append(p, g.entry(v6, stackDst6, "ipv6-entry")...)
	p = append(p,
		// Version 6; a packet to a VIP without it is user space's to
		// count as malformed.
		asm.LoadMem(asm.R0, asm.RFP, stackIP, asm.Byte),
		asm.RSh.Imm(asm.R0, 4),
		asm.JNE.Imm(asm.R0, 6, g.userSpace),
		asm.LoadMem(asm.R7, asm.RFP, stackIP+6, asm.Byte), // next header, again: entry used R7
	)
	for _, proto := range []int32{nextHopByHop, nextRouting, nextFragment, nextAH, nextNone, nextDestOpts, protoICMPv6, protoFloodProbe} {
		p = append(p, asm.JEq.Imm(asm.R7, proto, g.userSpace))
	}
	p = append(p,
		asm.LoadMem(asm.R0, asm.RFP, stackEntry, asm.DWord),
		asm.LoadMem(asm.R1, asm.R0, entryFlags, asm.Byte),
		asm.JSet.Imm(asm.R1, entryTCPOnly, "ipv6-tcponly"),
		asm.Ja.Label("ipv6-proto-ok"),
		asm.JNE.Imm(asm.R7, protoTCP, g.userSpace).WithSymbol("ipv6-tcponly"),
		asm.StoreImm(asm.RFP, stackPorts, 0, asm.Word).WithSymbol("ipv6-proto-ok"),
		asm.LoadMem(asm.R1, asm.R0, entryWords, asm.Byte),
		asm.JLE.Imm(asm.R1, 1, "ipv6-hash"),
		asm.Mov.Imm(asm.R0, ethHdrLen+ipv6HdrLen),
	)
	p = append(p, g.loadBytes(asm.R0, stackPorts, 4)...)
	p = append(p, zeroUnhashedPorts("ipv6")...)
	const a, b, c, t, u = asm.R1, asm.R2, asm.R3, asm.R4, asm.R5
	abc := [3]asm.Register{a, b, c}
	p = append(p,
		asm.LoadMem(asm.R0, asm.RFP, stackEntry, asm.DWord).WithSymbol("ipv6-hash"),
		asm.LoadMem(u, asm.R0, entryIV, asm.Word),
	)
	for i, r := range abc {
		p = append(p,
			asm.LoadMem(r, asm.RFP, stackIP+8+4*int16(i), asm.Word), // saddr, as x86-64 loads it
			asm.Add.Reg32(r, u),
		)
	}
	for _, s := range jhashMix {
		x, z, y, k := abc[s.x], abc[s.z], abc[s.y], int32(s.k)
		p = append(p,
			asm.Sub.Reg32(x, z),
			asm.Mov.Reg32(t, z),
			asm.LSh.Imm32(t, k),
			asm.Mov.Reg32(u, z),
			asm.RSh.Imm32(u, 32-k),
			asm.Or.Reg32(t, u),
			asm.Xor.Reg32(x, t),
			asm.Add.Reg32(z, y),
		)
	}
	p = append(p,
		asm.LoadMem(t, asm.RFP, stackIP+20, asm.Word),
		asm.Add.Reg32(a, t),
		asm.LoadMem(t, asm.RFP, stackPorts, asm.Half),
		asm.Add.Reg32(b, t),
		asm.LoadMem(t, asm.RFP, stackPorts+2, asm.Half),
		asm.Add.Reg32(c, t),
	)
	p = append(p, jhashFinalInsns(abc, t, u)...)
	return append(p,
		asm.Mov.Reg(asm.R8, asm.R7),               // the protocol and
		asm.Mov.Imm(asm.R9, ethHdrLen+ipv6HdrLen), // the transport header's offset, for take
		asm.Ja.Label("number"),
	)
}

// number tests whether the hash in R3 falls in the range of a number in the
// entry's set (reciprocal_scale(h, total) + 1), going on to yes if it does.
func (g progGen) number(no string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R0, asm.RFP, stackEntry, asm.DWord).WithSymbol("number"),
		asm.LoadMem(asm.R1, asm.R0, entryTotal, asm.Word),
		asm.Mov.Reg32(asm.R2, asm.R3),
		asm.Mul.Reg(asm.R2, asm.R1),
		asm.RSh.Imm(asm.R2, 32), // the number, less one
		asm.LoadMem(asm.R4, asm.R0, entrySet, asm.DWord),
		asm.RSh.Reg(asm.R4, asm.R2),
		asm.And.Imm(asm.R4, 1),
		asm.JEq.Imm(asm.R4, 0, no),
	}
}

// take ends the kernel path: a frame whose number the entry holds becomes
// the host's and is counted in the entry's slot, and, if the entry says
// so, its flow is recorded unless it is TCP; it then goes on (TCX_NEXT), as
// does a frame whose number is in the entry's pass set. The rest, the
// other nodes' share, is dropped. R8 holds the protocol, R9 the transport
// header's offset.
func (g progGen) take(countersFD, flowsFD int) asm.Instructions {
	p := g.number("not-taken")
	p = append(p,
		asm.Add.Imm(asm.R2, 1),
		asm.StoreMem(asm.RFP, stackSeen+flowValueNode, asm.R2, asm.DWord), // the number; the rest zero
		asm.LoadMem(asm.R1, asm.R0, entrySlot, asm.Word),
		asm.StoreMem(asm.RFP, stackKey, asm.R1, asm.Word),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 0), // PACKET_HOST
		asm.FnSkbChangeType.Call(),
		asm.LoadMapPtr(asm.R1, countersFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stackKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "record"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.LoadMem(asm.R0, asm.RFP, stackEntry, asm.DWord).WithSymbol("record"),
		asm.LoadMem(asm.R1, asm.R0, entryFlags, asm.Byte),
		asm.JSet.Imm(asm.R1, entryRecordFlows, "record-flow"),
		asm.Ja.Label(labelNext),
		asm.JEq.Imm(asm.R8, protoTCP, labelNext).WithSymbol("record-flow"),
		// The key: slot, client address, raw ports, protocol.
		asm.LoadMem(asm.R1, asm.R0, entrySlot, asm.Word),
		asm.StoreMem(asm.RFP, stackFlow+flowKeySlot, asm.R1, asm.Word),
		asm.StoreImm(asm.RFP, stackFlow+flowKeyProto, 0, asm.Word),
		asm.StoreImm(asm.RFP, stackFlow+flowKeyProto+4, 0, asm.Word),
		asm.StoreMem(asm.RFP, stackFlow+flowKeyProto, asm.R8, asm.Byte),
		asm.LoadMem(asm.R2, asm.R6, skbProtocol, asm.Word),
		asm.JEq.Imm(asm.R2, be16(etherTypeIPv6), "record-src6"),
		// IPv4, mapped: ::ffff:a.b.c.d.
		asm.StoreImm(asm.RFP, stackFlow+flowKeySrc, 0, asm.Word),
		asm.StoreImm(asm.RFP, stackFlow+flowKeySrc+4, 0, asm.Word),
		asm.StoreImm(asm.RFP, stackFlow+flowKeySrc+8, int64(le32([]byte{0, 0, 0xff, 0xff})), asm.Word),
		asm.LoadMem(asm.R2, asm.RFP, stackIP+12, asm.Word),
		asm.StoreMem(asm.RFP, stackFlow+flowKeySrc+12, asm.R2, asm.Word),
		asm.Ja.Label("record-ports"),
	)
	for i := int16(0); i < 4; i++ {
		ins := asm.LoadMem(asm.R2, asm.RFP, stackIP+8+4*i, asm.Word)
		if i == 0 {
			ins = ins.WithSymbol("record-src6")
		}
		p = append(p, ins, asm.StoreMem(asm.RFP, stackFlow+flowKeySrc+4*i, asm.R2, asm.Word))
	}
	// The raw ports where the flow table reads them (hash.Config.RawPorts):
	// every protocol's first four bytes for the nftables hash, else at
	// the protocol's ports offset; zeros for a protocol without ports or a
	// header too short for them (a failed load zeroes its buffer).
	p = append(p,
		asm.StoreImm(asm.RFP, stackFlow+flowKeyPorts, 0, asm.Word).WithSymbol("record-ports"),
		asm.LoadMem(asm.R1, asm.R0, entryFlags, asm.Byte),
		asm.Mov.Reg(asm.R2, asm.R9),
		asm.JSet.Imm(asm.R1, entryNFTables, "record-load"),
	)
	p = append(p, portsOffset(asm.R2, "record", "record-load")...)
	p = append(p,
		asm.Ja.Label("record-update"),
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("record-load"),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, stackFlow+flowKeyPorts),
		asm.Mov.Imm(asm.R4, 4),
		asm.FnSkbLoadBytes.Call(),
		asm.FnKtimeGetCoarseNs.Call().WithSymbol("record-update"),
		asm.StoreMem(asm.RFP, stackSeen+flowValueSeen, asm.R0, asm.DWord),
		// A known flow is refreshed in place, and only when its number
		// changed or its time is flowSeenStep old: a lookup is a fraction
		// of an update, which replaces the LRU's element on every call.
		asm.LoadMapPtr(asm.R1, flowsFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stackFlow),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "record-insert"),
		asm.LoadMem(asm.R1, asm.R0, flowValueNode, asm.DWord),
		asm.LoadMem(asm.R2, asm.RFP, stackSeen+flowValueNode, asm.DWord),
		asm.JNE.Reg(asm.R1, asm.R2, "record-refresh"),
		asm.LoadMem(asm.R1, asm.R0, flowValueSeen, asm.DWord),
		asm.LoadMem(asm.R3, asm.RFP, stackSeen+flowValueSeen, asm.DWord),
		asm.Sub.Reg(asm.R3, asm.R1),
		asm.JLT.Imm(asm.R3, int32(flowSeenStep.Nanoseconds()), labelNext),
		asm.LoadMem(asm.R3, asm.RFP, stackSeen+flowValueSeen, asm.DWord).WithSymbol("record-refresh"),
		asm.StoreMem(asm.R0, flowValueSeen, asm.R3, asm.DWord),
		asm.StoreMem(asm.R0, flowValueNode, asm.R2, asm.DWord),
		asm.Ja.Label(labelNext),
		asm.LoadMapPtr(asm.R1, flowsFD).WithSymbol("record-insert"),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, stackFlow),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, stackSeen),
		asm.Mov.Imm(asm.R4, 0), // BPF_ANY
		asm.FnMapUpdateElem.Call(),
		asm.Mov.Imm(asm.R0, tcxNext).WithSymbol(labelNext),
		asm.Return(),
		// R0 the entry, R2 the number less one.
		asm.LoadMem(asm.R4, asm.R0, entryPass, asm.DWord).WithSymbol("not-taken"),
		asm.RSh.Reg(asm.R4, asm.R2),
		asm.And.Imm(asm.R4, 1),
		asm.JNE.Imm(asm.R4, 0, labelNext),
		asm.Mov.Imm(asm.R0, tcxDrop),
		asm.Return(),
	)
	return p
}

// pass ends the capture filter: a frame whose number the entry holds goes
// to user space, whole (GSO super-frames of 64 KB included).
func (g progGen) pass() asm.Instructions {
	p := g.number(labelDrop)
	return append(p,
		asm.Mov.Imm(asm.R0, filterAccept).WithSymbol(labelAccept),
		asm.Return(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol(labelDrop),
		asm.Return(),
	)
}

// jhashFinalInsns is __jhash_final(a, b, c) on the registers abc, with t
// and u as scratch.
func jhashFinalInsns(abc [3]asm.Register, t, u asm.Register) asm.Instructions {
	var p asm.Instructions
	for _, s := range jhashFinal {
		x, y, k := abc[s.x], abc[s.y], int32(s.k)
		p = append(p,
			asm.Xor.Reg32(x, y),
			asm.Mov.Reg32(t, y),
			asm.LSh.Imm32(t, k),
			asm.Mov.Reg32(u, y),
			asm.RSh.Imm32(u, 32-k),
			asm.Or.Reg32(t, u),
			asm.Sub.Reg32(x, t),
		)
	}
	return p
}
