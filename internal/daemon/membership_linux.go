package daemon

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"

	"github.com/clusterip/clusterip/internal/membership"
	"github.com/vishvananda/netlink"
)

// config resolves the membership options: the key, the node name and the
// address to gossip on.
func (o *MembershipOptions) config(log *slog.Logger) (membership.Config, error) {
	c := membership.Config{Name: o.Name, Bind: o.Bind, Port: o.Port, Peers: o.Peers, Insecure: o.Insecure, Log: log}
	if c.Port == 0 {
		c.Port = membership.DefaultPort
	}
	if c.Port < 1 || c.Port > 65535 {
		return c, fmt.Errorf("--gossip-port %d: want 1..65535", c.Port)
	}
	switch {
	case o.KeyFile != "" && o.Insecure:
		return c, fmt.Errorf("--gossip-key and --gossip-insecure: choose one")
	case o.KeyFile != "":
		k, err := membership.LoadKey(o.KeyFile)
		if err != nil {
			return c, fmt.Errorf("--gossip-key %s: %w", o.KeyFile, err)
		}
		c.Key = k
	case !o.Insecure:
		return c, fmt.Errorf("--peers needs --gossip-key FILE (make one with: clusterctl genkey FILE), or --gossip-insecure")
	}
	if c.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return c, fmt.Errorf("--node-name: %w", err)
		}
		c.Name = h
	}
	if !c.Bind.IsValid() {
		if len(o.Peers) == 0 {
			return c, fmt.Errorf("--bind is needed when there is no peer to route to")
		}
		b, err := sourceAddrFor(o.Peers[0])
		if err != nil {
			return c, fmt.Errorf("--bind: %w (set it explicitly)", err)
		}
		c.Bind = b
	}
	return c, nil
}

// sourceAddrFor is the address this host uses to reach peer: the primary
// address of the interface its route goes through.
func sourceAddrFor(peer string) (netip.Addr, error) {
	host, _, err := net.SplitHostPort(peer)
	if err != nil {
		host = peer
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		return netip.Addr{}, fmt.Errorf("peer %s: cannot resolve", peer)
	}
	routes, err := netlink.RouteGet(ips[0])
	if err != nil || len(routes) == 0 || routes[0].Src == nil {
		return netip.Addr{}, fmt.Errorf("peer %s: no route", peer)
	}
	a, _ := netip.AddrFromSlice(routes[0].Src.To4())
	return a, nil
}
