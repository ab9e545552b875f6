package daemon

import (
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// sdNotify tells systemd (Type=notify) about the daemon's state. Outside
// systemd NOTIFY_SOCKET is unset and this does nothing.
func sdNotify(state string) {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return
	}
	if addr[0] == '@' {
		addr = "\x00" + addr[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return
	}
	defer conn.Close()
	conn.Write([]byte(state))
}

// monotonicMicros is CLOCK_MONOTONIC in microseconds, as systemd's
// RELOADING=1 wants it.
func monotonicMicros() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano() / 1000
}
