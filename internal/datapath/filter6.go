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

// Offsets in an Ethernet frame carrying IPv6.
const (
	ip6NextOff   = ethHdrLen + 6
	ip6SrcOff    = ethHdrLen + 8
	ip6DstOff    = ethHdrLen + 24
	ip6L4Off     = ethHdrLen + ipv6HdrLen
	ip6NSTypeOff = ip6L4Off
	ip6NSTgtOff  = ip6L4Off + 8
)

// captureFilter6 is captureFilter for an IPv6 VIP. It lets through
// neighbour solicitations for the VIP, whatever their destination (the
// solicited-node group, the cluster MAC, the NIC's MAC), and IPv6 to the
// VIP sent to the cluster MAC whose number is in pass. The number is
// computed in the kernel only for packets whose transport header follows
// the fixed header at once; packets with extension headers (fragments
// among them) and ICMPv6 go to user space, which walks the chain and
// matches errors to the flows they quote.
func captureFilter6(vip netip.Addr, clusterMAC net.HardwareAddr, cfg hash.Config, pass nodeset.NodeSet) ([]bpf.RawInstruction, error) {
	v := vip.As16()
	macHi := binary.BigEndian.Uint32(clusterMAC[0:4])
	macLo := uint32(binary.BigEndian.Uint16(clusterMAC[4:6]))

	// Compare the 16 bytes at off with the VIP: each mismatch drops.
	vipAt := func(off uint32) []bpf.Instruction {
		var p []bpf.Instruction
		for i := uint32(0); i < 4; i++ {
			p = append(p,
				bpf.LoadAbsolute{Off: off + 4*i, Size: 4},
				bpf.JumpIf{Cond: bpf.JumpEqual, Val: binary.BigEndian.Uint32(v[4*i:]), SkipTrue: 1},
				bpf.RetConstant{Val: 0},
			)
		}
		return p
	}
	ns := append(vipAt(ip6NSTgtOff), bpf.RetConstant{Val: filterAccept})
	p := []bpf.Instruction{
		bpf.LoadExtension{Num: bpf.ExtVLANTagPresent},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipTrue: 1},
		bpf.RetConstant{Val: 0},
		bpf.LoadAbsolute{Off: 12, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: etherTypeIPv6, SkipTrue: 1},
		bpf.RetConstant{Val: 0},
		// A neighbour solicitation for the VIP, as every neighbour sends
		// it (no extension headers).
		bpf.LoadAbsolute{Off: ip6NextOff, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: protoICMPv6, SkipFalse: uint8(len(ns) + 2)},
		bpf.LoadAbsolute{Off: ip6NSTypeOff, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: ndNeighborSolicit, SkipFalse: uint8(len(ns))},
	}
	p = append(p, ns...)
	// IPv6 to the VIP, unless the kernel path took it.
	p = append(p,
		bpf.LoadExtension{Num: bpf.ExtType},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.PACKET_HOST, SkipFalse: 1},
		bpf.RetConstant{Val: 0},
	)
	p = append(p, vipAt(ip6DstOff)...)
	p = append(p,
		bpf.LoadAbsolute{Off: 0, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: macHi, SkipTrue: 1},
		bpf.RetConstant{Val: 0},
		bpf.LoadAbsolute{Off: 4, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: macLo, SkipTrue: 1},
		bpf.RetConstant{Val: 0},
	)
	// Extension headers, ICMPv6 and the flood check's probes: user space.
	userSpace := []uint32{nextHopByHop, nextRouting, nextFragment, nextAH, nextDestOpts, protoICMPv6, protoFloodProbe}
	p = append(p, bpf.LoadAbsolute{Off: ip6NextOff, Size: 1})
	for i, proto := range userSpace {
		p = append(p, bpf.JumpIf{Cond: bpf.JumpEqual, Val: proto, SkipTrue: uint8(len(userSpace) - i)})
	}
	p = append(p, bpf.Jump{Skip: 1}, bpf.RetConstant{Val: filterAccept})
	p = append(p, hashProgram6(cfg)...)
	p = append(p, rangeProgram(cfg.TotalNodes, pass)...)
	raw, err := bpf.Assemble(p)
	if err != nil {
		return nil, fmt.Errorf("assemble capture filter: %w", err)
	}
	return raw, nil
}

