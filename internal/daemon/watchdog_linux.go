package daemon

import (
	"context"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

// Liveness, as the systemd watchdog sees it: the daemon pings only while
// its loops and every datapath reader come round. A wedged daemon stops
// pinging and systemd restarts it (WatchdogSec= in the unit).
const (
	loopStuckAfter   = 5 * time.Second // the link watch ticks every second
	readerStuckAfter = 2 * time.Second // readers come round every 200 ms
)

// beats are the daemon's loops' last rounds (Unix ns).
type beats struct {
	links, failover atomic.Int64
}

// watchdog pings systemd every half WATCHDOG_USEC while the daemon is
// alive; it does nothing outside systemd's watchdog.
func (d *Daemon) watchdog(ctx context.Context) {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return
	}
	tick := time.NewTicker(time.Duration(usec) * time.Microsecond / 2)
	defer tick.Stop()
	stuck := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		why := d.stuck()
		switch {
		case why == "":
			sdNotify("WATCHDOG=1")
			if stuck != "" {
				d.log.Info("watchdog: alive again", "was", stuck)
			}
		case why != stuck:
			d.log.Error("watchdog: part of the daemon is stuck; not telling systemd all is well", "why", why)
		}
		stuck = why
	}
}

// stuck says what part of the daemon has not come round lately, or "".
func (d *Daemon) stuck() string {
	now := time.Now().UnixNano()
	if now-d.beats.links.Load() > int64(loopStuckAfter) {
		return "the link watch"
	}
	if d.ms != nil && now-d.beats.failover.Load() > int64(loopStuckAfter) {
		return "the failover loop"
	}
	d.mu.Lock()
	clusters := make([]*cluster, 0, len(d.clusters))
	for _, c := range d.clusters {
		clusters = append(clusters, c)
	}
	d.mu.Unlock()
	for _, c := range clusters {
		if why := c.dp.Stalled(readerStuckAfter); why != "" {
			return why
		}
	}
	return ""
}
