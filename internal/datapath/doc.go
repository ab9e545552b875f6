// Package datapath moves one cluster's packets: it captures ARP and IPv4 for
// the VIP from the interface with an AF_PACKET socket, answers ARP with the
// cluster MAC, decides per packet which node owns it, and writes the owned
// ones into a TAP device that holds the VIP so the local stack answers them.
//
// The per-packet path is in receive.go; the ownership decision is
// Owner.Node in owner.go. Everything else here sets up or tears down the
// sockets and devices that path uses.
package datapath
