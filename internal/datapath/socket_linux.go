package datapath

import (
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/mdlayher/packet"
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
}

// openCaptureSocket binds a raw packet socket to ifi that sees only the
// cluster's frames (the filter is attached before bind), carries the
// virtio-net header, ignores the node's own outgoing frames and subscribes the
// interface to the cluster MAC. The membership belongs to the socket, so the
// kernel drops it when the socket closes, even when the daemon is killed.
func openCaptureSocket(ifi *net.Interface, vip netip.Addr, clusterMAC net.HardwareAddr) (*captureSocket, error) {
	filter, err := captureFilter(vip, clusterMAC)
	if err != nil {
		return nil, err
	}
	conn, err := packet.Listen(ifi, packet.Raw, unix.ETH_P_ALL, &packet.Config{Filter: filter})
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
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); serr != nil {
			serr = fmt.Errorf("PACKET_IGNORE_OUTGOING: %w", serr)
			return
		}
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketRcvBuf); serr != nil {
			// Without CAP_NET_ADMIN only the capped size is possible.
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, socketRcvBuf)
		}
	})
	if err == nil {
		err = serr
	}
	if err == nil {
		if jerr := conn.JoinGroup(clusterMAC); jerr != nil {
			err = fmt.Errorf("join %s: %w", clusterMAC, jerr)
		}
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("packet socket on %s: %w", ifi.Name, err)
	}
	return s, nil
}

// read fills b with one virtio-net header and frame. The closure is built by
// the caller once, so the per-packet path does not allocate.
func (s *captureSocket) read(fn func(fd uintptr) bool) error { return s.raw.Read(fn) }

// send writes one frame (without virtio-net header) to dst on the interface.
// Only the slow path (ARP) sends, so the small copy is acceptable.
func (s *captureSocket) send(frame []byte, dst net.HardwareAddr) error {
	b := make([]byte, vnetHdrLen+len(frame))
	copy(b[vnetHdrLen:], frame)
	_, err := s.conn.WriteTo(b, &packet.Addr{HardwareAddr: dst})
	return err
}

func (s *captureSocket) close() error { return s.conn.Close() }
