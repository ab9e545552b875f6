package datapath

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/nodeset"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

const (
	etherTypeARP  = 0x0806
	etherTypeIPv4 = 0x0800
	ethHdrLen     = 14

	// filterAccept is the snap length returned for frames that go to user
	// space: the whole frame, GSO super-frames of 64 KB included.
	filterAccept = 0x40000
)

// captureFilter returns the classic BPF program that lets through only what
// this node must judge: ARP whose target is the VIP, and IPv4 to the VIP sent
// to the cluster MAC whose node number is in pass. The number is computed in
// the kernel with the same jhash as the kernel target's, so a busy cluster
// costs a node user-space work only for its own share. Fragments and ICMP go
// to user space whatever their number: only there can later fragments be
// matched to their first and ICMP errors to the flow they quote. So do the
// flood check's probes: every node must see every one.
//
// A frame the kernel path took is left out: the kernel path marks it as sent
// to this host (PACKET_HOST) before the capture sockets, bound to IPv4 and
// ARP rather than to every protocol, see it. So each frame is judged once,
// by whichever program the kernel path runs at that instant, and moving a
// number between the paths neither loses nor duplicates a packet.
//
// IPv4 sent to the node's own unicast MAC is left to the kernel on purpose:
// such a frame was not meant for the cluster (a stale ARP entry), and taking it
// as well would answer it twice.
func captureFilter(vip netip.Addr, clusterMAC net.HardwareAddr, cfg hash.Config, pass nodeset.NodeSet) ([]bpf.RawInstruction, error) {
	if !vip.IsValid() || vip.Is4In6() || len(clusterMAC) != 6 {
		return nil, fmt.Errorf("capture filter: need a VIP and a 6-byte MAC, got %s and %s", vip, clusterMAC)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("capture filter: %w", err)
	}
	if vip.Is6() {
		if cfg.Compat != hash.NFTables {
			return nil, fmt.Errorf("capture filter: IPv6 VIP %s needs the nftables hash", vip)
		}
		return captureFilter6(vip, clusterMAC, cfg, pass)
	}
	v4 := vip.As4()
	ip := binary.BigEndian.Uint32(v4[:])
	macHi := binary.BigEndian.Uint32(clusterMAC[0:4])
	macLo := uint32(binary.BigEndian.Uint16(clusterMAC[4:6]))

	p := []bpf.Instruction{
		// VLAN-tagged frames belong to the VLAN's interface: the kernel
		// shows them here untagged, with the tag aside.
		bpf.LoadExtension{Num: bpf.ExtVLANTagPresent},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipTrue: 1},
		bpf.RetConstant{Val: 0},
		bpf.LoadAbsolute{Off: 12, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: etherTypeIPv4, SkipTrue: 5},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: etherTypeARP, SkipFalse: 2},
		bpf.LoadAbsolute{Off: ethHdrLen + 24, Size: 4}, // ARP target protocol address
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: ip, SkipTrue: 1},
		bpf.RetConstant{Val: 0},
		bpf.RetConstant{Val: filterAccept},
		// IPv4, unless the kernel path took it
		bpf.LoadExtension{Num: bpf.ExtType},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.PACKET_HOST, SkipFalse: 1},
		bpf.RetConstant{Val: 0},
		bpf.LoadAbsolute{Off: ethHdrLen + 16, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: ip, SkipTrue: 1},
		bpf.RetConstant{Val: 0},
		bpf.LoadAbsolute{Off: 0, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: macHi, SkipTrue: 1},
		bpf.RetConstant{Val: 0},
		bpf.LoadAbsolute{Off: 4, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: macLo, SkipTrue: 1},
		bpf.RetConstant{Val: 0},
		bpf.LoadAbsolute{Off: ethHdrLen + 6, Size: 2}, // flags and fragment offset
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: ipFlagMF | ipFragOffMask, SkipFalse: 1},
		bpf.RetConstant{Val: filterAccept},
		bpf.LoadAbsolute{Off: ethHdrLen + 9, Size: 1}, // protocol
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: protoICMP, SkipTrue: 1},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: protoFloodProbe, SkipFalse: 1},
		bpf.RetConstant{Val: filterAccept},
	}
	p = append(p, hashProgram(cfg)...)
	p = append(p, rangeProgram(cfg.TotalNodes, pass)...)
	raw, err := bpf.Assemble(p)
	if err != nil {
		return nil, fmt.Errorf("assemble capture filter: %w", err)
	}
	return raw, nil
}

// Scratch memory of the hash program: jhash's three words and a temporary.
const (
	regA = iota
	regB
	regC
	regT
)

