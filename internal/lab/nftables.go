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
func NFTablesRecipe(vip netip.Addr, mac net.HardwareAddr, cfg hash.Config, local int) string {
	fields := map[hash.Mode]string{
		hash.SourceIP:                   "ip saddr",
		hash.SourceIPSourcePort:         "ip saddr . th sport",
		hash.SourceIPSourcePortDestPort: "ip saddr . th sport . th dport",
	}
	return fmt.Sprintf(`table ip cip {
  chain pre {
    type filter hook prerouting priority -300; policy accept;
    ip daddr %[1]s meta pkttype multicast meta pkttype set host
    ip daddr %[1]s jhash %[2]s mod %[3]d seed 0x%[4]x offset 1 != %[5]d drop
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

// NFTablesNode makes h a node of the cluster at VIP the nftables way
// (NFTablesRecipe): the VIP on eth0, the cluster MAC joined, the rules
// loaded. UndoNFTablesNode reverses it.
func (l *Lab) NFTablesNode(h *Host, mac net.HardwareAddr, cfg hash.Config, local int) error {
	if err := l.runAll([][]string{
		{"ip", "-n", h.NS, "addr", "add", VIP.String() + "/32", "dev", "eth0"},
		{"ip", "-n", h.NS, "maddr", "add", mac.String(), "dev", "eth0"},
	}); err != nil {
		return err
	}
	cmd := l.Command(h, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(NFTablesRecipe(VIP, mac, cfg, local))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft on %s: %v: %s", h.Name, err, out)
	}
	return nil
}

// UndoNFTablesNode removes what NFTablesNode added, as far as it is there.
func (l *Lab) UndoNFTablesNode(h *Host, mac net.HardwareAddr) {
	l.runAll([][]string{
		{"ip", "netns", "exec", h.NS, "nft", "delete", "table", "ip", "cip"},
		{"ip", "netns", "exec", h.NS, "nft", "delete", "table", "arp", "cip"},
		{"ip", "-n", h.NS, "maddr", "del", mac.String(), "dev", "eth0"},
		{"ip", "-n", h.NS, "addr", "del", VIP.String() + "/32", "dev", "eth0"},
	})
}
