package health_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterip/clusterip/internal/health"
)

var loopback = netip.MustParseAddr("127.0.0.1")

func TestParse(t *testing.T) {
	tests := []struct {
		in     string
		kind   string // "" when Parse must fail
		target string
		errHas string
	}{
		{in: "tcp:80", kind: "tcp", target: "80"},
		{in: "tcp:1", kind: "tcp", target: "1"},
		{in: "tcp:65535", kind: "tcp", target: "65535"},
		{in: "tcp:0", errHas: "1..65535"},
		{in: "tcp:65536", errHas: "1..65535"},
		{in: "tcp:-1", errHas: "1..65535"},
		{in: "tcp:+80", errHas: "1..65535"},
		{in: "tcp:http", errHas: "1..65535"},
		{in: "tcp: 80", errHas: "1..65535"},
		{in: "tcp:80 ", errHas: "1..65535"},
		{in: "tcp:127.0.0.1:80", errHas: "1..65535"},
		{in: "tcp:", errHas: "want tcp:PORT"},
		{in: "tcp", errHas: "want tcp:PORT"},

		// The kind is what precedes the first colon, so the URL's scheme
		// is the kind and the target is the rest of the URL.
		{in: "http://127.0.0.1/health", kind: "http", target: "//127.0.0.1/health"},
		{in: "http://x/y", kind: "http", target: "//x/y"},
		{in: "http://127.0.0.1:8080/health?full=1", kind: "http", target: "//127.0.0.1:8080/health?full=1"},
		{in: "http://[::1]:8080/", kind: "http", target: "//[::1]:8080/"},
		{in: "http://localhost", kind: "http", target: "//localhost"},
		{in: "http:127.0.0.1/health", errHas: "not an http URL"}, // no //: no host
		{in: "http:///health", errHas: "not an http URL"},
		{in: "http://", errHas: "not an http URL"},
		{in: "http://bad host/", errHas: "not an http URL"},
		{in: "http:", errHas: "want tcp:PORT"},
		{in: "https://127.0.0.1/health", errHas: `unknown kind "https"`},

		{in: "exec:true", kind: "exec", target: "true"},
		{in: "exec:curl -sf http://127.0.0.1:8080/", kind: "exec", target: "curl -sf http://127.0.0.1:8080/"},
		{in: "exec: pgrep nginx ", kind: "exec", target: " pgrep nginx "},
		{in: "exec:", errHas: "want tcp:PORT"},

		{in: "", errHas: "want tcp:PORT"},
		{in: ":80", errHas: `unknown kind ""`},
		{in: "udp:53", errHas: `unknown kind "udp"`},
		{in: "TCP:80", errHas: `unknown kind "TCP"`},
		{in: "ping:10.0.0.1", errHas: `unknown kind "ping"`},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			c, err := health.Parse(tc.in)
			if tc.kind == "" {
				if err == nil {
					t.Fatalf("Parse(%q) = %+v, want an error", tc.in, c)
				}
				if c != (health.Check{}) {
					t.Errorf("Parse(%q) returned %+v with its error", tc.in, c)
				}
				if !strings.Contains(err.Error(), tc.errHas) {
					t.Errorf("error %q does not contain %q", err, tc.errHas)
				}
				if !strings.Contains(err.Error(), strconv.Quote(tc.in)) {
					t.Errorf("error %q does not quote the --check value", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.in, err)
			}
			want := health.Check{
				Kind:     tc.kind,
				Target:   tc.target,
				Interval: health.DefaultInterval,
				Fall:     health.DefaultFall,
				Rise:     health.DefaultRise,
			}
			if c != want {
				t.Errorf("Parse(%q) = %+v, want %+v", tc.in, c, want)
			}
			if err := c.Validate(); err != nil {
				t.Errorf("Validate(Parse(%q)): %v", tc.in, err)
			}
			// String gives back the --check form, which parses the same.
			if s := c.String(); s != tc.in {
				t.Errorf("String() = %q, want %q", s, tc.in)
			}
			if again, err := health.Parse(c.String()); err != nil || again != c {
				t.Errorf("Parse(String()) = %+v, %v; want %+v", again, err, c)
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	if health.DefaultInterval != time.Second || health.DefaultFall != 3 || health.DefaultRise != 2 {
		t.Errorf("defaults interval %v fall %d rise %d, want 1s, 3, 2", health.DefaultInterval, health.DefaultFall, health.DefaultRise)
	}
}

func TestValidate(t *testing.T) {
	good := health.Check{Kind: "tcp", Target: "80", Interval: time.Second, Fall: 3, Rise: 2}
	tests := []struct {
		name   string
		modify func(*health.Check)
		errHas string // "" if valid
	}{
		{"defaults", func(*health.Check) {}, ""},
		{"interval 10ms", func(c *health.Check) { c.Interval = 10 * time.Millisecond }, ""},
		{"interval 1h", func(c *health.Check) { c.Interval = time.Hour }, ""},
		{"interval 9ms", func(c *health.Check) { c.Interval = 9 * time.Millisecond }, "--check-interval"},
		{"interval 0", func(c *health.Check) { c.Interval = 0 }, "--check-interval"},
		{"interval negative", func(c *health.Check) { c.Interval = -time.Second }, "--check-interval"},
		{"interval over 1h", func(c *health.Check) { c.Interval = time.Hour + 1 }, "--check-interval"},
		{"timeout 0 means the interval", func(c *health.Check) { c.Timeout = 0 }, ""},
		{"timeout 1ns", func(c *health.Check) { c.Timeout = 1 }, ""},
		{"timeout longer than interval", func(c *health.Check) { c.Timeout = 5 * time.Second }, ""},
		{"timeout 1h", func(c *health.Check) { c.Timeout = time.Hour }, ""},
		{"timeout negative", func(c *health.Check) { c.Timeout = -1 }, "--check-timeout"},
		{"timeout over 1h", func(c *health.Check) { c.Timeout = time.Hour + 1 }, "--check-timeout"},
		{"fall 1", func(c *health.Check) { c.Fall = 1 }, ""},
		{"fall 100", func(c *health.Check) { c.Fall = 100 }, ""},
		{"fall 0", func(c *health.Check) { c.Fall = 0 }, "--check-fall"},
		{"fall 101", func(c *health.Check) { c.Fall = 101 }, "--check-fall"},
		{"fall negative", func(c *health.Check) { c.Fall = -3 }, "--check-fall"},
		{"rise 1", func(c *health.Check) { c.Rise = 1 }, ""},
		{"rise 100", func(c *health.Check) { c.Rise = 100 }, ""},
		{"rise 0", func(c *health.Check) { c.Rise = 0 }, "--check-rise"},
		{"rise 101", func(c *health.Check) { c.Rise = 101 }, "--check-rise"},
		{"zero Check", func(c *health.Check) { *c = health.Check{} }, "--check-interval"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.modify(&c)
			err := c.Validate()
			if tc.errHas == "" {
				if err != nil {
					t.Fatalf("Validate(%+v): %v", c, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate(%+v) = nil, want an error", c)
			}
			if !strings.Contains(err.Error(), tc.errHas) {
				t.Errorf("error %q does not name %s", err, tc.errHas)
			}
		})
	}
}

type report struct {
	healthy bool
	err     error
	probes  int64 // probes the service had seen when report was called, if counted
}

// runner runs c.Run until the test ends, passing reports on a channel.
// probes, if not nil, is read inside report: the number of probes the
// service under test has answered so far.
func runner(t *testing.T, c health.Check, probes func() int64) <-chan report {
	t.Helper()
	return runnerAt(t, c, loopback, probes)
}

// runnerAt is runner for a check of vip.
func runnerAt(t *testing.T, c health.Check, vip netip.Addr, probes func() int64) <-chan report {
	t.Helper()
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	ch := make(chan report, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx, vip, func(healthy bool, err error) {
			r := report{healthy: healthy, err: err}
			if probes != nil {
				r.probes = probes()
			}
			select {
			case ch <- r:
			default:
				t.Errorf("report channel full; dropped %+v", r)
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return within 5s of its context ending")
		}
	})
	return ch
}

func expectReport(t *testing.T, ch <-chan report, healthy bool, within time.Duration) report {
	t.Helper()
	select {
	case r := <-ch:
		if r.healthy != healthy {
			t.Fatalf("report(healthy=%v, %v), want healthy=%v", r.healthy, r.err, healthy)
		}
		if healthy && r.err != nil {
			t.Errorf("report(healthy=true) with error %v", r.err)
		}
		if !healthy && r.err == nil {
			t.Errorf("report(healthy=false) without the error")
		}
		return r
	case <-time.After(within):
		t.Fatalf("no report(healthy=%v) within %v", healthy, within)
	}
	panic("unreachable")
}

func expectNoReport(t *testing.T, ch <-chan report, until func() bool, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !until() {
		select {
		case r := <-ch:
			t.Fatalf("unexpected report(healthy=%v, %v)", r.healthy, r.err)
		case <-deadline:
			t.Fatalf("condition not reached within %v", within)
		case <-tick.C:
		}
	}
	select {
	case r := <-ch:
		t.Fatalf("unexpected report(healthy=%v, %v)", r.healthy, r.err)
	default:
	}
}

const (
	interval = 20 * time.Millisecond
	wait     = 5 * time.Second // generous: only reached when a test fails
)

// TestRunHTTPScripted answers the check's requests from a script, so what
// Run sees does not depend on timing: failures that are not consecutive
// must not make the node unhealthy, Fall consecutive ones must, at exactly
// the Fall-th; successes then must be Rise consecutive ones.
func TestRunHTTPScripted(t *testing.T) {
	const ok, bad = http.StatusOK, http.StatusServiceUnavailable
	script := []int{
		ok, ok, ok, // 1-3: healthy, no report
		bad, bad, ok, // 4-6: two failures, streak broken
		bad, ok, bad, bad, ok, // 7-11: never three in a row
		bad, bad, bad, // 12-14: third failure in a row: unhealthy at 14
		bad, ok, bad, // 15-17: one success is not enough (Rise 2)
		ok, ok, // 18-19: healthy again at 19
		bad, bad, ok, // 20-22: not enough to fall
	}
	var served atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			t.Errorf("request for %q", r.URL.Path)
		}
		n := served.Add(1)
		code := ok
		if int(n) <= len(script) {
			code = script[n-1]
		}
		w.WriteHeader(code)
	}))
	t.Cleanup(srv.Close)

	c, err := health.Parse("http:" + strings.TrimPrefix(srv.URL, "http:") + "/health")
	if err != nil {
		t.Fatal(err)
	}
	c.Interval, c.Timeout, c.Fall, c.Rise = interval, time.Second, 3, 2
	ch := runner(t, c, served.Load)

	r := expectReport(t, ch, false, wait)
	if r.probes != 14 {
		t.Errorf("unhealthy reported after probe %d, want 14 (the third failure in a row)", r.probes)
	}
	if !strings.Contains(r.err.Error(), "503") {
		t.Errorf("error %q does not give the HTTP status", r.err)
	}
	r = expectReport(t, ch, true, wait)
	if r.probes != 19 {
		t.Errorf("healthy reported after probe %d, want 19 (the second success in a row)", r.probes)
	}
	expectNoReport(t, ch, func() bool { return served.Load() >= int64(len(script)+5) }, wait)
}

