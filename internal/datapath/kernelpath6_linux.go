package datapath

import (
	"github.com/cilium/ebpf/asm"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/nodeset"
)

// Stack layout of the IPv6 program: the Ethernet destination, the fixed
// IPv6 header and the ports, each in an aligned slot of its own.
const (
	stack6MAC   = -8  // 6 bytes
	stack6IP    = -48 // 40 bytes
	stack6Ports = -56 // 4 bytes
	stack6Key   = -60 // the counter's key
)

// kernelProgram6 is kernelProgram for an IPv6 VIP: it takes packets whose
// transport header follows the fixed header at once (extension headers,
// fragments among them, and ICMPv6 stay in user space, as the capture
// filter sends them there), hashing as nftables does (hash.Config.Node6):
// one mix round over the first three source words, then the fourth and
// the port words into the final round.
func kernelProgram6(vip addr, mac []byte, cfg hash.Config, set nodeset.NodeSet, protos kernelProtos, counterFD int) asm.Instructions {
	if set == 0 {
		return asm.Instructions{asm.Mov.Imm(asm.R0, tcxNext), asm.Return()}
	}
	p := framePrologue(etherTypeIPv6, mac, stack6MAC)
	p = append(p, skbLoadBytes(asm.R7, stack6IP, ipv6HdrLen)...)
	for i := int16(0); i < 4; i++ {
		p = append(p,
			asm.LoadMem(asm.R0, asm.RFP, stack6IP+24+4*i, asm.Word), // daddr
			asm.JNE.Imm32(asm.R0, le32(vip[4*i:]), "next"),
		)
	}
	p = append(p,
		asm.LoadMem(asm.R0, asm.RFP, stack6IP, asm.Byte),
		asm.RSh.Imm(asm.R0, 4),
		asm.JNE.Imm(asm.R0, 6, "next"),
		asm.LoadMem(asm.R7, asm.RFP, stack6IP+6, asm.Byte), // next header
	)
	if protos == kernelTCPOnly {
		p = append(p, asm.JNE.Imm(asm.R7, protoTCP, "next"))
	} else {
		for _, proto := range []int32{nextHopByHop, nextRouting, nextFragment, nextAH, nextNone, nextDestOpts, protoICMPv6, protoFloodProbe} {
			p = append(p, asm.JEq.Imm(asm.R7, proto, "next"))
		}
	}
	p = append(p, asm.StoreImm(asm.RFP, stack6Ports, 0, asm.Word))
	if cfg.Mode.UsesPorts() {
		p = append(p, asm.Mov.Imm(asm.R0, ethHdrLen+ipv6HdrLen))
		p = append(p, skbLoadBytes(asm.R0, stack6Ports, 4)...)
	}
	length := int32(16)
	switch cfg.Mode {
	case hash.SourceIPSourcePort:
		length = 20
	case hash.SourceIPSourcePortDestPort:
		length = 24
	}
	iv := int32(uint32(0xdeadbeef) + uint32(length) + cfg.Seed)
	const a, b, c, t, u = asm.R1, asm.R2, asm.R3, asm.R4, asm.R5
	abc := [3]asm.Register{a, b, c}
	for i, r := range abc {
		p = append(p,
			asm.LoadMem(r, asm.RFP, stack6IP+8+4*int16(i), asm.Word), // saddr, as x86-64 loads it
			asm.Add.Imm32(r, iv),
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
		asm.LoadMem(t, asm.RFP, stack6IP+20, asm.Word),
		asm.Add.Reg32(a, t),
	)
	if cfg.Mode.UsesPorts() {
		p = append(p,
			asm.LoadMem(t, asm.RFP, stack6Ports, asm.Half),
			asm.Add.Reg32(b, t),
		)
	}
	if cfg.Mode == hash.SourceIPSourcePortDestPort {
		p = append(p,
			asm.LoadMem(t, asm.RFP, stack6Ports+2, asm.Half),
			asm.Add.Reg32(c, t),
		)
	}
	p = append(p, jhashFinalInsns(abc, t, u)...)
	return append(p, takeSpans(cfg.TotalNodes, set, c, stack6Key, counterFD)...)
}
