// Package daemon runs the clusterip daemon: it owns the clusters, the
// control files, the control socket and every change made to the host.
package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/clusterip/clusterip/internal/datapath"
	"github.com/clusterip/clusterip/procfs"
)

// Defaults for a node's single daemon.
const (
	DefaultControlDir = "/run/clusterip"
	DefaultSocket     = "/run/clusterip.sock"
)

// Options configure a Daemon.
type Options struct {
	ControlDir string // where the control files are mounted
	Socket     string // control socket; the host journal lives beside it
	ConfigFile string // clusters to create at start; empty for none
	Log        *slog.Logger
}

// Daemon serves clusters until its context ends.
type Daemon struct {
	opts    Options
	log     *slog.Logger
	journal *hostJournal
	ctl     *procfs.Dir

	mu         sync.Mutex
	clusters   map[netip.Addr]*cluster
	ifaceUsers map[string]int
}

// Run starts the daemon and blocks until ctx is done, then removes every
// cluster and restores the host. A bad config file stops it before anything
// on the host changes.
func Run(ctx context.Context, opts Options) error {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	var specs []Spec
	if opts.ConfigFile != "" {
		f, err := os.Open(opts.ConfigFile)
		if err != nil {
			return fmt.Errorf("config: %w", err)
		}
		specs, err = ParseConfig(opts.ConfigFile, f)
		f.Close()
		if err != nil {
			return err
		}
		for _, s := range specs {
			if err := checkHost(s); err != nil {
				return fmt.Errorf("%s: VIP %s: %w", opts.ConfigFile, s.VIP, err)
			}
		}
	}
	ln, err := listenControlSocket(opts.Socket)
	if err != nil {
		return err
	}
	d := &Daemon{opts: opts, log: opts.Log, clusters: map[netip.Addr]*cluster{}, ifaceUsers: map[string]int{}}
	defer d.shutdown(ln)
	if d.journal, err = openHostJournal(opts.Socket + ".journal"); err != nil {
		d.log.Warn("restoring settings left by a previous run", "err", err)
	}
	if d.ctl, err = procfs.Mount(opts.ControlDir); err != nil {
		return err
	}
	for _, s := range specs {
		if err := d.newCluster(s); err != nil {
			return fmt.Errorf("%s: VIP %s: %w", opts.ConfigFile, s.VIP, err)
		}
	}
	go d.serve(ln)
	d.log.Info("daemon ready", "socket", opts.Socket, "control", opts.ControlDir, "clusters", len(specs))
	sdNotify("READY=1")
	<-ctx.Done()
	sdNotify("STOPPING=1")
	return nil
}

// listenControlSocket refuses to take over a socket another daemon answers
// on, and removes one a dead daemon left behind.
func listenControlSocket(path string) (net.Listener, error) {
	if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
		conn.Close()
		return nil, fmt.Errorf("control socket %s: another daemon is running", path)
	}
	os.Remove(path)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return ln, nil
}

func (d *Daemon) shutdown(ln net.Listener) {
	ln.Close()
	d.mu.Lock()
	vips := make([]netip.Addr, 0, len(d.clusters))
	for vip := range d.clusters {
		vips = append(vips, vip)
	}
	d.mu.Unlock()
	for _, vip := range vips {
		if err := d.deleteCluster(vip); err != nil {
			d.log.Error("stop cluster", "vip", vip, "err", err)
		}
	}
	if d.ctl != nil {
		if err := d.ctl.Close(); err != nil {
			d.log.Error("unmount control files", "err", err)
		}
	}
	if d.journal != nil {
		if err := d.journal.restoreAll(); err != nil {
			d.log.Error("restore host settings", "err", err)
		}
	}
	d.log.Info("daemon stopped")
}

func (d *Daemon) serve(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go d.handle(conn)
	}
}

func (d *Daemon) handle(conn net.Conn) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	var req request
	var resp response
	if err := json.NewDecoder(conn).Decode(&req); err != nil {
		resp.Error = fmt.Sprintf("bad request: %v", err)
	} else if err := d.do(req, &resp); err != nil {
		resp.Error = err.Error()
	}
	json.NewEncoder(conn).Encode(resp)
}

