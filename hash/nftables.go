package hash

import (
	"encoding/binary"
	"fmt"
	"math/bits"
)

// Compat names whose hash a cluster computes: the iptables CLUSTERIP
// target's, or that of nftables' jhash expression over the same fields, as
// Pacemaker's IPaddr2 writes it on kernels without CLUSTERIP:
//
//	meta mark set jhash ip saddr . th sport . th dport mod N seed S offset 1
//
// The two differ in byte order only, but every node of a cluster must use
// the same one. The zero Compat is CLUSTERIP, so a Config written before
// Compat existed means what it meant.
type Compat uint8

const (
	// CLUSTERIP is ipt_CLUSTERIP's clusterip_hashfn: jhash_Nwords over
	// ntohl(saddr) and the native 16-bit port loads. IPv4 only.
	CLUSTERIP Compat = iota
	// NFTables is nft_jhash_eval: the kernel's jhash() over the
	// concatenated registers (saddr, 4 or 16 bytes; each port in a 4-byte
	// register, big-endian then two zero bytes), words loaded in the
	// CPU's byte order (little-endian on x86-64, which this models).
	NFTables
)

var compatNames = [...]string{CLUSTERIP: "clusterip", NFTables: "nftables"}

// ParseCompat parses a Compat from its name, "clusterip" or "nftables".
func ParseCompat(s string) (Compat, error) {
	for c, name := range compatNames {
		if s == name {
			return Compat(c), nil
		}
	}
	return 0, fmt.Errorf("hash: unknown hash compatibility %q (valid: clusterip, nftables)", s)
}

// String returns the name of c.
func (c Compat) String() string {
	if int(c) < len(compatNames) {
		return compatNames[c]
	}
	return fmt.Sprintf("Compat(%d)", uint8(c))
}

func (c Compat) valid() bool { return int(c) < len(compatNames) }

// Jhash is the kernel's jhash() (include/linux/jhash.h) over key, with
// words loaded little-endian as an x86-64 kernel loads them, whatever the
// byte order of the machine running this code.
func Jhash(key []byte, initval uint32) uint32 {
	length := uint32(len(key))
	a := jhashInitval + length + initval
	b, c := a, a
	for len(key) > 12 {
		a += binary.LittleEndian.Uint32(key)
		b += binary.LittleEndian.Uint32(key[4:])
		c += binary.LittleEndian.Uint32(key[8:])
		a, b, c = jhashMix(a, b, c)
		key = key[12:]
	}
	if len(key) == 0 {
		return c
	}
	// The tail, as the kernel's fall-through switch adds it: byte i of the
	// last block into word i/4 at bits 8*(i%4).
	var tail [12]byte
	copy(tail[:], key)
	a += binary.LittleEndian.Uint32(tail[0:])
	b += binary.LittleEndian.Uint32(tail[4:])
	c += binary.LittleEndian.Uint32(tail[8:])
	_, _, c = jhashFinal(a, b, c)
	return c
}

// jhashMix is __jhash_mix.
func jhashMix(a, b, c uint32) (uint32, uint32, uint32) {
	a -= c
	a ^= bits.RotateLeft32(c, 4)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 6)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 8)
	b += a
	a -= c
	a ^= bits.RotateLeft32(c, 16)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 19)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 4)
	b += a
	return a, b, c
}

// jhashFinal is __jhash_final.
func jhashFinal(a, b, c uint32) (uint32, uint32, uint32) {
	c ^= b
	c -= bits.RotateLeft32(b, 14)
	a ^= c
	a -= bits.RotateLeft32(c, 11)
	b ^= a
	b -= bits.RotateLeft32(a, 25)
	c ^= b
	c -= bits.RotateLeft32(b, 16)
	a ^= c
	a -= bits.RotateLeft32(c, 4)
	b ^= a
	b -= bits.RotateLeft32(a, 14)
	c ^= b
	c -= bits.RotateLeft32(b, 24)
	return a, b, c
}

