package lab

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/clusterip/clusterip/hash"
)

// NFTablesRecipe is the kernel's own way to be a cluster node today, as
// Pacemaker's IPaddr2 writes it on kernels without CLUSTERIP: take the
// cluster MAC's frames to vip as addressed to the host, drop what another
// node owns by nftables' jhash, and give ARP replies for vip the cluster
// MAC. The node answers for number local of cfg.TotalNodes.
//
// For IPv6 nftables cannot make the kernel advertise the cluster MAC for
// the VIP (which is why Pacemaker's IPaddr2 clone is known broken on IPv6):
// the recipe only keeps the kernel from advertising its own MAC for it,
// and relies on daemon nodes, or a static neighbour entry on the clients,
// for the cluster MAC.
func NFTablesRecipe(vip netip.Addr, mac net.HardwareAddr, cfg hash.Config, local int) string {
	fields := map[hash.Mode]string{
		hash.SourceIP:                   "saddr",
		hash.SourceIPSourcePort:         "saddr . th sport",
		hash.SourceIPSourcePortDestPort: "saddr . th sport . th dport",
	}
	if vip.Is6() {
		return fmt.Sprintf(`table ip6 cip {
  chain pre {
    type filter hook prerouting priority -300; policy accept;
    ip6 daddr %[1]s meta pkttype multicast meta pkttype set host
    ip6 daddr %[1]s jhash ip6 %[2]s mod %[3]d seed 0x%[4]x offset 1 != %[5]d drop
  }
  chain out {
    type filter hook output priority 0; policy accept;
    icmpv6 type nd-neighbor-advert ip6 saddr %[1]s drop
  }
}
`, vip, fields[cfg.Mode], cfg.TotalNodes, cfg.Seed, local)
	}
	return fmt.Sprintf(`table ip cip {
  chain pre {
    type filter hook prerouting priority -300; policy accept;
    ip daddr %[1]s meta pkttype multicast meta pkttype set host
    ip daddr %[1]s jhash ip %[2]s mod %[3]d seed 0x%[4]x offset 1 != %[5]d drop
  }
}
table arp cip {
  chain out {
    type filter hook output priority 0; policy accept;
    arp operation reply arp saddr ip %[1]s arp saddr ether set %[6]s
  }
}
`, vip, fields[cfg.Mode], cfg.TotalNodes, cfg.Seed, local, mac)
}

// NFTablesNode makes h a node of the cluster at vip the nftables way
// (NFTablesRecipe): the VIP on eth0, the cluster MAC joined, the rules
// loaded. UndoNFTablesNode reverses it.
func (l *Lab) NFTablesNode(h *Host, vip netip.Addr, mac net.HardwareAddr, cfg hash.Config, local int) error {
	if err := l.runAll([][]string{
		append([]string{"ip", "-n", h.NS, "addr", "add", hostPrefix(vip), "dev", "eth0"}, nodad(vip)...),
		{"ip", "-n", h.NS, "maddr", "add", mac.String(), "dev", "eth0"},
	}); err != nil {
		return err
	}
	cmd := l.Command(h, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(NFTablesRecipe(vip, mac, cfg, local))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft on %s: %v: %s", h.Name, err, out)
	}
	return nil
}

// UndoNFTablesNode removes what NFTablesNode added, as far as it is there.
func (l *Lab) UndoNFTablesNode(h *Host, vip netip.Addr, mac net.HardwareAddr) {
	table := []string{"ip", "cip"}
	if vip.Is6() {
		table = []string{"ip6", "cip"}
	}
	for _, c := range [][]string{
		append([]string{"ip", "netns", "exec", h.NS, "nft", "delete", "table"}, table...),
		{"ip", "netns", "exec", h.NS, "nft", "delete", "table", "arp", "cip"}, // IPv4 only
		{"ip", "-n", h.NS, "maddr", "del", mac.String(), "dev", "eth0"},
		{"ip", "-n", h.NS, "addr", "del", hostPrefix(vip), "dev", "eth0"},
	} {
		l.runAll([][]string{c}) // each on its own: one missing must not keep the rest
	}
}

// hostPrefix is vip as a host route: /32 or /128.
func hostPrefix(vip netip.Addr) string {
	return netip.PrefixFrom(vip, vip.BitLen()).String()
}

// nodad keeps an IPv6 address from duplicate address detection, which
// every other node holding it would fail.
func nodad(vip netip.Addr) []string {
	if vip.Is6() {
		return []string{"nodad"}
	}
	return nil
}
