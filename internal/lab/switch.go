package lab

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// SnoopingSwitch makes the lab's bridge snoop IGMP and MLD with a querier
// of its own, as hypervisor bridges and switched networks commonly do. A
// frame to a multicast MAC then goes only where its IP destination's group
// was joined, and a unicast IP destination (a VIP) to multicast-router ports
// alone: nowhere, in the lab. query is the querier's interval; memberships
// not renewed by an answer to a query expire after twice that and a second.
// The bridge's own querier is in charge at once (no other querier competes
// for it), but the first queries go out only as the bridge starts them: it
// waits until the bridge has sent one of each family.
func (l *Lab) SnoopingSwitch(query time.Duration) error {
	cs := func(d time.Duration) string { return strconv.Itoa(int(d / (10 * time.Millisecond))) } // centiseconds
	if err := ip("-n", l.Switch, "link", "set", "br0", "type", "bridge", "mcast_snooping", "1", "mcast_querier", "1", "mcast_stats_enabled", "1",
		"mcast_query_interval", cs(query), "mcast_startup_query_interval", cs(query/4+10*time.Millisecond),
		"mcast_query_response_interval", cs(time.Second), "mcast_membership_interval", cs(2*query+time.Second),
		"mcast_querier_interval", cs(2*query+time.Second)); err != nil {
		return err
	}
	sw := &Host{Name: "switch", NS: l.Switch}
	deadline := time.Now().Add(3*query + 5*time.Second)
	for time.Now().Before(deadline) {
		out, err := l.Run(sw, "ip", "link", "xstats", "type", "bridge", "dev", "br0")
		if err == nil && queriesSent(out, "IGMP") && queriesSent(out, "MLD") {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("lab: the bridge sent no IGMP and MLD queries within %s", 3*query+5*time.Second)
}

// PlainSwitch turns the bridge's snooping off again: it floods every
// multicast frame.
func (l *Lab) PlainSwitch() error {
	return ip("-n", l.Switch, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0", "mcast_querier", "0")
}

// queriesSent tells from `ip link xstats type bridge dev br0` whether the
// bridge has sent a query of proto (IGMP or MLD): its own queries count in
// the lines under "<proto> queries:".
func queriesSent(xstats, proto string) bool {
	lines := strings.Split(xstats, "\n")
	for i, line := range lines {
		if strings.TrimSpace(line) != proto+" queries:" {
			continue
		}
		for _, l := range lines[i+1 : min(i+3, len(lines))] {
			f := strings.Fields(l)
			for j := 2; j < len(f); j += 2 {
				if n, err := strconv.Atoi(f[j]); err == nil && n > 0 {
					return true
				}
			}
		}
	}
	return false
}
