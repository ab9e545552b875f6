// Package health checks a node's local service, so that a node whose
// service is sick gives up its node numbers in good time.
package health

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Check is one health check as `clusterctl new --check` declares it.
type Check struct {
	Kind     string // tcp, http or exec
	Target   string // port, URL or shell command
	Interval time.Duration
	Timeout  time.Duration
	Fall     int // consecutive failures that make the node unhealthy
	Rise     int // consecutive successes that make it healthy again
}

// Defaults for the check's timing.
const (
	DefaultInterval = time.Second
	DefaultFall     = 3
	DefaultRise     = 2
)

// Parse reads "tcp:PORT", "http:URL" or "exec:COMMAND" with default timing.
func Parse(s string) (Check, error) {
	kind, target, ok := strings.Cut(s, ":")
	c := Check{Kind: kind, Target: target, Interval: DefaultInterval, Fall: DefaultFall, Rise: DefaultRise}
	if !ok || target == "" {
		return Check{}, fmt.Errorf("--check %q: want tcp:PORT, http:URL or exec:COMMAND", s)
	}
	if strings.IndexByte(target, 0) >= 0 {
		return Check{}, fmt.Errorf("--check %q: contains a NUL byte, which no command or URL can hold", s)
	}
	switch kind {
	case "tcp":
		if p, err := strconv.ParseUint(target, 10, 16); err != nil || p == 0 {
			return Check{}, fmt.Errorf("--check %q: port must be 1..65535", s)
		}
	case "http":
		u, err := url.Parse("http:" + target)
		if err != nil || u.Host == "" {
			return Check{}, fmt.Errorf("--check %q: not an http URL (e.g. http://127.0.0.1/health)", s)
		}
	case "exec":
	default:
		return Check{}, fmt.Errorf("--check %q: unknown kind %q; want tcp, http or exec", s, kind)
	}
	return c, nil
}

// String is the --check form.
func (c Check) String() string { return c.Kind + ":" + c.Target }

// Validate checks the timing.
func (c Check) Validate() error {
	switch {
	case c.Interval < 10*time.Millisecond || c.Interval > time.Hour:
		return fmt.Errorf("--check-interval %s: want 10ms..1h", c.Interval)
	case c.Timeout < 0 || c.Timeout > time.Hour:
		return fmt.Errorf("--check-timeout %s: want 0 (the interval)..1h", c.Timeout)
	case c.Fall < 1 || c.Fall > 100:
		return fmt.Errorf("--check-fall %d: want 1..100", c.Fall)
	case c.Rise < 1 || c.Rise > 100:
		return fmt.Errorf("--check-rise %d: want 1..100", c.Rise)
	}
	return nil
}

// checkClient opens a fresh connection for every check, as a new client
// would (a pooled one could pass while the service refuses new ones), and
// judges the first answer, not where a redirect leads.
var checkClient = &http.Client{
	Transport:     &http.Transport{DisableKeepAlives: true},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// probe runs the check once. A tcp check connects to the VIP, which is local
// on the node, so it tests the service exactly where clients reach it.
func (c Check) probe(ctx context.Context, vip netip.Addr) error {
	timeout := c.Timeout
	if timeout == 0 {
		timeout = c.Interval
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch c.Kind {
	case "tcp":
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(vip.String(), c.Target))
		if err != nil {
			return err
		}
		return conn.Close()
	case "http":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http:"+c.Target, nil)
		if err != nil {
			return err
		}
		resp, err := checkClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP %s", resp.Status)
		}
		return nil
	case "exec":
		// The command's children go with it when the check times out: sh
		// alone would leave them holding its output open.
		cmd := exec.CommandContext(ctx, "sh", "-c", c.Target)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		cmd.WaitDelay = 100 * time.Millisecond
		var out tailBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%v: %s", err, strings.TrimSpace(out.String()))
		}
		return nil
	}
	return fmt.Errorf("unknown check kind %q", c.Kind)
}

// maxCheckOutput is how much of an exec check's output is kept for the
// log and status: its end, where the reason for a failure usually is. A
// check that prints without end must not grow the daemon.
const maxCheckOutput = 1024

// tailBuffer keeps the last maxCheckOutput bytes written to it.
type tailBuffer struct {
	buf     []byte
	dropped bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) >= maxCheckOutput {
		t.buf = append(t.buf[:0], p[len(p)-maxCheckOutput:]...)
		t.dropped = true
		return n, nil
	}
	if over := len(t.buf) + len(p) - maxCheckOutput; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
		t.dropped = true
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

func (t *tailBuffer) String() string {
	if t.dropped {
		return "..." + string(t.buf)
	}
	return string(t.buf)
}

// Run checks until ctx ends and calls report on every change of health,
// starting healthy: a node is not sick until its check has failed Fall
// times in a row.
func (c Check) Run(ctx context.Context, vip netip.Addr, report func(healthy bool, err error)) {
	healthy, streak := true, 0
	t := time.NewTicker(c.Interval)
	defer t.Stop()
	for {
		err := c.probe(ctx, vip)
		if ctx.Err() != nil {
			return
		}
		if (err == nil) == healthy {
			streak = 0
		} else {
			streak++
			if (healthy && streak >= c.Fall) || (!healthy && streak >= c.Rise) {
				healthy, streak = !healthy, 0
				report(healthy, err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