// NFTKey appends to dst the bytes nftables hashes for a packet from src
// (the source address as on the wire, 4 or 16 bytes) with port numbers
// sport and dport, in mode m: the concatenation of the registers the
// expression loads, each padded to 4 bytes.
func NFTKey(dst []byte, m Mode, src []byte, sport, dport uint16) []byte {
	dst = append(dst, src...)
	if m >= SourceIPSourcePort {
		dst = append(dst, byte(sport>>8), byte(sport), 0, 0)
	}
	if m >= SourceIPSourcePortDestPort {
		dst = append(dst, byte(dport>>8), byte(dport), 0, 0)
	}
	return dst
}

// hashNFT4 is the NFTables hash of an IPv4 packet, in Node's terms. For
// IPv4 the key is at most 12 bytes, so jhash() reduces to jhash_Nwords;
// the only difference from CLUSTERIP is the address word, loaded in the
// CPU's byte order rather than converted with ntohl. A port's register
// holds the port big-endian then two zero bytes, which loads to the same
// value as the raw 16-bit port field.
func (c Config) hashNFT4(src uint32, sportRaw, dportRaw uint16) uint32 {
	return Config{Mode: c.Mode, Seed: c.Seed}.Hash(bits.ReverseBytes32(src), sportRaw, dportRaw)
}

// Node6 returns the node owning an IPv6 packet from src (as on the wire)
// with raw port fields sportRaw and dportRaw (see RawPorts). Only the
// NFTables hash covers IPv6; c must say so. Like Node, it neither
// allocates nor checks c.
func (c Config) Node6(src *[16]byte, sportRaw, dportRaw uint16) int {
	return int(ReciprocalScale(c.hash6(src, sportRaw, dportRaw), c.TotalNodes)) + 1
}

// hash6 is Jhash over NFTKey, unrolled: the key is 16, 20 or 24 bytes,
// so one mix round over the first three address words and the final
// round over the fourth word and the port registers, which load as the
// raw port fields zero-extended.
func (c Config) hash6(src *[16]byte, sportRaw, dportRaw uint16) uint32 {
	length := uint32(16)
	var b2, c2 uint32
	if c.Mode >= SourceIPSourcePort {
		length, b2 = 20, uint32(sportRaw)
	}
	if c.Mode >= SourceIPSourcePortDestPort {
		length, c2 = 24, uint32(dportRaw)
	}
	a := jhashInitval + length + c.Seed
	b, cc := a, a
	a += binary.LittleEndian.Uint32(src[0:])
	b += binary.LittleEndian.Uint32(src[4:])
	cc += binary.LittleEndian.Uint32(src[8:])
	a, b, cc = jhashMix(a, b, cc)
	a += binary.LittleEndian.Uint32(src[12:])
	_, _, cc = jhashFinal(a, b+b2, cc+c2)
	return cc
}

// PortsOffset is PortsOffset for c's hash. nftables' "th sport" and "th
// dport" read the first four bytes of the transport header whatever the
// protocol (an ICMP message's type, code and checksum; an AH header's
// first word), where CLUSTERIP hashes zeros for protocols without ports
// and AH's SPI.
func (c Config) PortsOffset(proto uint8) int {
	if c.Compat == NFTables {
		return 0
	}
	return PortsOffset(proto)
}

// RawPorts is RawPorts for c's hash (see Config.PortsOffset). A transport
// header too short for the four bytes hashes zeros; nftables would not
// match the rule at all, which no single node's answer can reproduce.
func (c Config) RawPorts(proto uint8, l4 []byte) (sportRaw, dportRaw uint16) {
	off := c.PortsOffset(proto)
	if off < 0 || len(l4) < off+4 {
		return 0, 0
	}
	return binary.LittleEndian.Uint16(l4[off:]), binary.LittleEndian.Uint16(l4[off+2:])
}