func (d *Daemon) do(req request, resp *response) error {
	switch req.Op {
	case opNew:
		s, err := ParseSpec(req.Args)
		if err != nil {
			return err
		}
		return d.newCluster(s)
	case opDelete:
		vip, err := netip.ParseAddr(req.VIP)
		if err != nil {
			return fmt.Errorf("VIP %q: not an IPv4 address", req.VIP)
		}
		return d.deleteCluster(vip)
	case opStatus:
		resp.Clusters = d.status()
		return nil
	}
	return fmt.Errorf("unknown request %q", req.Op)
}

// checkHost validates what a Spec needs from this host.
func checkHost(s Spec) error {
	ifi, err := net.InterfaceByName(s.Interface)
	if err != nil {
		return fmt.Errorf("--interface %s: no such interface", s.Interface)
	}
	if ifi.Flags&net.FlagLoopback != 0 || len(ifi.HardwareAddr) != 6 {
		return fmt.Errorf("--interface %s: not an Ethernet interface", s.Interface)
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		return err
	}
	for _, other := range ifaces {
		addrs, _ := other.Addrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr() == s.VIP {
				return fmt.Errorf("--vip %s: already an address of %s; remove it there (the daemon puts the VIP on its own TAP)", s.VIP, other.Name)
			}
		}
	}
	return nil
}

func (d *Daemon) newCluster(s Spec) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.clusters[s.VIP]; ok {
		return fmt.Errorf("--vip %s: cluster already exists (delete it first)", s.VIP)
	}
	if err := checkHost(s); err != nil {
		return err
	}
	if d.ifaceUsers[s.Interface] == 0 {
		if err := applyInterfaceSettings(d.journal, s.Interface); err != nil {
			restoreInterfaceSettings(d.journal, s.Interface)
			return fmt.Errorf("--interface %s: %w", s.Interface, err)
		}
	}
	d.ifaceUsers[s.Interface]++
	dp, err := datapath.Open(datapath.Config{VIP: s.VIP, Interface: s.Interface, ClusterMAC: s.ClusterMAC, Hash: s.HashConfig()}, s.LocalNodes, d.log)
	if err == nil {
		c := &cluster{spec: s, dp: dp, log: d.log.With("vip", s.VIP.String())}
		if err = d.ctl.Add(s.VIP.String(), c); err == nil {
			d.clusters[s.VIP] = c
			d.log.Info("cluster created", "vip", s.VIP, "interface", s.Interface, "mode", s.Mode,
				"total", s.TotalNodes, "nodes", s.LocalNodes.String(), "tap", dp.TapName())
			return nil
		}
		dp.Close()
	}
	d.releaseInterface(s.Interface)
	return err
}

func (d *Daemon) deleteCluster(vip netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.clusters[vip]
	if !ok {
		return fmt.Errorf("VIP %s: no such cluster", vip)
	}
	delete(d.clusters, vip)
	err := errors.Join(d.ctl.Remove(vip.String()), c.dp.Close(), d.releaseInterface(c.spec.Interface))
	d.log.Info("cluster deleted", "vip", vip)
	return err
}

// releaseInterface drops one cluster's use of iface and restores its
// settings when no cluster uses it any more. Callers hold d.mu.
func (d *Daemon) releaseInterface(iface string) error {
	d.ifaceUsers[iface]--
	if d.ifaceUsers[iface] > 0 {
		return nil
	}
	delete(d.ifaceUsers, iface)
	return restoreInterfaceSettings(d.journal, iface)
}

func (d *Daemon) status() []ClusterStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]ClusterStatus, 0, len(d.clusters))
	for _, c := range d.clusters {
		s := c.spec
		s.LocalNodes = c.dp.Nodes()
		out = append(out, ClusterStatus{Args: s.Args(), Tap: c.dp.TapName(), Stats: c.dp.Stats()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Args[1] < out[j].Args[1] })
	return out
}
