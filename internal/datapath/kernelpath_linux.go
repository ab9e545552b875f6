package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/nodeset"
)

// kernelPath serves a cluster's settled numbers inside the kernel. An eBPF
// program on the interface's TCX ingress hook computes the same jhash as the
// capture filter and, for a frame whose number it may take, changes the
// frame's packet type from multicast to host: the stack then takes it as it
// takes any frame for one of its addresses (the VIP lives on the TAP), the
// way the nftables recipe's `meta pkttype set host` does. Such a frame never
// reaches user space; the capture filter leaves it out.
//
// What needs judging stays in user space: ARP, fragments, ICMP, numbers in a
// handoff, and, with flow tracking, everything but TCP (TCP connections can
// be read back from the socket table when a number leaves the kernel path;
// connectionless flows cannot).
//
// The program is attached through a BPF link owned by this process: if the
// daemon dies, the kernel detaches it, and the node stops answering at once
// instead of answering for numbers nobody manages any more.
type kernelPath struct {
	vip     netip.Addr
	mac     net.HardwareAddr
	hash    hash.Config
	counter *ebpf.Map // per-CPU count of frames taken
	link    link.Link
	prog    *ebpf.Program

	// What the attached program takes.
	set    nodeset.NodeSet
	protos kernelProtos
}

// kernelProtos says which whole (unfragmented) IPv4 packets the kernel path
// may take for its numbers. ICMP always goes to user space: an ICMP error is
// owned by the flow it quotes, not by its sender. So do the flood check's
// probes, which every node must see.
type kernelProtos uint8

const (
	kernelTCPOnly    kernelProtos = iota // with flow tracking
	kernelAllButICMP                     // without: every answer is the hash's
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
)

// openKernelPath attaches a program that takes nothing yet.
func openKernelPath(ifindex int, vip netip.Addr, mac net.HardwareAddr, cfg hash.Config) (*kernelPath, error) {
	counter, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "cip_taken", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("kernel path: counter map: %w", err)
	}
	k := &kernelPath{vip: vip, mac: mac, hash: cfg, counter: counter}
	prog, err := k.load(0, kernelTCPOnly)
	if err != nil {
		counter.Close()
		return nil, err
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		prog.Close()
		counter.Close()
		return nil, fmt.Errorf("kernel path: attach to TCX ingress of interface %d: %w", ifindex, err)
	}
	k.link, k.prog = l, prog
	return k, nil
}

// update makes the kernel path take exactly the packets of protos whose
// number is in set; the link swaps programs atomically.
func (k *kernelPath) update(set nodeset.NodeSet, protos kernelProtos) error {
	if set == k.set && protos == k.protos {
		return nil
	}
	prog, err := k.load(set, protos)
	if err != nil {
		return err
	}
	if err := k.link.Update(prog); err != nil {
		prog.Close()
		return fmt.Errorf("kernel path: swap program: %w", err)
	}
	k.prog.Close()
	k.prog, k.set, k.protos = prog, set, protos
	return nil
}

func (k *kernelPath) load(set nodeset.NodeSet, protos kernelProtos) (*ebpf.Program, error) {
	var insns asm.Instructions
	if k.vip.Is6() {
		insns = kernelProgram6(k.vip.As16(), k.mac, k.hash, set, protos, k.counter.FD())
	} else {
		insns = kernelProgram(k.vip.As4(), k.mac, k.hash, set, protos, k.counter.FD())
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "cip_ingress",
		Type:         ebpf.SchedCLS,
		Instructions: insns,
		License:      "Dual MIT/GPL",
	})
	if err != nil {
		return nil, fmt.Errorf("kernel path: load program: %w", err)
	}
	return prog, nil
}