// TestRunHTTPSwitch flips a real service between 200 and 503.
func TestRunHTTPSwitch(t *testing.T) {
	var failing atomic.Bool
	var mu sync.Mutex
	var fails, oks int // consecutive answers of each kind
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if failing.Load() {
			fails, oks = fails+1, 0
			http.Error(w, "sick", http.StatusServiceUnavailable)
			return
		}
		fails, oks = 0, oks+1
		w.Write([]byte("ok"))
	}))
	t.Cleanup(srv.Close)
	streak := func() int64 {
		mu.Lock()
		defer mu.Unlock()
		if failing.Load() {
			return int64(fails)
		}
		return int64(oks)
	}
	c := health.Check{Kind: "http", Target: strings.TrimPrefix(srv.URL, "http:") + "/", Interval: interval, Fall: 4, Rise: 3}
	ch := runner(t, c, streak)

	// Healthy from the start: no report while the service answers 200.
	expectNoReport(t, ch, func() bool { return streak() >= 8 }, wait)

	failing.Store(true)
	r := expectReport(t, ch, false, wait)
	if r.probes != int64(c.Fall) {
		t.Errorf("unhealthy after %d failures in a row, want Fall = %d", r.probes, c.Fall)
	}
	expectNoReport(t, ch, func() bool { return streak() >= 8 }, wait)

	failing.Store(false)
	r = expectReport(t, ch, true, wait)
	if r.probes != int64(c.Rise) {
		t.Errorf("healthy after %d successes in a row, want Rise = %d", r.probes, c.Rise)
	}
	expectNoReport(t, ch, func() bool { return streak() >= 8 }, wait)
}

