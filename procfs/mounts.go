package procfs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// A mountEntry is the part of one /proc/self/mountinfo line that we use.
type mountEntry struct {
	dev    string // "major:minor", unique per FUSE connection
	point  string
	fstype string
}

// parseMountinfo parses the proc_pid_mountinfo(5) format. Malformed lines are
// skipped rather than failing the parse: they cannot be our mount.
func parseMountinfo(r io.Reader) ([]mountEntry, error) {
	var ms []mountEntry
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 4096), 1<<20)
	for s.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
		fields := strings.Fields(s.Text())
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) {
			continue
		}
		ms = append(ms, mountEntry{
			dev:    fields[2],
			point:  unescapeOctal(fields[4]),
			fstype: unescapeOctal(fields[sep+1]),
		})
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	return ms, nil
}

// unescapeOctal undoes the kernel's \ooo escaping of space, tab, newline and
// backslash in mountinfo fields.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// topMount returns the uppermost mount at path, i.e. the one path resolves
// to. It reads mountinfo rather than stat'ing path, which could hang on a
// FUSE server that is alive but stuck.
func topMount(path string) (mountEntry, bool) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return mountEntry{}, false
	}
	ms, err := parseMountinfo(bytes.NewReader(b))
	if err != nil {
		return mountEntry{}, false
	}

	// Mounts stacked on one point are listed in the order they were
	// mounted, so the last one is on top.
	var (
		top mountEntry
		ok  bool
	)
	for _, m := range ms {
		if m.point == path {
			top, ok = m, true
		}
	}
	return top, ok
}

// uniqueMountID returns the ID of the mount path resolves to, unique for the
// lifetime of the system. It needs Linux 6.8 or later; the older mount IDs
// are recycled, like device numbers.
func uniqueMountID(path string) (uint64, error) {
	var stx unix.Statx_t
	// AT_STATX_DONT_SYNC: answered from the kernel's attribute cache
	// rather than by the FUSE server, which could be dead or hung.
	err := unix.Statx(unix.AT_FDCWD, path, unix.AT_STATX_DONT_SYNC|unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID_UNIQUE, &stx)
	if err != nil {
		return 0, err
	}
	if stx.Mask&unix.STATX_MNT_ID_UNIQUE == 0 {
		return 0, unix.ENOTSUP
	}
	return stx.Mnt_id, nil
}

// detachStale detaches whatever a crashed or still running earlier instance
// left at path: any mount of ours, live or not, and any dead FUSE mount.
// Mounts may be stacked, so it repeats until path is clean.
func detachStale(path string) error {
	for range 16 {
		if !isStale(path) {
			return nil
		}
		// MNT_DETACH because a plain unmount of a dead FUSE mount
		// fails with EBUSY while anything still refers to it.
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("detach stale mount: %w", err)
		}
	}
	return errors.New("detach stale mount: too many stacked mounts")
}

func isStale(path string) bool {
	if m, ok := topMount(path); ok && m.fstype == "fuse."+fsName {
		return true
	}
	// A FUSE mount whose server died answers everything with ENOTCONN
	// ("transport endpoint is not connected").
	_, err := os.Stat(path)
	return errors.Is(err, syscall.ENOTCONN)
}

// closeOnExecFuse marks every /dev/fuse descriptor of the process
// close-on-exec. go-fuse's direct mount opens /dev/fuse with syscall.Open,
// which unlike os.OpenFile does not set O_CLOEXEC, so every child (sh,
// iptables, ...) would inherit the connection. Should we then crash while a
// child lives, the kernel would not abort the connection, and the mount would
// hang rather than fail with ENOTCONN.
//
// The caller must hold syscall.ForkLock for reading across the open and this
// call, so that no fork can happen in between.
func closeOnExecFuse() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "/dev/fuse" {
			unix.CloseOnExec(fd)
		}
	}
}
