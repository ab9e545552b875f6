package datapath

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// socketRcvBuf is large enough to ride out a burst of 64 KB super-frames
// while the reader is descheduled.
const socketRcvBuf = 8 << 20

// captureSocket is one of a capture group's AF_PACKET sockets.
type captureSocket struct {
	fd    int // read directly, blocking, by the worker's own thread
	ifi   *net.Interface
	proto uint16
}

// readTimeout bounds a blocking read so that a worker notices shutdown.
const readTimeout = 200 * time.Millisecond

// openCaptureSocket opens a raw packet socket on ifi for EtherType proto
// that sees only the frames filter passes: the filter is attached before
// the socket is bound, so no frame gets in unfiltered. The socket carries
// the virtio-net header.
//
// A socket bound to one EtherType sees a frame after the interface's
// ingress hook (where the kernel path runs), unlike one bound to every
// protocol, and never sees the host's own outgoing frames.
func openCaptureSocket(ifi *net.Interface, proto uint16, filter *ebpf.Program) (*captureSocket, error) {
	// Protocol 0: nothing arrives before bind.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	fail := func(what string, err error) (*captureSocket, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ATTACH_BPF, filter.FD()); err != nil {
		return fail("SO_ATTACH_BPF", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
		return fail("PACKET_VNET_HDR", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketRcvBuf); err != nil {
		// Without CAP_NET_ADMIN only the capped size is possible.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, socketRcvBuf); err != nil {
			return fail("SO_RCVBUF", err)
		}
	}
	// The worker reads on a thread of its own, blocking in the kernel
	// until frames arrive: no epoll and no goroutine wake-up per batch.
	tv := unix.NsecToTimeval(readTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fail("SO_RCVTIMEO", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: ifi.Index}); err != nil {
		return fail("bind", err)
	}
	return &captureSocket{fd: fd, ifi: ifi, proto: proto}, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// joinFanout spreads the interface's frames over the workers' sockets by
// flow hash, so every packet of a flow (and every fragment of a datagram,
// which the flow dissector hashes without ports) reaches the same worker.
// Group 0 asks the kernel for a new, unique group id.
func (s *captureSocket) joinFanout(group uint16) error {
	arg := int(group) | unix.PACKET_FANOUT_HASH<<16
	if group == 0 {
		arg |= unix.PACKET_FANOUT_FLAG_UNIQUEID << 16
	}
	if err := unix.SetsockoptInt(s.fd, unix.SOL_PACKET, unix.PACKET_FANOUT, arg); err != nil {
		return fmt.Errorf("PACKET_FANOUT: %w", err)
	}
	return nil
}

// fanoutGroup returns the socket's fanout group id.
func (s *captureSocket) fanoutGroup() (uint16, error) {
	v, err := unix.GetsockoptInt(s.fd, unix.SOL_PACKET, unix.PACKET_FANOUT)
	return uint16(v), err
}

// send writes one frame (without virtio-net header) to dst on the interface.
// Only the slow path (ARP, neighbour discovery) sends, so the small copy is
// acceptable.
func (s *captureSocket) send(frame []byte, dst net.HardwareAddr) error {
	b := make([]byte, vnetHdrLen+len(frame))
	copy(b[vnetHdrLen:], frame)
	to := &unix.SockaddrLinklayer{Protocol: htons(s.proto), Ifindex: s.ifi.Index, Halen: uint8(len(dst))}
	copy(to.Addr[:], dst)
	return unix.Sendto(s.fd, b, 0, to)
}

func (s *captureSocket) close() error { return unix.Close(s.fd) }

// joinMAC adds mac to ifi's multicast filter, or in unicast mode to its
// unicast filter (PACKET_MR_UNICAST), for as long as the packet socket fd
// lives (op PACKET_ADD_MEMBERSHIP), or takes it out (PACKET_DROP_MEMBERSHIP).
func joinMAC(fd int, ifi *net.Interface, mac net.HardwareAddr, mode MACMode, op int) error {
	typ := uint16(unix.PACKET_MR_MULTICAST)
	if mode == MACUnicast {
		typ = unix.PACKET_MR_UNICAST
	}
	mreq := &unix.PacketMreq{Ifindex: int32(ifi.Index), Type: typ, Alen: uint16(len(mac))}
	copy(mreq.Address[:], mac)
	return unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, op, mreq)
}

// joinGroup joins the IP multicast group on ifi through a socket of its
// own, so that the stack reports the membership (IGMP or MLD) and answers
// queries for it as for its own groups; the group is left when the socket
// closes, a crash included.
func joinGroup(ifi *net.Interface, group netip.Addr) (int, error) {
	family, level := unix.AF_INET, unix.IPPROTO_IP
	if group.Is6() {
		family, level = unix.AF_INET6, unix.IPPROTO_IPV6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return 0, fmt.Errorf("join %s on %s: %w", group, ifi.Name, err)
	}
	if group.Is6() {
		mreq := &unix.IPv6Mreq{Multiaddr: group.As16(), Interface: uint32(ifi.Index)}
		err = unix.SetsockoptIPv6Mreq(fd, level, unix.IPV6_JOIN_GROUP, mreq)
	} else {
		mreq := &unix.IPMreqn{Multiaddr: group.As4(), Ifindex: int32(ifi.Index)}
		err = unix.SetsockoptIPMreqn(fd, level, unix.IP_ADD_MEMBERSHIP, mreq)
	}
	if err != nil {
		unix.Close(fd)
		if disabled, _ := os.ReadFile("/proc/sys/net/ipv6/conf/" + ifi.Name + "/disable_ipv6"); group.Is6() && string(disabled) == "1\n" {
			return 0, fmt.Errorf("interface %s has IPv6 disabled (net.ipv6.conf.%s.disable_ipv6 = 1): an IPv6 VIP needs it on", ifi.Name, ifi.Name)
		}
		return 0, fmt.Errorf("join %s on %s: %w", group, ifi.Name, err)
	}
	return fd, nil
}

// InterfaceByName is net.InterfaceByName without its cost: that lists
// every link of the host (and a node with a thousand clusters has a
// thousand TAPs) to find one, where this asks the kernel for the one.
func InterfaceByName(name string) (*net.Interface, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, &net.OpError{Op: "route", Net: "ip+net", Err: fmt.Errorf("%s: %w", name, err)}
	}
	a := l.Attrs()
	ifi := &net.Interface{Index: a.Index, MTU: a.MTU, Name: a.Name, HardwareAddr: a.HardwareAddr}
	for _, f := range []struct {
		link net.Flags
		raw  uint32
	}{{net.FlagUp, unix.IFF_UP}, {net.FlagBroadcast, unix.IFF_BROADCAST}, {net.FlagLoopback, unix.IFF_LOOPBACK},
		{net.FlagPointToPoint, unix.IFF_POINTOPOINT}, {net.FlagMulticast, unix.IFF_MULTICAST}, {net.FlagRunning, unix.IFF_RUNNING}} {
		if a.RawFlags&f.raw != 0 {
			ifi.Flags |= f.link
		}
	}
	return ifi, nil
}