// TestRunHTTPDown: a service that does not answer at all is unhealthy.
func TestRunHTTPDown(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now: connection refused
	c := health.Check{Kind: "http", Target: "//" + addr + "/health", Interval: interval, Fall: 2, Rise: 2}
	ch := runner(t, c, nil)
	expectReport(t, ch, false, wait)
}

// TestRunTCP opens and closes a listener on the VIP (127.0.0.1 here).
func TestRunTCP(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int64
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			conn.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	c, err := health.Parse("tcp:" + port)
	if err != nil {
		t.Fatal(err)
	}
	c.Interval, c.Timeout, c.Fall, c.Rise = interval, time.Second, 3, 2
	ch := runner(t, c, nil)

	expectNoReport(t, ch, func() bool { return accepted.Load() >= 5 }, wait)

	closed := time.Now()
	l.Close()
	expectReport(t, ch, false, wait)
	// The first failing probe ran at or after the close; Fall-1 more
	// followed, one per tick. A tick can be delivered late, so allow one
	// interval of slack: at least (Fall-2) intervals must have passed.
	if elapsed := time.Since(closed); elapsed < time.Duration(c.Fall-2)*c.Interval {
		t.Errorf("unhealthy %v after the service went down, sooner than %d failures %v apart allow", elapsed, c.Fall, c.Interval)
	}

	// The service comes back on the same port.
	l2, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.1", port))
	if err != nil {
		t.Skipf("could not listen on port %s again: %v", port, err)
	}
	t.Cleanup(func() { l2.Close() })
	var accepted2 atomic.Int64
	go func() {
		for {
			conn, err := l2.Accept()
			if err != nil {
				return
			}
			accepted2.Add(1)
			conn.Close()
		}
	}()
	expectReport(t, ch, true, wait)
	// (A probe succeeds when the kernel completes the handshake, before
	// Accept returns here, so the accepted count can lag the probes and
	// is not compared with Rise; the HTTP and exec tests count exactly.)
	expectNoReport(t, ch, func() bool { return accepted2.Load() >= 8 }, wait)
}