// taken returns how many frames the kernel path has handed to the stack.
func (k *kernelPath) taken() uint64 {
	var perCPU []uint64
	if err := k.counter.Lookup(uint32(0), &perCPU); err != nil {
		return 0
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n
}

func (k *kernelPath) close() error {
	return errors.Join(k.link.Close(), k.prog.Close(), k.counter.Close())
}

func le32(b []byte) int32 { return int32(binary.LittleEndian.Uint32(b)) }
func le16(b []byte) int32 { return int32(binary.LittleEndian.Uint16(b)) }

// Offsets in struct __sk_buff (include/uapi/linux/bpf.h).
const (
	skbProtocol    = 16
	skbVLANPresent = 20
)

// Stack layout of the program: the Ethernet destination, the IPv4 header
// and the ports, each loaded to an aligned slot.
const (
	stackMAC   = -8  // 6 bytes
	stackIP    = -32 // 20 bytes
	stackPorts = -40 // 4 bytes
	stackKey   = -44 // the counter's key
)

// kernelProgram builds the kernel path's program: the capture filter's
// checks and hash, ending in "take" for a number in set instead of "pass to
// user space". Registers: R6 the skb; after the loads, R7 the IHL in bytes,
// R8 the protocol, R9 the source address; the hash uses R1-R5 once no more
// helpers are called.
func kernelProgram(vip [4]byte, mac net.HardwareAddr, cfg hash.Config, set nodeset.NodeSet, protos kernelProtos, counterFD int) asm.Instructions {
	if set == 0 {
		return asm.Instructions{asm.Mov.Imm(asm.R0, tcxNext), asm.Return()}
	}
	p := framePrologue(etherTypeIPv4, mac, stackMAC)
	p = append(p, skbLoadBytes(asm.R7, stackIP, ipv4MinHdrLen)...)
	p = append(p,
		asm.LoadMem(asm.R0, asm.RFP, stackIP+16, asm.Word), // daddr
		asm.JNE.Imm32(asm.R0, le32(vip[:]), "next"),
		// Version 4, and the header length in bytes into R7.
		asm.LoadMem(asm.R7, asm.RFP, stackIP, asm.Byte),
		asm.Mov.Reg(asm.R0, asm.R7),
		asm.RSh.Imm(asm.R0, 4),
		asm.JNE.Imm(asm.R0, 4, "next"),
		asm.And.Imm(asm.R7, 0x0f),
		asm.JLT.Imm(asm.R7, 5, "next"),
		asm.LSh.Imm(asm.R7, 2),
		// Fragments go to user space: MF or an offset.
		asm.LoadMem(asm.R0, asm.RFP, stackIP+6, asm.Half),
		asm.And.Imm(asm.R0, le16([]byte{ipFlagMF>>8 | ipFragOffMask>>8, 0xff})),
		asm.JNE.Imm(asm.R0, 0, "next"),
		asm.LoadMem(asm.R8, asm.RFP, stackIP+9, asm.Byte),
	)
	if protos == kernelTCPOnly {
		p = append(p, asm.JNE.Imm(asm.R8, protoTCP, "next"))
	} else {
		p = append(p,
			asm.JEq.Imm(asm.R8, protoICMP, "next"),
			asm.JEq.Imm(asm.R8, protoFloodProbe, "next"),
		)
	}
	p = append(p, asm.LoadMem(asm.R9, asm.RFP, stackIP+12, asm.Word)) // saddr, as x86-64 loads it
	if cfg.Compat != hash.NFTables {
		p = append(p, asm.HostTo(asm.BE, asm.R9, asm.Word)) // CLUSTERIP hashes ntohl(saddr)
	}
	words, initval := jhashWords(cfg)
	// The ports as an x86-64 kernel loads them: little-endian, from
	// PortsOffset into the L4 header; zeros for protocols without ports.
	p = append(p, asm.StoreImm(asm.RFP, stackPorts, 0, asm.Word))
	if words > 1 {
		p = append(p, portsLoad(cfg, protos)...)
	}
	iv := int32(initval)
	const a, b, c, t, u = asm.R1, asm.R2, asm.R3, asm.R4, asm.R5
	abc := [3]asm.Register{a, b, c}
	p = append(p,
		asm.Mov.Reg32(a, asm.R9),
		asm.Add.Imm32(a, iv),
		asm.Mov.Imm32(b, iv),
		asm.Mov.Imm32(c, iv),
	)
	if words > 1 {
		p = append(p,
			asm.LoadMem(b, asm.RFP, stackPorts, asm.Half),
			asm.Add.Imm32(b, iv),
		)
	}
	if words > 2 {
		p = append(p,
			asm.LoadMem(c, asm.RFP, stackPorts+2, asm.Half),
			asm.Add.Imm32(c, iv),
		)
	}
	p = append(p, jhashFinalInsns(abc, t, u)...)
	return append(p, takeSpans(cfg.TotalNodes, set, c, stackKey, counterFD)...)
}

// framePrologue starts a kernel path program: R6 the skb; frames with a
// VLAN tag, of another EtherType or not sent to the cluster MAC mac (loaded
// to the stack slot macSlot) go on untouched; R7 is left at the network
// header's offset.
func framePrologue(etherType uint16, mac net.HardwareAddr, macSlot int16) asm.Instructions {
	p := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		// VLAN-tagged frames belong to the VLAN's interface.
		asm.LoadMem(asm.R0, asm.R6, skbVLANPresent, asm.Word),
		asm.JNE.Imm(asm.R0, 0, "next"),
		asm.LoadMem(asm.R0, asm.R6, skbProtocol, asm.Word),
		asm.JNE.Imm(asm.R0, le16([]byte{byte(etherType >> 8), byte(etherType)}), "next"),
		asm.Mov.Imm(asm.R7, 0),
	}
	p = append(p, skbLoadBytes(asm.R7, macSlot, 6)...)
	return append(p,
		asm.LoadMem(asm.R0, asm.RFP, macSlot, asm.Word),
		asm.JNE.Imm32(asm.R0, le32(mac[0:4]), "next"),
		asm.LoadMem(asm.R0, asm.RFP, macSlot+4, asm.Half),
		asm.JNE.Imm32(asm.R0, le16(mac[4:6]), "next"),
		asm.Mov.Imm(asm.R7, ethHdrLen),
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

// takeSpans ends a kernel path program: if the hash in h falls in the range
// of a number in set (reciprocal_scale(h, total) + 1), the frame becomes
// the host's and is counted; every frame then goes on (TCX_NEXT). key is a
// free stack slot; R6 holds the skb.
func takeSpans(total uint32, set nodeset.NodeSet, h asm.Register, key int16, counterFD int) asm.Instructions {
	var p asm.Instructions
	for i, s := range hashSpans(total, set) {
		nextSpan := fmt.Sprintf("span%d", i+1)
		p = append(p,
			asm.JLT.Imm32(h, int32(s.lo), nextSpan),
			asm.JLE.Imm32(h, int32(s.hi), "take"),
			asm.Mov.Imm(asm.R0, 0).WithSymbol(nextSpan),
		)
	}
	return append(p,
		asm.Ja.Label("next"),
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("take"),
		asm.Mov.Imm(asm.R2, 0), // PACKET_HOST
		asm.FnSkbChangeType.Call(),
		asm.StoreImm(asm.RFP, key, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, counterFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, int32(key)),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "next"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, tcxNext).WithSymbol("next"),
		asm.Return(),
	)
}

// skbLoadBytes loads n bytes of the frame at offset off (a register) to the
// stack slot at slot, going on to "next" if the frame is too short.
func skbLoadBytes(off asm.Register, slot int16, n int32) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, off),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, int32(slot)),
		asm.Mov.Imm(asm.R4, n),
		asm.FnSkbLoadBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, "next"),
	}
}