// hashProgram computes the kernel target's jhash of the packet into
// scratch word regC: jhash_{1,2,3}words(ntohl(saddr), sport, dport, seed)
// with the ports as x86-64 loads them (byte-swapped). With the nftables
// hash the address is loaded as x86-64 loads it too, and the ports are the
// first four bytes of every protocol's header. Classic BPF has no
// rotation, so rol32(x, k) is (x << k) | (x >> (32-k)) through a scratch word.
func hashProgram(cfg hash.Config) []bpf.Instruction {
	words, iv := jhashWords(cfg)
	var p []bpf.Instruction
	if words == 1 {
		p = append(p,
			bpf.LoadConstant{Dst: bpf.RegA, Val: iv},
			bpf.StoreScratch{Src: bpf.RegA, N: regB},
			bpf.StoreScratch{Src: bpf.RegA, N: regC},
		)
	} else {
		p = append(p, portsProgram(cfg, words, iv)...)
	}
	if cfg.Compat == hash.NFTables {
		p = append(p, swappedWord(ethHdrLen+12)...) // saddr as a little-endian load
	} else {
		p = append(p, bpf.LoadAbsolute{Off: ethHdrLen + 12, Size: 4}) // saddr, host order
	}
	p = append(p,
		bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: iv},
		bpf.StoreScratch{Src: bpf.RegA, N: regA},
	)
	for _, s := range jhashFinal {
		p = append(p, xorSubRol(s.x, s.y, s.k)...)
	}
	return p
}

// jhashWords returns how many words the kernel target hashes in cfg's mode
// (source address, then source port, then destination port) and the
// initial value of jhash_{1,2,3}words for them.
func jhashWords(cfg hash.Config) (words, iv uint32) {
	words = 1
	switch cfg.Mode {
	case hash.SourceIPSourcePort:
		words = 2
	case hash.SourceIPSourcePortDestPort:
		words = 3
	}
	return words, cfg.Seed + 0xdeadbeef + words<<2
}

// jhashFinal is __jhash_final(a, b, c) as steps x ^= y; x -= rol32(y, k),
// with a, b, c numbered 0, 1, 2 (regA, regB, regC).
var jhashFinal = [...]struct{ x, y, k int }{
	{regC, regB, 14}, {regA, regC, 11}, {regB, regA, 25}, {regC, regB, 16},
	{regA, regC, 4}, {regB, regA, 14}, {regC, regB, 24},
}

// portsProgram stores sport+iv in regB and, for three words, dport+iv in
// regC (else iv). Protocols without ports hash zeros, as the kernel target
// did; the port offset inside the L4 header is cfg.PortsOffset's.
func portsProgram(cfg hash.Config, words, iv uint32) []bpf.Instruction {
	protos0 := []uint32{}
	var protos4 []uint32
	for proto := 0; proto < 256; proto++ {
		switch cfg.PortsOffset(uint8(proto)) {
		case 0:
			protos0 = append(protos0, uint32(proto))
		case 4:
			protos4 = append(protos4, uint32(proto))
		}
	}
	load := func(off uint32) []bpf.Instruction {
		var q []bpf.Instruction
		q = append(q, bpf.LoadMemShift{Off: ethHdrLen})
		q = append(q, swappedPort(ethHdrLen+off, iv, regB)...)
		if words == 3 {
			q = append(q, swappedPort(ethHdrLen+off+2, iv, regC)...)
		} else {
			q = append(q, bpf.LoadConstant{Dst: bpf.RegA, Val: iv}, bpf.StoreScratch{Src: bpf.RegA, N: regC})
		}
		return q
	}
	at0, at4 := load(0), load(4)
	if len(protos0) == 256 {
		return at0 // nftables: every protocol at offset 0
	}
	zero := []bpf.Instruction{
		bpf.LoadConstant{Dst: bpf.RegA, Val: iv},
		bpf.StoreScratch{Src: bpf.RegA, N: regB},
		bpf.StoreScratch{Src: bpf.RegA, N: regC},
	}
	// Layout: protocol tests, then zero (falls through to the end), at4,
	// at0, each jumping over what follows it.
	var p []bpf.Instruction
	p = append(p, bpf.LoadAbsolute{Off: ethHdrLen + 9, Size: 1})
	tests := len(protos0) + len(protos4)
	zeroLen, at4Len, at0Len := len(zero)+1, len(at4)+1, len(at0)
	for i, proto := range protos0 {
		after := tests - i - 1 // tests left after this one
		p = append(p, bpf.JumpIf{Cond: bpf.JumpEqual, Val: proto, SkipTrue: uint8(after + zeroLen + at4Len)})
	}
	for i, proto := range protos4 {
		after := len(protos4) - i - 1
		p = append(p, bpf.JumpIf{Cond: bpf.JumpEqual, Val: proto, SkipTrue: uint8(after + zeroLen)})
	}
	p = append(p, zero...)
	p = append(p, bpf.Jump{Skip: uint32(at4Len + at0Len)})
	p = append(p, at4...)
	p = append(p, bpf.Jump{Skip: uint32(at0Len)})
	p = append(p, at0...)
	return p
}