// TestRunTCPConnectsToVIP: a tcp check dials the VIP, not some other
// address: a listener on 127.0.0.2 is not seen by a check of 127.0.0.1.
func TestRunTCPConnectsToVIP(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no 127.0.0.2: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	_, port, _ := net.SplitHostPort(l.Addr().String())
	probe, err := net.Listen("tcp4", "127.0.0.1:"+port)
	if err != nil {
		t.Skipf("port %s taken on 127.0.0.1", port)
	}
	probe.Close()
	c := health.Check{Kind: "tcp", Target: port, Interval: interval, Fall: 1, Rise: 1}
	ch := runner(t, c, nil) // VIP 127.0.0.1
	expectReport(t, ch, false, wait)
}

// TestRunExec runs commands through sh: true is healthy, false is not.
func TestRunExec(t *testing.T) {
	dir := t.TempDir()
	countFile := filepath.Join(dir, "count")
	lines := func() int64 {
		b, err := os.ReadFile(countFile)
		if err != nil {
			return 0
		}
		return int64(strings.Count(string(b), "\n"))
	}

	t.Run("true", func(t *testing.T) {
		os.Remove(countFile)
		c, err := health.Parse("exec:echo >>'" + countFile + "'; true")
		if err != nil {
			t.Fatal(err)
		}
		c.Interval, c.Timeout, c.Fall, c.Rise = interval, 2*time.Second, 1, 1
		ch := runner(t, c, nil)
		expectNoReport(t, ch, func() bool { return lines() >= 5 }, wait)
	})

	t.Run("false", func(t *testing.T) {
		os.Remove(countFile)
		c, err := health.Parse("exec:echo >>'" + countFile + "'; echo sick >&2; false")
		if err != nil {
			t.Fatal(err)
		}
		c.Interval, c.Timeout, c.Fall, c.Rise = interval, 2*time.Second, 3, 2
		ch := runner(t, c, lines)
		r := expectReport(t, ch, false, wait)
		if r.probes != int64(c.Fall) {
			t.Errorf("unhealthy after %d runs, want Fall = %d", r.probes, c.Fall)
		}
		if !strings.Contains(r.err.Error(), "exit status 1") || !strings.Contains(r.err.Error(), "sick") {
			t.Errorf("error %q should give the exit status and the output", r.err)
		}
		// Unhealthy stays unhealthy without more reports.
		expectNoReport(t, ch, func() bool { return lines() >= int64(c.Fall)+5 }, wait)
	})

	t.Run("switch", func(t *testing.T) {
		down := filepath.Join(dir, "down")
		oks := filepath.Join(dir, "oks")
		fails := filepath.Join(dir, "fails")
		count := func(path string) int64 {
			b, _ := os.ReadFile(path)
			return int64(strings.Count(string(b), "\n"))
		}
		// Runs so far: failures in the low digits, successes times 1000.
		runs := func() int64 { return count(fails) + 1000*count(oks) }
		c, err := health.Parse(fmt.Sprintf("exec:if test -e '%s'; then echo >>'%s'; false; else echo >>'%s'; fi", down, fails, oks))
		if err != nil {
			t.Fatal(err)
		}
		c.Interval, c.Timeout, c.Fall, c.Rise = interval, 2*time.Second, 2, 3
		ch := runner(t, c, runs)
		expectNoReport(t, ch, func() bool { return count(oks) >= 3 }, wait)

		if err := os.WriteFile(down, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		r := expectReport(t, ch, false, wait)
		// Every failure so far was in a row (the file stayed).
		if got := r.probes % 1000; got != int64(c.Fall) {
			t.Errorf("unhealthy after %d failures, want Fall = %d", got, c.Fall)
		}
		okBefore := r.probes / 1000
		if err := os.Remove(down); err != nil {
			t.Fatal(err)
		}
		r = expectReport(t, ch, true, wait)
		// Every success since was in a row (the file stays away).
		if got := r.probes/1000 - okBefore; got != int64(c.Rise) {
			t.Errorf("healthy after %d successes, want Rise = %d", got, c.Rise)
		}
		expectNoReport(t, ch, func() bool { return count(oks) >= okBefore+int64(c.Rise)+5 }, wait)
	})
}

// TestRunTimeout: a check that hangs fails by its timeout, so a hung
// service makes the node unhealthy in about Fall × max(interval, timeout).
func TestRunTimeout(t *testing.T) {
	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() {
		close(hang)
		srv.Close()
	})
	c := health.Check{Kind: "http", Target: strings.TrimPrefix(srv.URL, "http:"), Interval: interval, Timeout: 50 * time.Millisecond, Fall: 2, Rise: 1}
	start := time.Now()
	ch := runner(t, c, nil)
	r := expectReport(t, ch, false, wait)
	if !strings.Contains(r.err.Error(), "deadline") && !strings.Contains(r.err.Error(), "Timeout") {
		t.Errorf("error %q does not say the check timed out", r.err)
	}
	if elapsed := time.Since(start); elapsed < time.Duration(c.Fall)*c.Timeout {
		t.Errorf("unhealthy after %v, sooner than %d timeouts of %v", elapsed, c.Fall, c.Timeout)
	}
}

