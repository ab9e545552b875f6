package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Listeners are the lab service's sockets: HTTP, and the echo service on
// UDP and TCP. Opened inside a node's namespace, they stay in it.
type Listeners struct {
	HTTP, Echo net.Listener
	EchoUDP    net.PacketConn
}

// Listen opens the service's sockets.
func Listen(httpAddr, echoAddr string) (*Listeners, error) {
	ln, err := net.Listen("tcp", httpAddr)
	if err != nil {
		return nil, err
	}
	pc, err := net.ListenPacket("udp", echoAddr)
	if err != nil {
		ln.Close()
		return nil, err
	}
	echo, err := net.Listen("tcp", echoAddr)
	if err != nil {
		ln.Close()
		pc.Close()
		return nil, err
	}
	return &Listeners{HTTP: ln, Echo: echo, EchoUDP: pc}, nil
}

// Serve runs the lab's test service until ctx ends: HTTP answering
// "NAME\n" (/bytes?n=N sends N bytes, for bulk transfers; /health fails
// while healthFile exists), and the echo service answering each UDP datagram
// with "NAME LEN" and each line on TCP with "NAME LINE", for long-lived
// connections.
//
// When ctx ends, the service stops as a well-behaved one does: its health
// check fails at once, it keeps serving for grace so that the cluster can
// move new clients away, then it stops accepting and lets the connections
// it has finish.
func Serve(ctx context.Context, name string, ls *Listeners, healthFile string, grace time.Duration) error {
	ln, pc, echo := ls.HTTP, ls.EchoUDP, ls.Echo
	var conns sync.WaitGroup
	go serveEcho(echo, name, &conns)
	mux := http.NewServeMux()
	var stopping atomic.Bool
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		if stopping.Load() {
			http.Error(w, "stopping", http.StatusServiceUnavailable)
			return
		}
		if _, err := os.Stat(healthFile); healthFile != "" && err == nil {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Node", name)
		fmt.Fprintln(w, name)
	})
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil || n < 0 || n > 1<<30 {
			http.Error(w, "n: want 0..1G", http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Node", name)
		w.Header().Set("Content-Length", strconv.Itoa(n))
		chunk := []byte(strings.Repeat("x", 64<<10))
		for n > 0 {
			k := min(n, len(chunk))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(fmt.Sprintf("%s %d", name, n)), from)
		}
	}()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	stopping.Store(true)
	time.Sleep(grace)
	pc.Close()
	echo.Close()
	srv.Shutdown(context.Background())
	if grace > 0 {
		conns.Wait()
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func serveEcho(ln net.Listener, name string, conns *sync.WaitGroup) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		conns.Add(1)
		go func() {
			defer conns.Done()
			defer conn.Close()
			r := bufio.NewScanner(conn)
			for r.Scan() {
				if _, err := fmt.Fprintf(conn, "%s %s\n", name, r.Text()); err != nil {
					return
				}
			}
		}()
	}
}

// ServeIn runs the lab service in h's namespace, inside this process,
// until ctx ends (the demo needs no other program).
func (l *Lab) ServeIn(ctx context.Context, h *Host, httpAddr, echoAddr string) error {
	var ls *Listeners
	err := InNetns(h.NS, func() (err error) {
		ls, err = Listen(httpAddr, echoAddr)
		return err
	})
	if err != nil {
		return fmt.Errorf("serve in %s: %w", h.Name, err)
	}
	go Serve(ctx, h.Name, ls, "", 0)
	return nil
}

// ProbeResult is one connection the probe made.
type ProbeResult struct {
	LocalPort int
	Node      string // who answered; empty on failure
	Err       error
}

// Probe opens count connections to addr (host:port), one HTTP request each,
// and reports which node answered each one from which local port.
func Probe(ctx context.Context, addr string, count int, timeout time.Duration) []ProbeResult {
	out := make([]ProbeResult, 0, count)
	d := net.Dialer{Timeout: timeout}
	for i := 0; i < count && ctx.Err() == nil; i++ {
		out = append(out, probeOne(ctx, &d, addr, timeout))
	}
	return out
}

func probeOne(ctx context.Context, d *net.Dialer, addr string, timeout time.Duration) ProbeResult {
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return ProbeResult{Err: err}
	}
	defer conn.Close()
	r := ProbeResult{LocalPort: conn.LocalAddr().(*net.TCPAddr).Port}
	conn.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(conn, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", addr); err != nil {
		r.Err = err
		return r
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		r.Err = err
		return r
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		r.Err = err
		return r
	}
	r.Node = strings.TrimSpace(string(body))
	return r
}
