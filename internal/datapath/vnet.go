package datapath

// virtio-net header carried in front of every frame on both the AF_PACKET
// socket (PACKET_VNET_HDR) and the TAP (IFF_VNET_HDR). veth and offloading
// NICs hand over TCP segments of up to 64 KB whose checksums are not filled
// in yet; the header says so, and passing it through unchanged lets the TAP
// side finish the job instead of dropping the segment as corrupt.
//
// Both ends use the same layout and the same reference point (csum_start is
// counted from the Ethernet header), so the datapath never needs to look
// inside it.
const vnetHdrLen = 10 // sizeof(struct virtio_net_hdr)