// portsLoad loads the four port bytes at cfg.PortsOffset(proto) past the
// IP header (R7 bytes after the Ethernet header) into stackPorts. A packet
// too short to hold them is left to user space, as the capture filter does.
func portsLoad(cfg hash.Config, protos kernelProtos) asm.Instructions {
	var p asm.Instructions
	if cfg.Compat == hash.NFTables {
		// Every protocol's first four bytes: one load.
		p = append(p,
			asm.Mov.Reg(asm.R0, asm.R7),
			asm.Add.Imm(asm.R0, ethHdrLen),
		)
		return append(p, skbLoadBytes(asm.R0, stackPorts, 4)...)
	}
	for proto := 0; proto < 256; proto++ {
		off := cfg.PortsOffset(uint8(proto))
		if off < 0 || !protos.takes(uint8(proto)) {
			continue
		}
		skip := fmt.Sprintf("ports%d", proto)
		p = append(p,
			asm.JNE.Imm(asm.R8, int32(proto), skip),
			asm.Mov.Reg(asm.R0, asm.R7),
			asm.Add.Imm(asm.R0, int32(ethHdrLen+off)),
		)
		p = append(p, skbLoadBytes(asm.R0, stackPorts, 4)...)
		p = append(p,
			asm.Ja.Label("ports"),
			asm.Mov.Imm(asm.R0, 0).WithSymbol(skip),
		)
	}
	return append(p, asm.Mov.Imm(asm.R0, 0).WithSymbol("ports"))
}
