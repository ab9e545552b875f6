package membership

import (
	"fmt"
	"log"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Limits on the TCP streams other nodes open to this one. memberlist reads
// a stream before it can authenticate it and trusts its announced length up
// to 20 MB, so without them anyone who can reach the gossip port could make
// the daemon buffer gigabytes and stall until its peers think it dead. A
// real stream (a push/pull of 64 nodes' state, a release message) is tens of
// kilobytes, and a node opens one at a time to each peer.
const (
	maxStreamBytes    = 1 << 20
	maxStreams        = 16
	maxStreamsPerPeer = 4
)

var errStreamTooLarge = fmt.Errorf("membership: stream larger than %d bytes", maxStreamBytes)

// boundedTransport is memberlist's own TCP/UDP transport with the inbound
// streams it hands to memberlist capped in number (overall and per peer
// address) and in size.
type boundedTransport struct {
	*memberlist.NetTransport
	streams chan net.Conn
	done    chan struct{}
	stop    sync.Once
	log     *slog.Logger

	mu      sync.Mutex
	open    int
	perPeer map[string]int

	refused    atomic.Uint64
	lastWarned atomic.Int64
}

func newBoundedTransport(bind string, port int, logger *slog.Logger) (*boundedTransport, error) {
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{bind},
		BindPort:  port,
		Logger:    log.New(&slogWriter{logger}, "", 0),
	})
	if err != nil {
		return nil, err
	}
	t := &boundedTransport{NetTransport: nt, streams: make(chan net.Conn), done: make(chan struct{}), log: logger, perPeer: map[string]int{}}
	go t.run()
	return t, nil
}

// StreamCh hands memberlist the streams that are within the limits.
func (t *boundedTransport) StreamCh() <-chan net.Conn { return t.streams }

// Shutdown stops the transport.
func (t *boundedTransport) Shutdown() error {
	t.stop.Do(func() { close(t.done) })
	return t.NetTransport.Shutdown()
}

func (t *boundedTransport) run() {
	in := t.NetTransport.StreamCh()
	for {
		select {
		case <-t.done:
			return
		case conn := <-in:
			c, ok := t.admit(conn)
			if !ok {
				continue
			}
			select {
			case t.streams <- c:
			case <-t.done:
				c.Close()
				return
			}
		}
	}
}

// admit wraps conn in the size limit, or closes it when its peer or
// everybody together already has as many streams open as allowed.
func (t *boundedTransport) admit(conn net.Conn) (net.Conn, bool) {
	peer := conn.RemoteAddr().String()
	if host, _, err := net.SplitHostPort(peer); err == nil {
		peer = host
	}
	t.mu.Lock()
	if t.open >= maxStreams || t.perPeer[peer] >= maxStreamsPerPeer {
		t.mu.Unlock()
		conn.Close()
		t.refused.Add(1)
		// Once a minute at most: a flood must not flood the log too.
		now := time.Now().UnixNano()
		if last := t.lastWarned.Load(); now-last > int64(time.Minute) && t.lastWarned.CompareAndSwap(last, now) {
			t.log.Warn("gossip: refusing TCP streams over the limit (a peer that opens too many, or a flood)",
				"peer", peer, "limit_total", maxStreams, "limit_per_peer", maxStreamsPerPeer, "refused_so_far", t.refused.Load())
		}
		return nil, false
	}
	t.open++
	t.perPeer[peer]++
	t.mu.Unlock()
	return &boundedConn{Conn: conn, left: maxStreamBytes, release: func() {
		t.mu.Lock()
		t.open--
		if t.perPeer[peer]--; t.perPeer[peer] <= 0 {
			delete(t.perPeer, peer)
		}
		t.mu.Unlock()
	}}, true
}

// boundedConn fails a read past its byte budget, and frees its slot once,
// when memberlist closes it.
type boundedConn struct {
	net.Conn
	left    int
	release func()
	once    sync.Once
}

func (c *boundedConn) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, errStreamTooLarge
	}
	if len(p) > c.left {
		p = p[:c.left]
	}
	n, err := c.Conn.Read(p)
	c.left -= n
	return n, err
}

func (c *boundedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

var _ memberlist.NodeAwareTransport = (*boundedTransport)(nil)
