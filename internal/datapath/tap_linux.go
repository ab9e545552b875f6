package datapath

import (
	"fmt"
	"hash/fnv"
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
// the daemon (and an operator reading `ip link`) can tell whose it is. An
// IPv4 VIP is spelled out in hex; an IPv6 one does not fit in a name (15
// bytes), so it is "cip6" and 44 bits of its FNV-1a hash.
func TapName(vip netip.Addr) string {
	if vip.Is4() {
		b := vip.As4()
		return fmt.Sprintf("cip%02x%02x%02x%02x", b[0], b[1], b[2], b[3])
	}
	h := fnv.New64a()
	b := vip.As16()
	h.Write(b[:])
	return fmt.Sprintf("cip6%011x", h.Sum64()>>20)
}

// openTap creates a non-persistent TAP: it disappears with the daemon's file
// descriptor, so a crash cannot leave it behind. ARP is off (nothing is ever
// routed out of it), and reverse-path filtering is loose because replies to
// what arrives on it leave through another interface. For an IPv4 VIP, IPv6
// is off on it (link-local chatter would only be noise); for an IPv6 VIP
// it has no link-local address, no autoconfiguration and no duplicate
// address detection: every node holds the VIP, by design.
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
	conf6 := "/proc/sys/net/ipv6/conf/" + t.name + "/"
	settings := [][2]string{
		{conf6 + "disable_ipv6", "1"},
		{"/proc/sys/net/ipv4/conf/" + t.name + "/rp_filter", "2"},
	}
	mask := net.CIDRMask(32, 32)
	var flags int
	if vip.Is6() {
		settings = [][2]string{
			{conf6 + "addr_gen_mode", "1"}, // no link-local address
			{conf6 + "accept_dad", "0"},
			{conf6 + "dad_transmits", "0"},
			{conf6 + "accept_ra", "0"},
			{conf6 + "autoconf", "0"},
			{conf6 + "router_solicitations", "0"},
			{conf6 + "disable_ipv6", "0"},
		}
		mask, flags = net.CIDRMask(128, 128), unix.IFA_F_NODAD
	}
	for _, kv := range settings {
		if err := os.WriteFile(kv[0], []byte(kv[1]), 0o644); err != nil && !(os.IsNotExist(err) && !vip.Is6()) {
			return fmt.Errorf("tap %s: %w", t.name, err)
		}
	}
	if err := netlink.LinkSetARPOff(link); err != nil {
		return fmt.Errorf("tap %s: arp off: %w", t.name, err)
	}
	// Nothing is ever sent out through the TAP (nobody reads it), but a
	// multi-queue TAP has 256 transmit queues, and by default going up
	// gives each a pfifo_fast ring of txqueuelen entries: 6.6 MB of kernel
	// memory per cluster, 6.6 GB for a thousand. With no queue length the
	// kernel attaches noqueue instead, and what the stack might send
	// there is dropped at once rather than kept in rings nobody drains.
	if err := netlink.LinkSetTxQLen(link, 0); err != nil {
		return fmt.Errorf("tap %s: txqueuelen 0: %w", t.name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("tap %s: up: %w", t.name, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: vip.AsSlice(), Mask: mask}, Flags: flags}
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
