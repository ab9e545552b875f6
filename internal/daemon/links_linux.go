package daemon

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/clusterip/clusterip/internal/datapath"
	"github.com/vishvananda/netlink"
)

// linkCheckInterval is how often the interfaces are checked without a
// netlink event: a missed event (a full socket buffer) costs at most this.
const linkCheckInterval = time.Second

// linkState is what the daemon last saw of an interface its clusters use.
type linkState struct {
	gone  bool
	index int
	up    bool // administratively up and with carrier
	since time.Time
}

func (s linkState) problem(iface string) string {
	switch {
	case s.gone:
		return fmt.Sprintf("interface %s gone since %s: nothing is answered until it is back", iface, s.since.Format(time.TimeOnly))
	case !s.up:
		return fmt.Sprintf("interface %s down since %s: nothing is answered until it is up", iface, s.since.Format(time.TimeOnly))
	}
	return ""
}

func readLink(iface string) linkState {
	ifi, err := datapath.InterfaceByName(iface)
	if err != nil {
		return linkState{gone: true}
	}
	return linkState{index: ifi.Index, up: ifi.Flags&net.FlagUp != 0 && ifi.Flags&net.FlagRunning != 0}
}

// watchLinks follows the interfaces the clusters use until ctx ends. An
// interface that goes away takes the capture sockets, the kernel path, the
// multicast membership and the sysctls with it; when one of the same name
// comes back, everything is attached and set again. Meanwhile the clusters
// on it say so in the log and in status, and under automatic failover the
// node gives their numbers up at once, as it cannot answer anything.
func (d *Daemon) watchLinks(ctx context.Context) {
	updates := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) { d.log.Debug("link updates", "err", err) },
	})
	if err != nil {
		d.log.Warn("no link updates from netlink; checking interfaces every second instead", "err", err)
		updates = nil
	}
	tick := time.NewTicker(linkCheckInterval)
	defer tick.Stop()
	for {
		d.beats.links.Store(time.Now().UnixNano())
		select {
		case <-ctx.Done():
			return
		case _, ok := <-updates:
			if !ok {
				updates = nil // subscription ended; the tick goes on
				continue
			}
		case <-tick.C:
		}
		d.checkLinks()
	}
}

// checkLinks compares every interface in use with what was last seen of
// it, and acts on the difference.
func (d *Daemon) checkLinks() {
	d.mu.Lock()
	byIface := map[string][]*cluster{}
	for _, c := range d.clusters {
		byIface[c.spec.Interface] = append(byIface[c.spec.Interface], c)
	}
	d.mu.Unlock()
	for iface, clusters := range byIface {
		now := readLink(iface)
		d.mu.Lock()
		prev, known := d.links[iface]
		d.mu.Unlock()
		if !known {
			prev = linkState{index: now.index, up: true, since: time.Now()}
		}
		now.since = prev.since
		if now.gone != prev.gone || now.up != prev.up || now.index != prev.index {
			now.since = time.Now()
		}
		switch {
		case now.gone && !prev.gone:
			d.log.Error("interface gone: its clusters answer nothing until it is back", "interface", iface)
			for _, c := range clusters {
				c.dp.Detach()
			}
			// Its settings went with it; a new interface of the same name
			// starts from its own.
			if err := d.journal.forget(iface); err != nil {
				d.log.Warn("host journal", "err", err)
			}
		case !now.gone && (prev.gone || now.index != prev.index):
			d.log.Warn("interface back: attaching again", "interface", iface, "index", now.index)
			if !prev.gone {
				// Gone and back between two looks: the settings journaled
				// were the old interface's.
				d.journal.forget(iface)
			}
			d.mu.Lock()
			err := d.reapplyInterfaceSettings(iface)
			d.mu.Unlock()
			if err != nil {
				d.log.Error("interface settings", "interface", iface, "err", err)
			}
			for _, c := range clusters {
				if err := c.dp.Attach(); err != nil {
					c.log.Error("attach to interface", "interface", iface, "err", err)
				}
			}
		case !now.gone && now.up && !prev.up:
			d.log.Info("interface up again", "interface", iface)
			for _, c := range clusters {
				c.dp.Announce()
			}
		case !now.gone && !now.up && prev.up:
			d.log.Error("interface down: its clusters answer nothing until it is up", "interface", iface)
		}
		d.mu.Lock()
		d.links[iface] = now
		d.mu.Unlock()
		for _, c := range clusters {
			c.setLinkProblem(now.problem(iface))
		}
	}
}
