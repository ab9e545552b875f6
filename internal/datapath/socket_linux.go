package datapath

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// socketRcvBuf is large enough to ride out a burst of 64 KB super-frames
// while the reader is descheduled.
const socketRcvBuf = 8 << 20

// captureSocket is the cluster's AF_PACKET socket on the shared interface.
type captureSocket struct {
	conn *packet.Conn
	raw  syscall.RawConn
	ifi  *net.Interface
	fd   int // read directly, blocking, by the worker's own thread
}

// readTimeout bounds a blocking read so that a worker notices shutdown.
const readTimeout = 200 * time.Millisecond

// openCaptureSocket binds a raw packet socket for EtherType proto to ifi
// that sees only the frames filter passes (attached before bind), carries
// the virtio-net header and subscribes the interface to the cluster MAC: to
// its multicast filter, or in unicast mode to its unicast filter. The
// membership belongs to the socket, so the kernel drops it when the socket
// closes, even when the daemon is killed.
//
// A socket bound to one EtherType sees a frame after the interface's
// ingress hook (where the kernel path runs), unlike one bound to every
// protocol, and never sees the host's own outgoing frames.
func openCaptureSocket(ifi *net.Interface, clusterMAC net.HardwareAddr, mode MACMode, proto uint16, filter []bpf.RawInstruction) (*captureSocket, error) {
	conn, err := packet.Listen(ifi, packet.Raw, int(proto), &packet.Config{Filter: filter})
	if err != nil {
		return nil, fmt.Errorf("packet socket on %s: %w", ifi.Name, err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("packet socket on %s: %w", ifi.Name, err)
	}
	s := &captureSocket{conn: conn, raw: raw, ifi: ifi}
	var serr error
	err = raw.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); serr != nil {
			serr = fmt.Errorf("PACKET_VNET_HDR: %w", serr)
			return
		}
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketRcvBuf); serr != nil {
			// Without CAP_NET_ADMIN only the capped size is possible.
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, socketRcvBuf)
		}
		if serr != nil {
			return
		}
		// The worker reads on a thread of its own, blocking in the kernel
		// until frames arrive: no epoll and no goroutine wake-up per batch.
		tv := unix.NsecToTimeval(readTimeout.Nanoseconds())
		if serr = unix.SetsockoptTimeval(int(fd), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); serr != nil {
			serr = fmt.Errorf("SO_RCVTIMEO: %w", serr)
			return
		}
		if serr = unix.SetNonblock(int(fd), false); serr != nil {
			return
		}
		s.fd = int(fd)
	})
	if err == nil {
		err = serr
	}
	if err == nil {
		if jerr := joinMAC(raw, ifi, clusterMAC, mode); jerr != nil {
			err = fmt.Errorf("join %s: %w", clusterMAC, jerr)
		}
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("packet socket on %s: %w", ifi.Name, err)
	}
	return s, nil
}

// joinFanout spreads the interface's frames over the workers' sockets by
// flow hash, so every packet of a flow (and every fragment of a datagram,
// which the flow dissector hashes without ports) reaches the same worker.
// Group 0 asks the kernel for a new, unique group id.
func (s *captureSocket) joinFanout(group uint16) error {
	var err error
	cerr := s.raw.Control(func(fd uintptr) {
		arg := int(group) | unix.PACKET_FANOUT_HASH<<16
		if group == 0 {
			arg |= unix.PACKET_FANOUT_FLAG_UNIQUEID << 16
		}
		if err = unix.SetsockoptInt(int(fd), unix.SOL_PACKET, unix.PACKET_FANOUT, arg); err != nil {
			err = fmt.Errorf("PACKET_FANOUT: %w", err)
		}
	})
	if cerr != nil {
		return cerr
	}
	return err
}

// fanoutGroup returns the socket's fanout group id.
func (s *captureSocket) fanoutGroup() (uint16, error) {
	var v int
	var err error
	cerr := s.raw.Control(func(fd uintptr) {
		v, err = unix.GetsockoptInt(int(fd), unix.SOL_PACKET, unix.PACKET_FANOUT)
	})
	if cerr != nil {
		return 0, cerr
	}
	return uint16(v), err
}

// setFilter replaces the socket's filter; the kernel swaps it atomically.
func (s *captureSocket) setFilter(f []bpf.RawInstruction) error { return s.conn.SetBPF(f) }

// send writes one frame (without virtio-net header) to dst on the interface.
// Only the slow path (ARP) sends, so the small copy is acceptable.
func (s *captureSocket) send(frame []byte, dst net.HardwareAddr) error {
	b := make([]byte, vnetHdrLen+len(frame))
	copy(b[vnetHdrLen:], frame)
	_, err := s.conn.WriteTo(b, &packet.Addr{HardwareAddr: dst})
	return err
}

func (s *captureSocket) close() error { return s.conn.Close() }

// joinMAC adds mac to ifi's multicast filter, or in unicast mode to its
// unicast filter (PACKET_MR_UNICAST), for as long as the socket lives.
func joinMAC(raw syscall.RawConn, ifi *net.Interface, mac net.HardwareAddr, mode MACMode) error {
	typ := uint16(unix.PACKET_MR_MULTICAST)
	if mode == MACUnicast {
		typ = unix.PACKET_MR_UNICAST
	}
	mreq := &unix.PacketMreq{Ifindex: int32(ifi.Index), Type: typ, Alen: uint16(len(mac))}
	copy(mreq.Address[:], mac)
	var err error
	cerr := raw.Control(func(fd uintptr) {
		err = unix.SetsockoptPacketMreq(int(fd), unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, mreq)
	})
	if cerr != nil {
		return cerr
	}
	return err
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
