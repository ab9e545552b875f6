package lab

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// LoadConfig is the failover benchmark's client load.
type LoadConfig struct {
	Addr      string        // VIP
	HTTPPort  int           // a new connection, one request, every NewEvery
	EchoPort  int           // Long long-lived connections exchange a line every LongEvery
	NewEvery  time.Duration // 10 ms
	Long      int
	LongEvery time.Duration // 100 ms
	Duration  time.Duration
	Iface     string // watched for replies to tell which node answered which flow
}

// NewConn is one short connection.
type NewConn struct {
	Start   time.Time
	Latency time.Duration
	Node    string
	Port    int
	Err     string
}

// LongConn is one long-lived connection.
type LongConn struct {
	Port      int
	Node      string // who served it first
	Exchanges int
	Broken    string // "reset", "stalled", "moved to nX" or "" if it lasted
	BrokenAt  time.Time
}

// LoadReport is what the load saw.
type LoadReport struct {
	Start time.Time
	New   []NewConn
	Long  []LongConn
	// Twice lists connections whose SYN more than one node answered, told
	// apart by their MACs on the wire.
	Twice []string
}

// RunLoad runs the load from this (the client's) namespace.
func RunLoad(ctx context.Context, cfg LoadConfig) (*LoadReport, error) {
	rep := &LoadReport{Start: time.Now()}
	watch, err := watchReplies(cfg.Iface, cfg.Addr)
	if err != nil {
		return nil, err
	}
	defer watch.close()

	long := make([]*longClient, 0, cfg.Long)
	for i := 0; i < cfg.Long; i++ {
		l, err := dialLongClient(net.JoinHostPort(cfg.Addr, fmt.Sprint(cfg.EchoPort)))
		if err != nil {
			return nil, fmt.Errorf("long-lived connection %d: %w", i, err)
		}
		long = append(long, l)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()

	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, l := range long {
		wg.Add(1)
		go func() { defer wg.Done(); l.run(ctx, cfg.LongEvery) }()
	}
	tick := time.NewTicker(cfg.NewEvery)
	httpAddr := net.JoinHostPort(cfg.Addr, fmt.Sprint(cfg.HTTPPort))
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-tick.C:
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := shortConn(httpAddr)
				mu.Lock()
				rep.New = append(rep.New, c)
				mu.Unlock()
			}()
		}
	}
	tick.Stop()
	wg.Wait()
	for _, l := range long {
		l.conn.Close()
		rep.Long = append(rep.Long, l.LongConn)
	}
	rep.Twice = watch.twice()
	return rep, nil
}

func shortConn(addr string) NewConn {
	start := time.Now()
	res := probeOne(context.Background(), &net.Dialer{Timeout: 3 * time.Second}, addr, 3*time.Second)
	c := NewConn{Start: start, Latency: time.Since(start), Node: res.Node, Port: res.LocalPort}
	if res.Err != nil {
		c.Err = res.Err.Error()
	}
	return c
}

type longClient struct {
	LongConn
	conn net.Conn
	r    *bufio.Reader
}

func dialLongClient(addr string) (*longClient, error) {
	conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return nil, err
	}
	l := &longClient{conn: conn, r: bufio.NewReader(conn)}
	l.Port = conn.LocalAddr().(*net.TCPAddr).Port
	if l.Node, err = l.exchange(); err != nil {
		conn.Close()
		return nil, err
	}
	return l, nil
}

func (l *longClient) exchange() (string, error) {
	l.conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := fmt.Fprintln(l.conn, "ping"); err != nil {
		return "", err
	}
	line, err := l.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	name, _, _ := strings.Cut(line, " ")
	return name, nil
}

func (l *longClient) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		node, err := l.exchange()
		switch {
		case err != nil && strings.Contains(err.Error(), "timeout"):
			l.Broken = "stalled"
		case err != nil:
			l.Broken = "reset"
		case node != l.Node:
			l.Broken = "moved to " + node
		default:
			l.Exchanges++
			continue
		}
		l.BrokenAt = time.Now()
		return
	}
}

// replyWatch records, per connection (client port and initial sequence
// number), the MACs of the nodes that sent a SYN-ACK for it. Two MACs mean
// two nodes answered one connection.
type replyWatch struct {
	conn *packet.Conn
	mu   sync.Mutex
	seen map[connID]map[string]string // MAC -> when it answered
	done chan struct{}
}

type connID struct {
	port uint16
	isn  uint32
}

func watchReplies(iface, vip string) (*replyWatch, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, err
	}
	conn, err := packet.Listen(ifi, packet.Raw, unix.ETH_P_IP, nil)
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", iface, err)
	}
	w := &replyWatch{conn: conn, seen: map[connID]map[string]string{}, done: make(chan struct{})}
	src := net.ParseIP(vip).To4()
	go func() {
		defer close(w.done)
		buf := make([]byte, 65536)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			w.note(buf[:n], src)
		}
	}()
	return w, nil
}

func (w *replyWatch) note(f []byte, vip net.IP) {
	if len(f) < 14+20+20 || f[14]>>4 != 4 || f[14+9] != 6 || !net.IP(f[14+12:14+16]).Equal(vip) {
		return
	}
	ihl := int(f[14]&0x0f) * 4
	tcp := f[14+ihl:]
	if len(tcp) < 20 || tcp[13]&0x12 != 0x12 {
		return
	}
	id := connID{port: binary.BigEndian.Uint16(tcp[2:4]), isn: binary.BigEndian.Uint32(tcp[8:12]) - 1}
	mac := net.HardwareAddr(f[6:12]).String()
	w.mu.Lock()
	if w.seen[id] == nil {
		w.seen[id] = map[string]string{}
	}
	if _, ok := w.seen[id][mac]; !ok {
		w.seen[id][mac] = time.Now().Format("15:04:05.000")
	}
	w.mu.Unlock()
}

func (w *replyWatch) twice() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for id, macs := range w.seen {
		if len(macs) > 1 {
			out = append(out, fmt.Sprintf("port %d: %v", id.port, macs))
		}
	}
	return out
}

func (w *replyWatch) close() {
	w.conn.Close()
	<-w.done
}

// Latency opens new connections at a fixed rate, one request each, and
// returns the 50th and 99th percentile of connect-plus-request time.
func Latency(ctx context.Context, addr string, rate int, d time.Duration) (p50, p99 time.Duration, err error) {
	var mu sync.Mutex
	var lat []time.Duration
	var failed int
	var wg sync.WaitGroup
	t := time.NewTicker(time.Second / time.Duration(rate))
	defer t.Stop()
	end := time.After(d)
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-end:
			done = true
		case <-t.C:
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := shortConn(addr)
				mu.Lock()
				if c.Err != "" {
					failed++
				} else {
					lat = append(lat, c.Latency)
				}
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	if len(lat) == 0 || failed > len(lat)/100 {
		return 0, 0, fmt.Errorf("latency: %d of %d connections failed", failed, failed+len(lat))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat[len(lat)/2], lat[len(lat)*99/100], nil
}