// swappedPort loads the 16-bit port at X+off, byte-swaps it (the kernel
// loads ports natively on a little-endian machine), adds iv and stores it.
func swappedPort(off, iv uint32, dst int) []bpf.Instruction {
	return []bpf.Instruction{
		bpf.LoadIndirect{Off: off, Size: 2},
		bpf.StoreScratch{Src: bpf.RegA, N: regT},
		bpf.ALUOpConstant{Op: bpf.ALUOpShiftRight, Val: 8},
		bpf.TAX{},
		bpf.LoadScratch{Dst: bpf.RegA, N: regT},
		bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0xff},
		bpf.ALUOpConstant{Op: bpf.ALUOpShiftLeft, Val: 8},
		bpf.ALUOpX{Op: bpf.ALUOpOr},
		bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: iv},
		bpf.StoreScratch{Src: bpf.RegA, N: dst},
		// Restore X for the next indirect load.
		bpf.LoadMemShift{Off: ethHdrLen},
	}
}

// swappedWord loads the 32-bit word at off as a little-endian machine
// loads it: classic BPF's loads are big-endian and it has no byte swap.
func swappedWord(off uint32) []bpf.Instruction {
	p := []bpf.Instruction{
		bpf.LoadAbsolute{Off: off, Size: 1},
		bpf.StoreScratch{Src: bpf.RegA, N: regT},
	}
	for i := uint32(1); i < 4; i++ {
		p = append(p,
			bpf.LoadAbsolute{Off: off + i, Size: 1},
			bpf.ALUOpConstant{Op: bpf.ALUOpShiftLeft, Val: 8 * i},
			bpf.TAX{},
			bpf.LoadScratch{Dst: bpf.RegA, N: regT},
			bpf.ALUOpX{Op: bpf.ALUOpOr},
			bpf.StoreScratch{Src: bpf.RegA, N: regT},
		)
	}
	return p
}

// xorSubRol is one line of __jhash_final: x ^= y; x -= rol32(y, k).
func xorSubRol(x, y, k int) []bpf.Instruction {
	return []bpf.Instruction{
		bpf.LoadScratch{Dst: bpf.RegA, N: y},
		bpf.TAX{},
		bpf.LoadScratch{Dst: bpf.RegA, N: x},
		bpf.ALUOpX{Op: bpf.ALUOpXor},
		bpf.StoreScratch{Src: bpf.RegA, N: x},
		// rol32(y, k)
		bpf.LoadScratch{Dst: bpf.RegA, N: y},
		bpf.ALUOpConstant{Op: bpf.ALUOpShiftLeft, Val: uint32(k)},
		bpf.StoreScratch{Src: bpf.RegA, N: regT},
		bpf.LoadScratch{Dst: bpf.RegA, N: y},
		bpf.ALUOpConstant{Op: bpf.ALUOpShiftRight, Val: uint32(32 - k)},
		bpf.TAX{},
		bpf.LoadScratch{Dst: bpf.RegA, N: regT},
		bpf.ALUOpX{Op: bpf.ALUOpOr},
		bpf.TAX{},
		bpf.LoadScratch{Dst: bpf.RegA, N: x},
		bpf.ALUOpX{Op: bpf.ALUOpSub},
		bpf.StoreScratch{Src: bpf.RegA, N: x},
	}
}

// span is a range of hash values, both ends included.
type span struct{ lo, hi uint32 }

// hashSpans returns the ranges of hash values whose number is in set:
// reciprocal_scale(h, total) + 1 == n exactly when h is in
// hash.Range(total, n), and adjacent numbers merge into one range.
func hashSpans(total uint32, set nodeset.NodeSet) []span {
	var spans []span
	for n := uint32(1); n <= total; n++ {
		if !set.Contains(int(n)) {
			continue
		}
		lo, hi := hash.Range(total, n)
		if len(spans) > 0 && spans[len(spans)-1].hi+1 == lo {
			spans[len(spans)-1].hi = hi
			continue
		}
		spans = append(spans, span{lo, hi})
	}
	return spans
}

// rangeProgram accepts when the hash in regC falls in the range of a number
// in pass.
func rangeProgram(total uint32, pass nodeset.NodeSet) []bpf.Instruction {
	p := []bpf.Instruction{bpf.LoadScratch{Dst: bpf.RegA, N: regC}}
	for _, s := range hashSpans(total, pass) {
		// A >= lo && A <= hi: accept; else try the next span.
		p = append(p,
			bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: s.lo, SkipFalse: 2},
			bpf.JumpIf{Cond: bpf.JumpGreaterThan, Val: s.hi, SkipTrue: 1},
			bpf.RetConstant{Val: filterAccept},
		)
	}
	return append(p, bpf.RetConstant{Val: 0})
}
