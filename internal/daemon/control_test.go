package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startControl serves do on a socket in a temporary directory until the
// test ends.
func startControl(t *testing.T, ln net.Listener, do func(request, *response) error) *controlServer {
	t.Helper()
	s := newControlServer(ln, do, slog.New(slog.NewTextHandler(io.Discard, nil)))
	done := make(chan struct{})
	go func() { s.serve(); close(done) }()
	t.Cleanup(func() { s.close(); <-done })
	return s
}

func controlSocket(t *testing.T) (string, net.Listener) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ctl.sock")
	ln, err := listenControlSocket(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, ln
}

func statusOK(req request, resp *response) error {
	if req.Op != opStatus {
		return fmt.Errorf("unknown request %q", req.Op)
	}
	resp.Status = &Status{Clusters: []ClusterStatus{}}
	return nil
}

func TestReadRequest(t *testing.T) {
	for _, tt := range []struct {
		name, in, op, err string
	}{
		{"status", `{"op":"status"}`, "status", ""},
		{"trailing garbage ignored", `{"op":"status"} xyz`, "status", ""},
		{"not json", `hello`, "", "bad request"},
		{"empty", ``, "", "EOF"},
		{"cut", `{"op":`, "", "bad request"},
		{"too large", `{"op":"status","args":["` + strings.Repeat("a", maxRequestBytes) + `"]}`, "", "larger than"},
		{"endless whitespace", strings.Repeat(" ", maxRequestBytes+10), "", "larger than"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, err := parseRequest([]byte(tt.in))
			if tt.err == "" && (err != nil || req.Op != tt.op) {
				t.Fatalf("parseRequest = %+v, %v", req, err)
			}
			if tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Fatalf("parseRequest = %+v, %v; want an error with %q", req, err, tt.err)
			}
		})
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`{"op":"new","args":["--vip","192.0.2.1"]}`))
	f.Add([]byte(`{"op":"drain","vip":"192.0.2.1","timeout":5000000000}`))
	f.Add([]byte(`{"op":`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := parseRequest(b)
		if err != nil {
			if err != io.EOF && !strings.HasPrefix(err.Error(), "bad request") {
				t.Fatalf("error %q", err)
			}
			return
		}
		if _, err := json.Marshal(req); err != nil {
			t.Fatal(err)
		}
	})
}

// Twenty clients sending 10 MB each cost the daemon about a megabyte each
// at most, and leave it answering.
func TestControlServerBoundsRequests(t *testing.T) {
	path, ln := controlSocket(t)
	startControl(t, ln, statusOK)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var answers []string
	chunk := bytes.Repeat([]byte("a"), 1<<20) // shared: only the daemon's allocations should count
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.Dial("unix", path)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			go func() {
				conn.Write([]byte(`{"op":"status","args":["`))
				for range 10 {
					if _, err := conn.Write(chunk); err != nil {
						return
					}
				}
			}()
			var resp response
			json.NewDecoder(conn).Decode(&resp)
			mu.Lock()
			answers = append(answers, resp.Error)
			mu.Unlock()
		}()
	}
	wg.Wait()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	// Unbounded, the daemon would read all 200 MB; bounded, each request
	// costs the decoder's buffer doubling up to the 1 MiB limit, about
	// 3 MB allocated in all (65 MB for the 20, measured).
	if grown := int64(after.TotalAlloc - before.TotalAlloc); grown > 120<<20 {
		t.Errorf("20 large requests allocated %d MB", grown>>20)
	}
	for _, a := range answers {
		if !strings.Contains(a, "larger than") && !strings.Contains(a, "busy") {
			t.Errorf("large request answered %q", a)
		}
	}
	if _, err := (Client{Socket: path}).Status(); err != nil {
		t.Fatalf("daemon stopped answering after large requests: %v", err)
	}
}

// Clients past the limit of open connections are told the daemon is busy,
// at once, and are served again once the others are done.
func TestControlServerCapsConnections(t *testing.T) {
	path, ln := controlSocket(t)
	release := make(chan struct{})
	startControl(t, ln, func(req request, resp *response) error {
		if req.Op == "block" {
			<-release
		}
		return statusOK(request{Op: opStatus}, resp)
	})
	var held []net.Conn
	for range maxControlConns {
		conn, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, conn)
		json.NewEncoder(conn).Encode(request{Op: "block"})
	}
	// Let the server take up every slot.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := (Client{Socket: path}).Status()
		if err != nil && strings.Contains(err.Error(), "busy") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a client past %d open connections got %v, want busy", maxControlConns, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(release)
	for _, c := range held {
		c.Close()
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		if _, err := (Client{Socket: path}).Status(); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("not served after the others finished: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// failingListener fails Accept with EMFILE a few times before passing on.
type failingListener struct {
	net.Listener
	mu    sync.Mutex
	fails int
}

func (l *failingListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	fail := l.fails > 0
	l.fails--
	l.mu.Unlock()
	if fail {
		return nil, &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// One failed accept (out of file descriptors) must not end the control
// server while the daemon runs on.
func TestControlServerSurvivesAcceptErrors(t *testing.T) {
	path, ln := controlSocket(t)
	startControl(t, &failingListener{Listener: ln, fails: 5}, statusOK)
	if _, err := (Client{Socket: path}).Status(); err != nil {
		t.Fatalf("after accept errors: %v", err)
	}
}

func TestDialErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := (Client{Socket: filepath.Join(dir, "none.sock")}).Status(); err == nil || !errors.Is(err, errNoDaemon) {
		t.Errorf("missing socket: %v, want no daemon listening", err)
	}
	err := dialError("/run/clusterip.sock", &net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.EACCES)})
	if !strings.Contains(err.Error(), "permission denied") || errors.Is(err, errNoDaemon) {
		t.Errorf("EACCES: %v, want permission denied", err)
	}
}

func TestListenControlSocketRefusesOpenDirectory(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o1777)
	if _, err := listenControlSocket(filepath.Join(dir, "ctl.sock")); err == nil || !strings.Contains(err.Error(), "writable by group or others") {
		t.Fatalf("socket in a world-writable directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "ctl.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("refused socket was created: %v", err)
	}
}