// TestRunExecTimeout: the timeout must bound an exec check too, even when
// the command is a pipeline or list whose processes outlive the shell.
func TestRunExecTimeout(t *testing.T) {
	c := health.Check{Kind: "exec", Target: "sleep 3; true", Interval: interval, Timeout: 100 * time.Millisecond, Fall: 1, Rise: 1}
	start := time.Now()
	ch := runner(t, c, nil)
	expectReport(t, ch, false, 2*time.Second)
	if elapsed := time.Since(start); elapsed > time.Second {
		t.Errorf("a check with a 100ms timeout took %v to fail", elapsed)
	}
}

// TestRunStopsWithContext: Run returns once its context ends, even with a
// long interval, and reports nothing after.
func TestRunStopsWithContext(t *testing.T) {
	c := health.Check{Kind: "exec", Target: "false", Interval: time.Hour, Fall: 1, Rise: 1}
	ctx, cancel := context.WithCancel(context.Background())
	reports := make(chan bool, 4)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx, loopback, func(healthy bool, err error) { reports <- healthy })
	}()
	select {
	case h := <-reports:
		if h {
			t.Fatalf("report(healthy=true) from a failing check")
		}
	case <-time.After(wait):
		t.Fatal("no report from the first probe")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("Run did not return after its context ended")
	}
	select {
	case h := <-reports:
		t.Errorf("report(healthy=%v) after the context ended", h)
	default:
	}
}

