// Package datapath moves clusters' packets: it captures ARP, neighbour
// solicitations and IP for the VIPs from an interface with AF_PACKET
// sockets shared by every cluster on it (capture_linux.go), answers ARP and
// solicitations with the cluster MAC, decides per packet which node owns
// it, and writes the owned ones into the cluster's TAP device, which holds
// the VIP, so the local stack answers them. Settled numbers never leave the
// kernel: one eBPF program per interface takes them (kernelpath_linux.go,
// program_linux.go).
//
// The per-packet path is in receive.go; the ownership decision is
// Owner.Node in owner.go. Everything else here sets up or tears down the
// sockets and devices that path uses.
package datapath
