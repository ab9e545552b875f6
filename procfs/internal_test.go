package procfs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseMountinfo(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []mountEntry
	}{
		{
			name: "empty",
		},
		{
			name: "fields",
			in: "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n" +
				"50 36 0:45 / /run/clusterip rw,nosuid,nodev - fuse.clusterip clusterip rw,user_id=0,group_id=0,default_permissions,allow_other\n",
			want: []mountEntry{
				{dev: "98:0", point: "/mnt2", fstype: "ext3"},
				{dev: "0:45", point: "/run/clusterip", fstype: "fuse.clusterip"},
			},
		},
		{
			name: "no optional fields",
			in:   "50 36 0:45 / /a rw - fuse.clusterip clusterip rw\n",
			want: []mountEntry{{dev: "0:45", point: "/a", fstype: "fuse.clusterip"}},
		},
		{
			name: "escaped",
			in:   `50 36 0:45 / /a\040b\134c\012 rw - fuse.x\040y src rw` + "\n",
			want: []mountEntry{{dev: "0:45", point: "/a b\\c\n", fstype: "fuse.x y"}},
		},
		{
			name: "malformed skipped",
			in:   "garbage\n50 36 0:45 / /a rw shared:1\n\n1 2 3 4 5 6 -\n51 36 0:46 / /b rw - tmpfs tmpfs rw\n",
			want: []mountEntry{{dev: "0:46", point: "/b", fstype: "tmpfs"}},
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMountinfo(strings.NewReader(tt.in))
			if err != nil {
				t.Fatalf("failed to parse: %v", err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("unexpected entries:\n got: %+v\nwant: %+v", got, tt.want)
			}
		})
	}
}

func TestUnescapeOctal(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{in: "", want: ""},
		{in: "/plain", want: "/plain"},
		{in: `/a\040b`, want: "/a b"},
		{in: `\011\012\134`, want: "\t\n\\"},
		{in: `/trailing\`, want: `/trailing\`},
		{in: `/short\04`, want: `/short\04`},
		{in: `/bad\089`, want: `/bad\089`},
		// Out of byte range: left alone rather than wrapped.
		{in: `/big\777`, want: `/big\777`},
	}

	for _, tt := range tests {
		if got := unescapeOctal(tt.in); got != tt.want {
			t.Errorf("unescapeOctal(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestErrnoOf(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want syscall.Errno
	}{
		{name: "errno", err: syscall.ENOENT, want: syscall.ENOENT},
		{name: "wrapped", err: fmt.Errorf("add node: %w", syscall.ENOMEM), want: syscall.ENOMEM},
		{name: "path error", err: &fs.PathError{Op: "x", Path: "y", Err: syscall.EEXIST}, want: syscall.EEXIST},
		{name: "plain", err: errors.New("nope"), want: syscall.EIO},
		{name: "zero", err: syscall.Errno(0), want: syscall.EIO},
		{name: "kernel internal", err: syscall.Errno(512), want: syscall.EIO},
		{name: "huge", err: syscall.Errno(1 << 40), want: syscall.EIO},
		{name: "largest", err: syscall.Errno(511), want: syscall.Errno(511)},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := errnoOf(tt.err); got != tt.want {
				t.Fatalf("errnoOf(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestCheckName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{name: "10.0.0.100", ok: true},
		{name: "fe80::1", ok: true},
		{name: "...", ok: true},
		{name: strings.Repeat("a", 255), ok: true},
		{name: ""},
		{name: "."},
		{name: ".."},
		{name: "a/b"},
		{name: "/"},
		{name: "a\x00"},
		{name: strings.Repeat("a", 256)},
	}

	for _, tt := range tests {
		err := checkName(tt.name)
		if tt.ok != (err == nil) {
			t.Errorf("checkName(%.20q) = %v, want ok %v", tt.name, err, tt.ok)
		}
	}
}

func TestCloseReplaced(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping, mounting requires root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("skipping, no FUSE: %v", err)
	}

	tests := []struct {
		name   string
		unique bool
	}{
		{name: "unique mount ID", unique: true},
		// What kernels before 6.8 get.
		{name: "device number", unique: false},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := t.TempDir()
			d1, err := Mount(path)
			if err != nil {
				t.Fatalf("failed to mount: %v", err)
			}
			t.Cleanup(func() { _ = d1.Close() })
			if tt.unique && d1.mntID == 0 {
				t.Skip("skipping, kernel has no unique mount IDs")
			}
			if !tt.unique {
				d1.mntID = 0
			}

			// Detaches d1's mount, and as nothing uses it, frees its
			// device number for d2 to reuse.
			d2, err := Mount(path)
			if err != nil {
				t.Fatalf("failed to mount again: %v", err)
			}
			t.Cleanup(func() { _ = d2.Close() })
			if err := d2.Add("x", nopFile{}); err != nil {
				t.Fatalf("failed to add: %v", err)
			}

			select {
			case <-d1.served:
			case <-time.After(5 * time.Second):
				t.Fatal("detached server did not finish")
			}

			if err := d1.Close(); err != nil {
				t.Fatalf("failed to close: %v", err)
			}
			if _, err := os.Stat(filepath.Join(path, "x")); err != nil {
				t.Fatalf("closing the replaced Dir affected the new one: %v", err)
			}
		})
	}
}

type nopFile struct{}

func (nopFile) Contents() []byte   { return nil }
func (nopFile) Write([]byte) error { return nil }

// FuzzParseMountinfo: mountinfo is read to find our mounts after a crash;
// whatever a line holds, the parser must not panic, and every entry it
// returns comes from a line with the "-" separator and a mount point.
func FuzzParseMountinfo(f *testing.F) {
	f.Add("36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n")
	f.Add("100 1 0:55 / /run/clusterip rw,nosuid - fuse.clusterip clusterip rw,user_id=0\n")
	f.Add("1 2 3:4 / /with\\040space rw - fuse.clusterip x rw\n36 35 98:0 /mnt1 - - - -\n")
	f.Add("- - - - - - -\n\n   \n")
	f.Fuzz(func(t *testing.T, in string) {
		ms, err := parseMountinfo(strings.NewReader(in))
		if err != nil {
			return
		}
		lines := strings.Count(in, "\n") + 1
		if len(ms) > lines {
			t.Fatalf("%d entries from %d lines", len(ms), lines)
		}
		for _, m := range ms {
			if m.fstype == "" && !strings.Contains(in, " - ") {
				t.Fatalf("entry %+v from input without a separator", m)
			}
		}
	})
}