// TestRunUnknownKind: a Check not from Parse with an unknown kind fails
// every probe rather than passing.
func TestRunUnknownKind(t *testing.T) {
	c := health.Check{Kind: "udp", Target: "53", Interval: interval, Fall: 2, Rise: 1}
	ch := runner(t, c, nil)
	r := expectReport(t, ch, false, wait)
	if !strings.Contains(r.err.Error(), "udp") {
		t.Errorf("error %q does not name the kind", r.err)
	}
}

// An exec check that prints without end costs the daemon a bounded buffer,
// and the error still carries the end of what it printed.
func TestRunExecOutputBounded(t *testing.T) {
	c, err := health.Parse("exec:head -c 50000000 /dev/zero | tr '\\0' x; echo; echo the real reason >&2; false")
	if err != nil {
		t.Fatal(err)
	}
	c.Interval, c.Timeout, c.Fall, c.Rise = time.Second, 20*time.Second, 1, 1
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	ch := runner(t, c, nil)
	r := expectReport(t, ch, false, 30*time.Second)
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 20<<20 {
		t.Errorf("a check that printed 50 MB allocated %d MB", grown>>20)
	}
	msg := r.err.Error()
	if len(msg) > 2048 || !strings.Contains(msg, "the real reason") || !strings.Contains(msg, "exit status 1") {
		t.Errorf("error of %d bytes, want at most 2 KiB ending in the command's last words: %.200q", len(msg), msg)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"tcp:80", "http://127.0.0.1/health", "exec:true", "exec:a\nb", "tcp:0", "ftp:x", "http:", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := health.Parse(s)
		if err != nil {
			if strings.Contains(err.Error(), "\n") && !strings.Contains(s, "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		if c.String() != s {
			t.Fatalf("Parse(%q).String() = %q", s, c.String())
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse(%q) gave a check with default timing that does not validate: %v", s, err)
		}
		if strings.IndexByte(c.Target, 0) >= 0 {
			t.Fatalf("Parse(%q) accepted a NUL byte", s)
		}
	})
}

// TestRunTCPOnIPv6VIP: a tcp check of an IPv6 VIP connects to it (the
// address needs brackets with its port): healthy while something listens
// there, unhealthy once it is gone.
func TestRunTCPOnIPv6VIP(t *testing.T) {
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	var accepted atomic.Int64
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			conn.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	c := health.Check{Kind: "tcp", Target: port, Interval: interval, Timeout: time.Second, Fall: 1, Rise: 1}
	ch := runnerAt(t, c, netip.IPv6Loopback(), nil)
	expectNoReport(t, ch, func() bool { return accepted.Load() >= 3 }, wait)
	l.Close()
	expectReport(t, ch, false, wait)
}
