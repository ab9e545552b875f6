// Package hash reimplements, bit for bit, the hash the Linux iptables
// CLUSTERIP target uses to decide which cluster node answers a packet
// (clusterip_hashfn in net/ipv4/netfilter/ipt_CLUSTERIP.c).
//
// Every node of a cluster sees every packet sent to the shared address and
// accepts only those whose hash maps to a node number it holds. Nodes
// running this package must therefore agree exactly with nodes still
// running the kernel target, including its quirks:
//
//   - The source address is hashed in host byte order (ntohl(saddr)).
//   - The two 16-bit port fields are loaded from the wire as native
//     integers without byte swapping. On x86-64, the only architecture this
//     package models, TCP port 80 (bytes 0x00 0x50) is therefore hashed as
//     0x5000. Node takes these raw values; NodeForPorts takes port numbers
//     and performs the swap.
//   - Protocols without ports, ICMP for instance, hash with both ports zero.
//   - The 32-bit hash is mapped onto nodes 1..n by multiplication, not
//     modulo (reciprocal_scale), so each node owns one contiguous range of
//     hash values; see Range.
//
// The hash is the current lookup3 form of include/linux/jhash.h, whose
// jhash_Nwords add the word count to the initial value (introduced around
// Linux 4.1). Older kernels hash differently and cannot share a cluster
// with this package.
//
// The same package computes, with Config.Compat set to NFTables, what the
// nftables jhash expression computes for the rules Pacemaker's IPaddr2
// writes on kernels without CLUSTERIP:
//
//	meta mark set jhash ip saddr . th sport . th dport mod N seed S offset 1
//
// nft_jhash_eval hashes the concatenated registers with jhash(): the
// source address as on the wire (4 or 16 bytes), then each port in a
// 4-byte register of its own (big-endian port, two zero bytes), all loaded
// as little-endian words on x86-64. For IPv4 that is CLUSTERIP's hash with
// the address byte-swapped; it is the only hash that covers IPv6 (Node6).
//
// Results never depend on the byte order of the machine running this code.
package hash
