package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/nodeset"
	"golang.org/x/sys/unix"
)

// The kernel path serves clusters' settled numbers inside the kernel: one
// program (see program) on each interface's TCX ingress hook serves every
// cluster on the interface and, for a frame whose number it may take,
// changes the frame's packet type from multicast to host: the stack then
// takes it as it takes any frame for one of its addresses (the VIP lives on
// the TAP), the way the nftables recipe's `meta pkttype set host` does.
// Such a frame never reaches user space; the capture filter leaves it out.
//
// What needs judging stays in user space: ARP, fragments, ICMP and numbers
// in a handoff. With flow tracking, user space must know every connection
// of a number that leaves the kernel path: TCP connections are read back
// from the socket table, and the connectionless flows the kernel path took
// from its flow map (an LRU hash it records them in).
//
// The program is attached through a BPF link owned by this process: if the
// daemon dies, the kernel detaches it, and the node stops answering at once
// instead of answering for numbers nobody manages any more.

// kernelProtos says which whole (unfragmented) packets the kernel path may
// take for its numbers. ICMP always goes to user space: an ICMP error is
// owned by the flow it quotes, not by its sender. So do the flood check's
// probes, which every node must see.
type kernelProtos uint8

const (
	kernelTCPOnly     kernelProtos = iota // TCP alone
	kernelAllButICMP                      // without flow tracking: every answer is the hash's
	kernelAllRecorded                     // with flow tracking: connectionless flows recorded in the flow map
)

// takes reports whether a protocol is one the kernel path may take.
func (f kernelProtos) takes(proto uint8) bool {
	if f == kernelTCPOnly {
		return proto == protoTCP
	}
	return proto != protoICMP && proto != protoICMPv6 && proto != protoFloodProbe
}

// TCX verdicts.
const (
	tcxNext = -1 // let the next program, then the stack, have it
	tcxDrop = 2
)

// ifaceProgram is the kernel path of one interface: the program, its maps
// and, once attached, its link.
type ifaceProgram struct {
	vips     vipMaps
	counters *ebpf.Map // per-CPU count of frames taken, per slot
	flows    *ebpf.Map // the connectionless flows taken (flowMapKey)
	prog     *ebpf.Program
	link     link.Link

	ifindex int
	refs    int
	slots   []bool // in use
}

// attached holds the programs attached to interfaces, by interface index.
var attached struct {
	sync.Mutex
	byIndex map[int]*ifaceProgram
}

// newIfaceProgram loads the program and its maps without attaching them.
func newIfaceProgram() (*ifaceProgram, error) {
	ip := &ifaceProgram{slots: make([]bool, maxVIPs)}
	var err error
	if ip.vips, err = newVIPMaps("cip_take"); err != nil {
		return nil, fmt.Errorf("kernel path: %w", err)
	}
	ip.counters, err = ebpf.NewMap(&ebpf.MapSpec{Name: "cip_taken", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: maxVIPs})
	if err != nil {
		ip.close()
		return nil, fmt.Errorf("kernel path: counters: %w", err)
	}
	ip.flows, err = ebpf.NewMap(&ebpf.MapSpec{Name: "cip_flows", Type: ebpf.LRUHash, KeySize: flowMapKeyLen, ValueSize: flowMapValueLen, MaxEntries: maxKernelFlows})
	if err != nil {
		ip.close()
		return nil, fmt.Errorf("kernel path: flow map: %w", err)
	}
	ip.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "cip_ingress",
		Type:         ebpf.SchedCLS,
		Instructions: program(kernelTake, ip.vips, ip.counters, ip.flows),
		License:      "Dual MIT/GPL",
	})
	if err != nil {
		ip.close()
		return nil, fmt.Errorf("kernel path: load program: %w", err)
	}
	return ip, nil
}

func (ip *ifaceProgram) close() error {
	var errs []error
	if ip.link != nil {
		errs = append(errs, ip.link.Close())
	}
	if ip.prog != nil {
		errs = append(errs, ip.prog.Close())
	}
	for _, m := range []*ebpf.Map{ip.counters, ip.flows} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(append(errs, ip.vips.close())...)
}

// kernelPath is one cluster's entry in its interface's program.
type kernelPath struct {
	iface *ifaceProgram
	vip   netip.Addr
	mac   net.HardwareAddr
	hash  hash.Config
	slot  uint32

	// What the program takes for this cluster, and what it leaves to
	// user space.
	set, pass nodeset.NodeSet
	protos    kernelProtos
}

