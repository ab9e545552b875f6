package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/clusterip/clusterip/internal/daemon"
)

// Status is h's daemon's status document.
func (l *Lab) Status(h *Host) (daemon.Status, error) {
	var st daemon.Status
	out, err := l.Clusterctl(h, "status", "--json")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("status of %s: %w", h.Name, err)
	}
	return st, nil
}

// waitStatus polls the status of each of nodes, every so often, until
// wrong(i, status) finds nothing wrong with node i's (it returns ""), or
// timeout has passed since the call.
func waitStatus(ctx context.Context, l *Lab, nodes []*Host, timeout, every time.Duration, wrong func(i int, st daemon.Status) string) error {
	deadline := time.Now().Add(timeout)
	for i, h := range nodes {
		for {
			st, err := l.Status(h)
			why := ""
			if err != nil {
				why = err.Error()
			} else if why = wrong(i, st); why == "" {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s after %s: %s", h.Name, timeout, why)
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			time.Sleep(every)
		}
	}
	return nil
}

// clusterOf is vip's cluster in st, if st has it.
func clusterOf(st daemon.Status, vip string) (daemon.ClusterStatus, bool) {
	for _, c := range st.Clusters {
		if c.VIP == vip {
			return c, true
		}
	}
	return daemon.ClusterStatus{}, false
}
