package datapath

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// tapDevice is the TAP that holds the VIP. The local stack sees owned
// packets arrive on it as if from a wire; replies leave through the normal
// routes, not through the TAP. It has one queue per worker, so workers write
// in parallel.
type tapDevice struct {
	queues []int // file descriptors, one per queue
	name   string
	mac    net.HardwareAddr
}

// TapName is the TAP device name for a VIP: derived, so that every part of
// the daemon (and an operator reading `ip link`) can tell whose it is.
func TapName(vip netip.Addr) string {
	b := vip.As4()
	return fmt.Sprintf("cip%02x%02x%02x%02x", b[0], b[1], b[2], b[3])
}

// openTap creates a non-persistent TAP: it disappears with the daemon's file
// descriptor, so a crash cannot leave it behind. IPv6 is off on it (the VIP is
// IPv4 and link-local chatter would only be noise), ARP is off (nothing is ever
// routed out of it), and reverse-path filtering is loose because replies to
// what arrives on it leave through another interface.
func openTap(name string, vip netip.Addr, queues int) (*tapDevice, error) {
	t := &tapDevice{name: name}
	for i := 0; i < queues; i++ {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			t.close()
			return nil, fmt.Errorf("open /dev/net/tun: %w", err)
		}
		t.queues = append(t.queues, fd)
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			t.close()
			return nil, fmt.Errorf("tap %s: %w", name, err)
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_MULTI_QUEUE)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			t.close()
			return nil, fmt.Errorf("create tap %s queue %d: %w", name, i, err)
		}
	}
	if err := t.configure(vip); err != nil {
		t.close()
		return nil, err
	}
	return t, nil
}

func (t *tapDevice) configure(vip netip.Addr) error {
	link, err := netlink.LinkByName(t.name)
	if err != nil {
		return fmt.Errorf("tap %s: %w", t.name, err)
	}
	t.mac = link.Attrs().HardwareAddr
	for path, value := range map[string]string{
		"/proc/sys/net/ipv6/conf/" + t.name + "/disable_ipv6": "1",
		"/proc/sys/net/ipv4/conf/" + t.name + "/rp_filter":    "2",
	} {
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("tap %s: %w", t.name, err)
		}
	}
	if err := netlink.LinkSetARPOff(link); err != nil {
		return fmt.Errorf("tap %s: arp off: %w", t.name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("tap %s: up: %w", t.name, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("tap %s: add %s: %w", t.name, vip, err)
	}
	return nil
}

// deliver writes one packet (virtio-net header first) to TAP queue fd,
// counting it in c. The destination MAC becomes the TAP's own so the stack
// takes the packet as addressed to this host (TCP discards anything else),
// as the kernel target set pkt_type to PACKET_HOST.
func (t *tapDevice) deliver(fd int, b []byte, c *counters) {
	copy(b[vnetHdrLen:vnetHdrLen+6], t.mac)
	if _, err := unix.Write(fd, b); err != nil {
		c.tapErrors.Add(1)
		return
	}
	c.owned.Add(1)
}

func (t *tapDevice) close() error {
	var err error
	for _, fd := range t.queues {
		if cerr := unix.Close(fd); err == nil {
			err = cerr
		}
	}
	return err
}
