package membership_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterip/clusterip/internal/lab"
	"github.com/clusterip/clusterip/internal/membership"
)

// logBuffer collects a member's log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (tc *testCluster) startLogged(cfg membership.Config) (*membership.Membership, *logBuffer) {
	tc.t.Helper()
	logs := &logBuffer{}
	cfg.Bind, cfg.Log = loopback, slog.New(slog.NewTextHandler(logs, nil))
	return tc.startConfig(cfg), logs
}

// Two daemons under one name (cloned machines share a host name): the one
// that started later stops with an error naming the name and the other's
// address; the earlier one keeps its place, logs the intruder and reports it.
func TestNameConflictLaterNodeYields(t *testing.T) {
	tc := newTestCluster(t)
	key := newKey(t)
	first, firstLog := tc.startLogged(membership.Config{Name: "web", Key: key})
	other := tc.start("db", key, addr(t, first))
	eventually(t, 5*time.Second, "db joins", func() error {
		if m, ok := find(first.Members(), "db"); !ok || !m.Live() {
			return fmt.Errorf("web sees %+v", first.Members())
		}
		return nil
	})
	time.Sleep(10 * time.Millisecond) // a strictly later start
	// A daemon's --peers lists every node.
	clone, _ := tc.startLogged(membership.Config{Name: "web", Key: key, Peers: []string{addr(t, other), addr(t, first)}})
	select {
	case err := <-clone.Fatal():
		if !strings.Contains(err.Error(), `"web"`) || !strings.Contains(err.Error(), addr(t, first)) {
			t.Errorf("the clone's error %q does not name the name and the other address", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the later node with a taken name was not told to stop")
	}
	eventually(t, 5*time.Second, "the first node reports the conflict", func() error {
		c, ok := first.NameConflict()
		if !ok || c.Name != "web" || !strings.HasPrefix(c.Addr, "127.0.0.1:") || c.Addr == addr(t, first) {
			return fmt.Errorf("NameConflict = %+v, %v", c, ok)
		}
		if !strings.Contains(firstLog.String(), "claims this node's member name") {
			return fmt.Errorf("not logged:\n%s", firstLog.String())
		}
		return nil
	})
	select {
	case err := <-first.Fatal():
		t.Fatalf("the node that had the name first was told to stop: %v", err)
	default:
	}
}

// Every join is logged with name and address, and a member that takes the
// address of another live member is pointed out.
func TestJoinsLogged(t *testing.T) {
	tc := newTestCluster(t)
	key := newKey(t)
	a, logs := tc.startLogged(membership.Config{Name: "a", Key: key})
	b := tc.start("b", key, addr(t, a))
	eventually(t, 5*time.Second, "join logged", func() error {
		want := fmt.Sprintf("member=b addr=%s", addr(t, b))
		if !strings.Contains(logs.String(), "level=INFO msg=\"member joined\" "+want) {
			return fmt.Errorf("no INFO line with %q in:\n%s", want, logs.String())
		}
		return nil
	})
}

// A member that died is listed as dead for a while, then forgotten.
func TestDeadMembersForgotten(t *testing.T) {
	tc := newTestCluster(t)
	key := newKey(t)
	a, _ := tc.startLogged(membership.Config{Name: "a", Key: key, ForgetDeadAfter: time.Second})
	for i := range 3 {
		b := tc.start(fmt.Sprintf("gone-%d", i), key, addr(t, a))
		name := b.Name()
		eventually(t, 5*time.Second, "join", func() error {
			if m, ok := find(a.Members(), name); !ok || !m.Live() {
				return fmt.Errorf("not live yet")
			}
			return nil
		})
		tc.leave(b)
		eventually(t, 3*time.Second, "dead member listed", func() error {
			if m, ok := find(a.Members(), name); !ok || m.Live() {
				return fmt.Errorf("%+v %v", m, ok)
			}
			return nil
		})
	}
	eventually(t, 5*time.Second, "dead members forgotten", func() error {
		if ms := a.Members(); len(ms) != 1 {
			return fmt.Errorf("still listed: %+v", ms)
		}
		return nil
	})
}

// Before memberlist can authenticate a stream it buffers as much as the
// stream announces (up to 20 MB): a flood of such streams must cost a
// bounded amount of memory, and must not make the flooded node look dead.
func TestStreamFloodBounded(t *testing.T) {
	if raceDetector {
		t.Skip("the flood runs in the test's own process, which the race detector slows down tenfold")
	}
	tc := newTestCluster(t)
	key := newKey(t)
	a, _ := tc.startLogged(membership.Config{Name: "a", Key: key})
	b := tc.start("b", key, addr(t, a))
	eventually(t, 5*time.Second, "b joins", func() error {
		if m, ok := find(b.Members(), "a"); !ok || !m.Live() {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	stop := make(chan struct{})
	flooded := make(chan struct{})
	target := addr(t, a)
	go func() {
		lab.FloodGossipStreams(func() (net.Conn, error) { return net.DialTimeout("tcp", target, time.Second) }, 30, stop)
		close(flooded)
	}()
	deadline := time.Now().Add(4 * time.Second)
	var peak uint64
	for time.Now().Before(deadline) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapInuse)
		if m, ok := find(b.Members(), "a"); !ok || !m.Live() {
			t.Errorf("flooded node declared %q by its peer", m.State)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	<-flooded
	if grown := int64(peak) - int64(before.HeapInuse); grown > 80<<20 {
		t.Errorf("heap grew by %d MB under the flood", grown>>20)
	}
	t.Logf("heap in use: %d MB before, %d MB at the peak of the flood", before.HeapInuse>>20, peak>>20)
}
