package datapath

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/net/bpf"
)

const (
	etherTypeARP  = 0x0806
	etherTypeIPv4 = 0x0800
	ethHdrLen     = 14
)

// captureFilter returns the classic BPF program that lets through only what
// this cluster must see: ARP whose target is the VIP, and IPv4 to the VIP sent
// to the cluster MAC. Everything else stays in the kernel, so a busy interface
// costs the daemon nothing.
//
// IPv4 sent to the node's own unicast MAC is left to the kernel on purpose:
// such a frame was not meant for the cluster (a stale ARP entry), and taking it
// as well would answer it twice.
func captureFilter(vip netip.Addr, clusterMAC net.HardwareAddr) ([]bpf.RawInstruction, error) {
	if !vip.Is4() || len(clusterMAC) != 6 {
		return nil, fmt.Errorf("capture filter: need an IPv4 VIP and a 6-byte MAC, got %s and %s", vip, clusterMAC)
	}
	v4 := vip.As4()
	ip := binary.BigEndian.Uint32(v4[:])
	macHi := binary.BigEndian.Uint32(clusterMAC[0:4])
	macLo := uint32(binary.BigEndian.Uint16(clusterMAC[4:6]))
	const accept = 0x40000 // whole frame: GSO super-frames reach 64 KB

	prog := []bpf.Instruction{
		/* 0 */ bpf.LoadAbsolute{Off: 12, Size: 2},
		/* 1 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: etherTypeARP, SkipTrue: 8},
		/* 2 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: etherTypeIPv4, SkipFalse: 9},
		/* 3 */ bpf.LoadAbsolute{Off: ethHdrLen + 16, Size: 4}, // IPv4 destination
		/* 4 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: ip, SkipFalse: 7},
		/* 5 */ bpf.LoadAbsolute{Off: 0, Size: 4}, // Ethernet destination
		/* 6 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: macHi, SkipFalse: 5},
		/* 7 */ bpf.LoadAbsolute{Off: 4, Size: 2},
		/* 8 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: macLo, SkipFalse: 3},
		/* 9 */ bpf.RetConstant{Val: accept},
		/* 10 */ bpf.LoadAbsolute{Off: ethHdrLen + 24, Size: 4}, // ARP target protocol address
		/* 11 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: ip, SkipTrue: 1},
		/* 12 */ bpf.RetConstant{Val: 0},
		/* 13 */ bpf.RetConstant{Val: accept},
	}
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, fmt.Errorf("assemble capture filter: %w", err)
	}
	return raw, nil
}
