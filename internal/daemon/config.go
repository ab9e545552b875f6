package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strings"

	"github.com/clusterip/clusterip/internal/datapath"
	"github.com/clusterip/clusterip/nodeset"
	"github.com/vishvananda/netlink"
)

// readConfig parses a config file and checks every cluster against this
// host, without changing anything. peers tells whether the daemon runs with
// automatic failover (a health check needs it).
func readConfig(path string, peers bool) ([]Spec, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	specs, err := ParseConfig(path, f)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, s := range specs {
		if err := checkHost(s); err != nil {
			errs = append(errs, fmt.Errorf("%s: VIP %s: %w", path, s.VIP, err))
		}
		if s.Check != nil && !peers {
			errs = append(errs, fmt.Errorf("%s: VIP %s: --check needs a daemon with --peers (automatic failover)", path, s.VIP))
		}
	}
	return specs, errors.Join(errs...)
}

// CheckConfig validates a config file as the daemon would load it: the
// grammar, the values, the interfaces (they exist and are Ethernet) and the
// VIPs (declared once, not already an address of this host other than a
// running daemon's own TAP for it). It changes nothing on the host. It
// returns the clusters, or every problem found, one per line.
func CheckConfig(path string) ([]Spec, error) {
	return readConfig(path, true)
}

// checkHost validates what a Spec needs from this host.
func checkHost(s Spec) error {
	ifi, err := datapath.InterfaceByName(s.Interface)
	if err != nil {
		return fmt.Errorf("--interface %s: no such interface", s.Interface)
	}
	if ifi.Flags&net.FlagLoopback != 0 || len(ifi.HardwareAddr) != 6 {
		return fmt.Errorf("--interface %s: not an Ethernet interface", s.Interface)
	}
	if s.VIP.Is6() {
		v, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + s.Interface + "/disable_ipv6")
		if err != nil || strings.TrimSpace(string(v)) != "0" {
			return fmt.Errorf("--interface %s: IPv6 is off on it (net.ipv6.conf.%s.disable_ipv6); an IPv6 VIP needs it on", s.Interface, s.Interface)
		}
	}
	// One dump of the host's addresses: asking each interface for its own
	// would cost a dump per interface, and there is a TAP per cluster.
	family := netlink.FAMILY_V4
	if s.VIP.Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(nil, family)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); !ok || ip.Unmap() != s.VIP {
			continue
		}
		name := fmt.Sprintf("interface %d", a.LinkIndex)
		if l, err := netlink.LinkByIndex(a.LinkIndex); err == nil {
			name = l.Attrs().Name
		}
		if name == datapath.TapName(s.VIP) {
			continue // a running daemon's own: a reload, or `check` beside it
		}
		return fmt.Errorf("--vip %s: already an address of %s; remove it there (the daemon puts the VIP on its own TAP)", s.VIP, name)
	}
	return nil
}

// sameCluster tells whether two specs declare the same cluster but for
// their node numbers: the change a reload can make in place.
func sameCluster(a, b Spec) bool {
	a.LocalNodes, b.LocalNodes = 0, 0
	return reflect.DeepEqual(a, b)
}

// reload re-reads the config file and applies the difference with what it
// loaded before: clusters added to it are created, those removed from it
// deleted, a changed node set moves numbers as a control-file write would
// (through handoffs, with automatic failover), and any other change
// recreates the cluster. Clusters created with `new` and never in the file
// are left alone, and so are changes made through the control files to a
// cluster whose line did not change. A file that fails to load changes
// nothing.
func (d *Daemon) reload() (string, error) {
	path := d.opts.ConfigFile
	if path == "" {
		err := errors.New("reload: the daemon was started without --config; there is nothing to re-read")
		d.log.Warn(err.Error())
		return "", err
	}
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	specs, err := readConfig(path, d.ms != nil)
	if err != nil {
		d.log.Error("reload refused; nothing changed", "err", strings.ReplaceAll(err.Error(), "\n", "; "))
		return "", err
	}
	want := map[netip.Addr]Spec{}
	for _, s := range specs {
		want[s.VIP] = s
	}
	type change struct {
		spec Spec
		c    *cluster
	}
	var added []Spec
	var removed []netip.Addr
	var renumbered, recreated []change
	unchanged := 0
	d.mu.Lock()
	for _, s := range specs {
		c, ok := d.clusters[s.VIP]
		switch {
		case !ok:
			added = append(added, s)
		case !c.fromConfig || !sameCluster(c.spec, s):
			recreated = append(recreated, change{s, c})
		case c.spec.LocalNodes != s.LocalNodes:
			renumbered = append(renumbered, change{s, c})
		default:
			unchanged++
		}
	}
	for vip, c := range d.clusters {
		if _, ok := want[vip]; !ok && c.fromConfig {
			removed = append(removed, vip)
		}
	}
	d.mu.Unlock()

	var errs []error
	for _, vip := range removed {
		d.log.Info("reload: cluster removed from the config; deleting it", "vip", vip)
		errs = append(errs, d.deleteCluster(vip))
	}
	for _, ch := range recreated {
		d.log.Warn("reload: cluster changed beyond its node numbers; recreating it (its connections go)", "vip", ch.spec.VIP,
			"was", strings.Join(ch.c.spec.Args(), " "), "now", strings.Join(ch.spec.Args(), " "))
		d.retire(ch.spec.VIP, ch.c)
		if err := d.deleteCluster(ch.spec.VIP); err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, d.newClusterFrom(ch.spec, true))
	}
	for _, ch := range renumbered {
		ch.c.renumber(ch.spec.LocalNodes)
	}
	for _, s := range added {
		d.log.Info("reload: cluster added to the config; creating it", "vip", s.VIP)
		errs = append(errs, d.newClusterFrom(s, true))
	}
	summary := fmt.Sprintf("%s: %d added, %d removed, %d renumbered, %d recreated, %d unchanged",
		path, len(added), len(removed), len(renumbered), len(recreated), unchanged)
	if err := errors.Join(errs...); err != nil {
		d.log.Error("reload: applied in part", "summary", summary, "err", err)
		return summary, fmt.Errorf("reload applied in part (%s): %w", summary, err)
	}
	d.log.Info("reloaded", "summary", summary)
	return summary, nil
}

// retire keeps the counters of a cluster about to be recreated.
func (d *Daemon) retire(vip netip.Addr, c *cluster) {
	st := c.dp.Stats()
	d.mu.Lock()
	r := d.retired[vip]
	r.stats.Add(st)
	r.handoffs += c.handoffs.Load()
	d.retired[vip] = r
	d.mu.Unlock()
}

// renumber applies a config file's changed node set to a running cluster:
// the numbers the file no longer gives it go, the ones it newly gives
// come, and changes made through the control file to other numbers stay.
// With automatic failover the home numbers change and the handoffs follow.
func (c *cluster) renumber(next nodeset.NodeSet) {
	c.mu.Lock()
	defer c.mu.Unlock()
	prev := c.spec.LocalNodes
	gone, come := prev&^next, next&^prev
	c.spec.LocalNodes = next
	if c.fo != nil {
		c.fo.home = c.fo.home&^gone | come
		c.fo.excluded &^= come
		c.log.Info("reload: home numbers changed", "home", c.fo.home.String())
		c.kick()
		return
	}
	nodes := c.dp.Nodes()&^gone | come
	c.dp.SetNodes(nodes)
	c.servingChangedLocked()
	c.log.Info("reload: numbers changed", "nodes", nodes.String())
}
