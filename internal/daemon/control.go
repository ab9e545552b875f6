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
	"sync"
	"syscall"
	"time"
)

// Limits of the control socket. A request is one JSON object of a few
// hundred bytes; the caps bound what a stuck or hostile client can cost.
const (
	maxRequestBytes = 1 << 20
	maxControlConns = 16
	// controlDeadline bounds one connection: reading the request, doing it
	// and writing the answer.
	controlDeadline = 30 * time.Second
	// requestDeadline bounds reading the request alone, so that a client
	// that connects and says nothing does not hold a slot for long.
	requestDeadline = 5 * time.Second
)

// Accept errors (EMFILE, ENFILE, ENOBUFS, ...) are retried after a pause
// that doubles from acceptBackoffMin to acceptBackoffMax: the server must
// outlive a moment without file descriptors.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// controlServer answers the control socket: one JSON request and one JSON
// response per connection.
type controlServer struct {
	ln    net.Listener
	do    func(request, *response) error
	log   *slog.Logger
	slots chan struct{}
	wg    sync.WaitGroup
}

func newControlServer(ln net.Listener, do func(request, *response) error, log *slog.Logger) *controlServer {
	return &controlServer{ln: ln, do: do, log: log, slots: make(chan struct{}, maxControlConns)}
}

// serve accepts connections until the listener is closed.
func (s *controlServer) serve() {
	backoff := time.Duration(0)
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			s.log.Error("control socket: accept failed; retrying", "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		select {
		case s.slots <- struct{}{}:
		default:
			// Every slot is taken: answer at once rather than queue, so a
			// client never waits behind a stuck one without knowing why.
			conn.SetDeadline(time.Now().Add(time.Second))
			json.NewEncoder(conn).Encode(response{Error: fmt.Sprintf("daemon busy: %d control connections open; try again", maxControlConns)})
			conn.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer func() { <-s.slots; s.wg.Done() }()
			s.handle(conn)
		}()
	}
}

// close stops accepting and waits for the connections being answered.
func (s *controlServer) close() {
	s.ln.Close()
	s.wg.Wait()
}

func (s *controlServer) handle(conn net.Conn) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(requestDeadline))
	var resp response
	req, err := readRequest(conn)
	switch {
	case err == nil:
		conn.SetDeadline(time.Now().Add(controlDeadline))
		err = s.do(req, &resp)
	case errors.Is(err, io.EOF):
		return // connected and said nothing: a liveness probe
	default:
		s.log.Warn("control socket: bad request", "err", err)
	}
	if err != nil {
		resp.Error = err.Error()
	}
	json.NewEncoder(conn).Encode(resp)
}

// readRequest reads one request of at most maxRequestBytes. The client
// half-closes or ends the JSON value; anything past the first value is
// ignored.
func readRequest(r io.Reader) (request, error) {
	var req request
	lr := &io.LimitedReader{R: r, N: maxRequestBytes + 1}
	if err := json.NewDecoder(lr).Decode(&req); err != nil {
		if lr.N == 0 {
			return request{}, fmt.Errorf("bad request: larger than %d bytes", maxRequestBytes)
		}
		if err == io.EOF {
			return request{}, io.EOF
		}
		return request{}, fmt.Errorf("bad request: %w", err)
	}
	return req, nil
}

// parseRequest is readRequest on bytes, for tests and fuzzing.
func parseRequest(b []byte) (request, error) { return readRequest(bytes.NewReader(b)) }

// listenControlSocket refuses a socket directory that anyone but root could
// write to (the host journal lives beside the socket, and root restores what
// it says), refuses to take over a socket another daemon answers on, and
// removes one a dead daemon left behind.
func listenControlSocket(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("control socket %s: %w", path, err)
		}
	}
	if err := checkPrivateDir(dir); err != nil {
		return nil, fmt.Errorf("--socket %s: %w", path, err)
	}
	if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
		conn.Close()
		return nil, fmt.Errorf("control socket %s: another daemon is running", path)
	}
	os.Remove(path)
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

// checkPrivateDir refuses a directory that a user other than the daemon's
// own (root) owns or can write to: whoever can write there can plant files
// the daemon trusts, or swap its own for links.
func checkPrivateDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("directory %s: %w", dir, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("%s: not a directory", dir)
	case ok && int(st.Uid) != os.Geteuid():
		return fmt.Errorf("directory %s is owned by uid %d; use one owned by the daemon's user (uid %d), e.g. /run", dir, st.Uid, os.Geteuid())
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("directory %s is writable by group or others (mode %04o); use one only the daemon's user can write, e.g. /run", dir, fi.Mode().Perm())
	}
	return nil
}