// hashProgram6 computes nftables' jhash of an IPv6 packet without
// extension headers into scratch word regC, as hash.Config.Node6 does:
// one mix round over the first three address words, then the fourth word
// and the port words (the first four bytes of the transport header, as
// x86-64 loads them) into the final round.
func hashProgram6(cfg hash.Config) []bpf.Instruction {
	length := uint32(16)
	switch cfg.Mode {
	case hash.SourceIPSourcePort:
		length = 20
	case hash.SourceIPSourcePortDestPort:
		length = 24
	}
	iv := 0xdeadbeef + length + cfg.Seed
	var p []bpf.Instruction
	for i, reg := range []int{regA, regB, regC} {
		p = append(p, swappedWord(uint32(ip6SrcOff+4*i))...)
		p = append(p,
			bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: iv},
			bpf.StoreScratch{Src: bpf.RegA, N: reg},
		)
	}
	for _, s := range jhashMix {
		p = append(p, subReg(s.x, s.z)...)
		p = append(p, xorRol(s.x, s.z, s.k)...)
		p = append(p, addReg(s.z, s.y)...)
	}
	// a += the fourth address word; b += sport; c += dport.
	p = append(p, swappedWord(ip6SrcOff+12)...)
	p = append(p, addA(regA)...)
	if cfg.Mode.UsesPorts() {
		p = append(p, rawPort(ip6L4Off)...)
		p = append(p, addA(regB)...)
	}
	if cfg.Mode == hash.SourceIPSourcePortDestPort {
		p = append(p, rawPort(ip6L4Off+2)...)
		p = append(p, addA(regC)...)
	}
	for _, s := range jhashFinal {
		p = append(p, xorSubRol(s.x, s.y, s.k)...)
	}
	return p
}

// jhashMix is __jhash_mix(a, b, c) as steps x -= z; x ^= rol32(z, k);
// z += y.
var jhashMix = [...]struct{ x, z, y, k int }{
	{regA, regC, regB, 4}, {regB, regA, regC, 6}, {regC, regB, regA, 8},
	{regA, regC, regB, 16}, {regB, regA, regC, 19}, {regC, regB, regA, 4},
}

// subReg is x -= y.
func subReg(x, y int) []bpf.Instruction {
	return []bpf.Instruction{
		bpf.LoadScratch{Dst: bpf.RegA, N: y},
		bpf.TAX{},
		bpf.LoadScratch{Dst: bpf.RegA, N: x},
		bpf.ALUOpX{Op: bpf.ALUOpSub},
		bpf.StoreScratch{Src: bpf.RegA, N: x},
	}
}

// addReg is x += y.
func addReg(x, y int) []bpf.Instruction {
	return append([]bpf.Instruction{bpf.LoadScratch{Dst: bpf.RegA, N: y}}, addA(x)...)
}

// addA is x += A.
func addA(x int) []bpf.Instruction {
	return []bpf.Instruction{
		bpf.TAX{},
		bpf.LoadScratch{Dst: bpf.RegA, N: x},
		bpf.ALUOpX{Op: bpf.ALUOpAdd},
		bpf.StoreScratch{Src: bpf.RegA, N: x},
	}
}

// xorRol is x ^= rol32(y, k).
func xorRol(x, y, k int) []bpf.Instruction {
	return []bpf.Instruction{
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
		bpf.ALUOpX{Op: bpf.ALUOpXor},
		bpf.StoreScratch{Src: bpf.RegA, N: x},
	}
}

// rawPort loads the 16-bit field at off as x86-64 loads it (little-endian)
// into A.
func rawPort(off uint32) []bpf.Instruction {
	return []bpf.Instruction{
		bpf.LoadAbsolute{Off: off + 1, Size: 1},
		bpf.ALUOpConstant{Op: bpf.ALUOpShiftLeft, Val: 8},
		bpf.TAX{},
		bpf.LoadAbsolute{Off: off, Size: 1},
		bpf.ALUOpX{Op: bpf.ALUOpOr},
	}
}