// openKernelPath adds a cluster that takes nothing yet to the program of
// interface ifindex, attaching the program if it is the interface's first.
func openKernelPath(ifindex int, vip netip.Addr, mac net.HardwareAddr, cfg hash.Config) (*kernelPath, error) {
	attached.Lock()
	defer attached.Unlock()
	if attached.byIndex == nil {
		attached.byIndex = map[int]*ifaceProgram{}
	}
	ip := attached.byIndex[ifindex]
	if ip == nil {
		var err error
		if ip, err = newIfaceProgram(); err != nil {
			return nil, err
		}
		ip.link, err = link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: ip.prog, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			ip.close()
			return nil, fmt.Errorf("kernel path: attach to TCX ingress of interface %d: %w", ifindex, err)
		}
		ip.ifindex = ifindex
		attached.byIndex[ifindex] = ip
	}
	k, err := ip.add(vip, mac, cfg)
	if err != nil && ip.refs == 0 {
		// Attached for this cluster alone.
		delete(attached.byIndex, ifindex)
		ip.close()
	}
	return k, err
}

// add makes room for a cluster in the program, taking nothing yet: its
// counter slot, zeroed.
func (ip *ifaceProgram) add(vip netip.Addr, mac net.HardwareAddr, cfg hash.Config) (*kernelPath, error) {
	for i, used := range ip.slots {
		if used {
			continue
		}
		zero := make([]uint64, ebpf.MustPossibleCPU())
		if err := ip.counters.Put(uint32(i), zero); err != nil {
			return nil, fmt.Errorf("kernel path: reset counter: %w", err)
		}
		ip.slots[i] = true
		ip.refs++
		return &kernelPath{iface: ip, vip: vip, mac: mac, hash: cfg, slot: uint32(i)}, nil
	}
	return nil, fmt.Errorf("kernel path: more than %d clusters on one interface", maxVIPs)
}

// release drops one cluster's hold on the program, detaching it with the
// last. Callers hold attached.
func (ip *ifaceProgram) release() {
	if ip.refs--; ip.refs > 0 {
		return
	}
	if attached.byIndex[ip.ifindex] == ip {
		delete(attached.byIndex, ip.ifindex)
	}
	ip.close()
}

// update makes the kernel path take exactly the packets of protos whose
// number is in set, leave to user space those whose number is in pass, and
// drop the rest of the cluster's: one map update, which frames see whole or
// not at all. pass must hold every number the capture filter passes
// whenever the program may see a frame.
func (k *kernelPath) update(set, pass nodeset.NodeSet, protos kernelProtos) error {
	if set == k.set && pass == k.pass && protos == k.protos {
		return nil
	}
	var err error
	if set == 0 {
		// A cluster taking nothing costs its frames no hashing: user
		// space's filter judges them all.
		if k.set != 0 {
			err = k.iface.vips.delete(k.vip)
		}
	} else {
		e := newVIPEntry(k.vip, k.mac, k.hash, set)
		e.Slot, e.Pass = k.slot, uint64(pass)
		switch protos {
		case kernelTCPOnly:
			e.Flags |= entryTCPOnly
		case kernelAllRecorded:
			e.Flags |= entryRecordFlows
		}
		err = k.iface.vips.put(k.vip, e)
	}
	if err != nil {
		return fmt.Errorf("kernel path: %w", err)
	}
	k.set, k.pass, k.protos = set, pass, protos
	return nil
}

// taken returns how many frames the kernel path has handed to the stack
// for this cluster.
func (k *kernelPath) taken() uint64 {
	var perCPU []uint64
	if err := k.iface.counters.Lookup(k.slot, &perCPU); err != nil {
		return 0
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n
}

// close takes the cluster out of the program.
func (k *kernelPath) close() error {
	err := k.iface.vips.delete(k.vip)
	attached.Lock()
	k.iface.slots[k.slot] = false
	k.iface.release()
	attached.Unlock()
	return err
}

// kernelFlow is a connectionless flow the kernel path took.
type kernelFlow struct {
	key      flowKey
	node     uint8
	lastSeen int64 // Unix nanoseconds
}

// flows returns the connectionless flows the kernel path took for this
// cluster whose number is in numbers. The flow map keeps the time of the
// last packet on the monotonic clock; it is turned into the flow table's.
func (k *kernelPath) flows(numbers nodeset.NodeSet) ([]kernelFlow, error) {
	var mono unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono); err != nil {
		return nil, err
	}
	offset := time.Now().UnixNano() - mono.Nano()
	var out []kernelFlow
	key, value := make([]byte, flowMapKeyLen), make([]byte, flowMapValueLen)
	it := k.iface.flows.Iterate()
	for it.Next(&key, &value) {
		if binary.NativeEndian.Uint32(key[flowKeySlot:]) != k.slot {
			continue
		}
		node := value[flowValueNode]
		if !numbers.Contains(int(node)) {
			continue
		}
		f := kernelFlow{node: node, lastSeen: int64(binary.NativeEndian.Uint64(value[flowValueSeen:])) + offset}
		copy(f.key.src[:], key[flowKeySrc:flowKeySrc+16])
		f.key.sport = binary.LittleEndian.Uint16(key[flowKeyPorts:])
		f.key.dport = binary.LittleEndian.Uint16(key[flowKeyPorts+2:])
		f.key.proto = key[flowKeyProto]
		out = append(out, f)
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("kernel path: read flow map: %w", err)
	}
	return out, nil
}
