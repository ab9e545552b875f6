package procfs_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/clusterip/clusterip/procfs"
	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

func TestRead(t *testing.T) {
	d := testDir(t)
	f := &testFile{contents: "1,2\n"}
	mustAdd(t, d, "10.0.0.100", f)
	path := filepath.Join(d.Path(), "10.0.0.100")

	if got := readFile(t, path); got != "1,2\n" {
		t.Fatalf("unexpected contents: %q", got)
	}

	out, err := exec.Command("cat", path).Output()
	if err != nil {
		t.Fatalf("failed to cat: %v", err)
	}
	if got := string(out); got != "1,2\n" {
		t.Fatalf("unexpected cat output: %q", got)
	}

	// No caching anywhere: a change shows up on the very next read.
	f.setContents("1,2,3\n")
	if got := readFile(t, path); got != "1,2,3\n" {
		t.Fatalf("unexpected contents after change: %q", got)
	}

	// A descriptor held open sees new contents when it reads from 0 again.
	fd, err := os.Open(path)
	if err != nil {
		t.Fatalf("failed to open: %v", err)
	}
	defer fd.Close()
	f.setContents("4\n")
	if got := readAt(t, fd, 0); got != "4\n" {
		t.Fatalf("unexpected contents via open descriptor: %q", got)
	}
	f.setContents("5,6\n")
	if got := readAt(t, fd, 0); got != "5,6\n" {
		t.Fatalf("unexpected contents via open descriptor after change: %q", got)
	}
}

func TestReadSnapshot(t *testing.T) {
	d := testDir(t)
	f := &testFile{contents: "abcdef\n"}
	mustAdd(t, d, "x", f)

	fd, err := os.Open(filepath.Join(d.Path(), "x"))
	if err != nil {
		t.Fatalf("failed to open: %v", err)
	}
	defer fd.Close()

	// A reader that continues past offset 0 must not get a mix of two
	// versions, like a seq_file.
	buf := make([]byte, 3)
	if _, err := io.ReadFull(fd, buf); err != nil {
		t.Fatalf("failed to read: %v", err)
	}
	f.setContents("UVWXYZ\n")
	rest, err := io.ReadAll(fd)
	if err != nil {
		t.Fatalf("failed to read rest: %v", err)
	}
	if got := string(buf) + string(rest); got != "abcdef\n" {
		t.Fatalf("torn read: %q", got)
	}
}

func TestWriteShell(t *testing.T) {
	d := testDir(t)

	tests := []struct {
		name  string
		shell string
		cmd   string // %s is the file
		err   error
		errno syscall.Errno // 0: success
		data  string
	}{
		{name: "truncate ok", shell: "sh", cmd: "echo +2 > %s", data: "+2\n"},
		{name: "append ok", shell: "sh", cmd: "echo +2 >> %s", data: "+2\n"},
		{name: "printf ok", shell: "sh", cmd: "printf -- -1 > %s", data: "-1"},
		{name: "truncate ENOENT", shell: "sh", cmd: "echo -5 > %s", err: syscall.ENOENT, errno: syscall.ENOENT, data: "-5\n"},
		{name: "append ENOMEM", shell: "sh", cmd: "echo +2 >> %s", err: syscall.ENOMEM, errno: syscall.ENOMEM, data: "+2\n"},
		{name: "truncate plain error", shell: "sh", cmd: "echo +2 > %s", err: errors.New("nope"), errno: syscall.EIO, data: "+2\n"},
		{name: "wrapped errno", shell: "sh", cmd: "echo +2 > %s", err: fmt.Errorf("node 2: %w", syscall.EEXIST), errno: syscall.EEXIST, data: "+2\n"},
		// dash's echo prints "I/O error" whatever the errno; bash
		// prints strerror, which shows the errno made it through.
		{name: "bash truncate ENOENT", shell: "bash", cmd: "echo -5 > %s", err: syscall.ENOENT, errno: syscall.ENOENT, data: "-5\n"},
		{name: "bash append ENOMEM", shell: "bash", cmd: "echo +2 >> %s", err: syscall.ENOMEM, errno: syscall.ENOMEM, data: "+2\n"},
		{name: "bash plain error", shell: "bash", cmd: "echo +2 > %s", err: errors.New("nope"), errno: syscall.EIO, data: "+2\n"},
		{name: "bash ok", shell: "bash", cmd: "echo +2 >> %s", data: "+2\n"},
	}

	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			shell, err := exec.LookPath(tt.shell)
			if err != nil {
				t.Skipf("skipping, %s not found", tt.shell)
			}

			name := fmt.Sprintf("f%d", i)
			f := &testFile{contents: "1\n", err: tt.err}
			mustAdd(t, d, name, f)
			path := filepath.Join(d.Path(), name)

			var stderr bytes.Buffer
			cmd := exec.Command(shell, "-c", fmt.Sprintf(tt.cmd, path))
			cmd.Stderr = &stderr
			err = cmd.Run()

			if tt.errno == 0 {
				if err != nil {
					t.Fatalf("shell failed: %v: %s", err, stderr.String())
				}
			} else {
				var exitErr *exec.ExitError
				if !errors.As(err, &exitErr) || exitErr.ExitCode() == 0 {
					t.Fatalf("expected shell to exit non-zero, got: %v", err)
				}
				if tt.shell == "bash" && !strings.Contains(strings.ToLower(stderr.String()), tt.errno.Error()) {
					t.Fatalf("expected %q in stderr, got: %q", tt.errno.Error(), stderr.String())
				}
			}

			if diff := f.diffWrites(tt.data); diff != "" {
				t.Fatal(diff)
			}
			if got := readFile(t, path); got != "1\n" {
				t.Fatalf("contents changed by procfs: %q", got)
			}
		})
	}
}

func TestWriteDirect(t *testing.T) {
	d := testDir(t)

	tests := []struct {
		name  string
		flag  int
		off   int64 // -1: Write, else WriteAt
		err   error
		errno syscall.Errno
	}{
		{name: "trunc", flag: os.O_WRONLY | os.O_TRUNC, off: -1},
		{name: "append", flag: os.O_WRONLY | os.O_APPEND, off: -1},
		{name: "rdwr at offset", flag: os.O_RDWR, off: 4096},
		{name: "ENOENT", flag: os.O_WRONLY | os.O_TRUNC, off: -1, err: syscall.ENOENT, errno: syscall.ENOENT},
		{name: "ENOMEM", flag: os.O_WRONLY | os.O_APPEND, off: -1, err: syscall.ENOMEM, errno: syscall.ENOMEM},
		{name: "plain error", flag: os.O_WRONLY, off: -1, err: errors.New("nope"), errno: syscall.EIO},
		{name: "errno out of range", flag: os.O_WRONLY, off: -1, err: syscall.Errno(512), errno: syscall.EIO},
		{name: "errno zero", flag: os.O_WRONLY, off: -1, err: syscall.Errno(0), errno: syscall.EIO},
	}

	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprintf("f%d", i)
			f := &testFile{err: tt.err}
			mustAdd(t, d, name, f)

			fd, err := os.OpenFile(filepath.Join(d.Path(), name), tt.flag, 0)
			if err != nil {
				t.Fatalf("failed to open: %v", err)
			}
			defer fd.Close()

			// Each write(2) is one command, wherever it lands.
			for range 2 {
				var n int
				if tt.off < 0 {
					n, err = fd.Write([]byte("+2\n"))
				} else {
					n, err = fd.WriteAt([]byte("+2\n"), tt.off)
				}
				if tt.errno == 0 {
					if err != nil || n != 3 {
						t.Fatalf("unexpected write result: %d, %v", n, err)
					}
				} else if !errors.Is(err, tt.errno) {
					t.Fatalf("expected %v, got: %v", tt.errno, err)
				}
			}

			if diff := f.diffWrites("+2\n", "+2\n"); diff != "" {
				t.Fatal(diff)
			}
		})
	}
}

func TestWriteTooLong(t *testing.T) {
	d := testDir(t)
	f := &testFile{}
	mustAdd(t, d, "x", f)

	fd, err := os.OpenFile(filepath.Join(d.Path(), "x"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("failed to open: %v", err)
	}
	defer fd.Close()

	// The kernel splits this write into several requests; none of them
	// must reach File.Write.
	if _, err := fd.Write(make([]byte, 300<<10)); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("expected EINVAL for a long write, got: %v", err)
	}
	if diff := f.diffWrites(); diff != "" {
		t.Fatal(diff)
	}

	// The longest command still arrives whole, even from an unaligned buffer.
	b := bytes.Repeat([]byte("x"), 64<<10+1)[1:]
	if n, err := fd.Write(b); err != nil || n != len(b) {
		t.Fatalf("unexpected write result: %d, %v", n, err)
	}
	if diff := f.diffWrites(string(b)); diff != "" {
		t.Fatal(diff)
	}
}

func TestAddRemove(t *testing.T) {
	d := testDir(t)

	if got := list(t, d); len(got) != 0 {
		t.Fatalf("expected empty directory, got: %v", got)
	}

	mustAdd(t, d, "10.0.0.2", &testFile{contents: "2\n"})
	mustAdd(t, d, "10.0.0.1", &testFile{contents: "1\n"})
	if got, want := list(t, d), []string{"10.0.0.1", "10.0.0.2"}; !slices.Equal(got, want) {
		t.Fatalf("unexpected listing: %v, want %v", got, want)
	}

	if err := d.Add("10.0.0.1", &testFile{}); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("expected ErrExist for duplicate add, got: %v", err)
	}
	// The duplicate must not have replaced the original.
	if got := readFile(t, filepath.Join(d.Path(), "10.0.0.1")); got != "1\n" {
		t.Fatalf("unexpected contents after duplicate add: %q", got)
	}

	if err := d.Remove("10.0.0.1"); err != nil {
		t.Fatalf("failed to remove: %v", err)
	}
	if got, want := list(t, d), []string{"10.0.0.2"}; !slices.Equal(got, want) {
		t.Fatalf("unexpected listing after remove: %v, want %v", got, want)
	}
	if _, err := os.Stat(filepath.Join(d.Path(), "10.0.0.1")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("expected removed file to be gone, got: %v", err)
	}
	if err := d.Remove("10.0.0.1"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("expected ErrNotExist for second remove, got: %v", err)
	}

	// A failed lookup must not be cached either.
	mustAdd(t, d, "10.0.0.1", &testFile{contents: "new\n"})
	if got := readFile(t, filepath.Join(d.Path(), "10.0.0.1")); got != "new\n" {
		t.Fatalf("unexpected contents after re-add: %q", got)
	}
}

func TestAddInvalid(t *testing.T) {
	d := testDir(t)

	tests := []struct {
		name string
		file string
		f    procfs.File
	}{
		{name: "empty", file: ""},
		{name: "dot", file: "."},
		{name: "dot dot", file: ".."},
		{name: "slash", file: "a/b"},
		{name: "leading slash", file: "/a"},
		{name: "NUL", file: "a\x00b"},
		{name: "too long", file: strings.Repeat("a", 256)},
		{name: "nil File", file: "ok", f: nil},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.f
			if tt.name != "nil File" {
				f = &testFile{}
			}
			if err := d.Add(tt.file, f); !errors.Is(err, fs.ErrInvalid) {
				t.Fatalf("expected ErrInvalid, got: %v", err)
			}
			if err := d.Remove(tt.file); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("expected ErrNotExist, got: %v", err)
			}
		})
	}

	if got := list(t, d); len(got) != 0 {
		t.Fatalf("expected empty directory, got: %v", got)
	}
}

func TestPermissions(t *testing.T) {
	d := testDir(t)
	mustAdd(t, d, "x", &testFile{contents: "1\n"})
	path := filepath.Join(d.Path(), "x")

	tests := []struct {
		name string
		path string
		mode fs.FileMode
	}{
		{name: "file", path: path, mode: 0o600},
		{name: "dir", path: d.Path(), mode: fs.ModeDir | 0o755},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fi, err := os.Stat(tt.path)
			if err != nil {
				t.Fatalf("failed to stat: %v", err)
			}
			if fi.Mode() != tt.mode {
				t.Fatalf("unexpected mode: %v, want %v", fi.Mode(), tt.mode)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if st.Uid != 0 || st.Gid != 0 {
				t.Fatalf("unexpected owner: %d:%d", st.Uid, st.Gid)
			}
		})
	}

	// The namespace belongs to the Dir's owner, not to shell users.
	ops := []struct {
		name  string
		op    func() error
		errno syscall.Errno
	}{
		{name: "create", op: func() error { return writeNew(filepath.Join(d.Path(), "new")) }, errno: syscall.EACCES},
		{name: "unlink", op: func() error { return os.Remove(path) }, errno: syscall.EPERM},
		{name: "rename", op: func() error { return os.Rename(path, filepath.Join(d.Path(), "y")) }, errno: syscall.EPERM},
		{name: "mkdir", op: func() error { return os.Mkdir(filepath.Join(d.Path(), "dir"), 0o755) }, errno: syscall.EPERM},
		{name: "symlink", op: func() error { return os.Symlink("x", filepath.Join(d.Path(), "link")) }, errno: syscall.EPERM},
		{name: "link", op: func() error { return os.Link(path, filepath.Join(d.Path(), "link")) }, errno: syscall.EPERM},
		{name: "chmod", op: func() error { return os.Chmod(path, 0o666) }, errno: syscall.EPERM},
		{name: "chown", op: func() error { return os.Chown(path, 1, 1) }}, // root may give it away
		{name: "truncate", op: func() error { return os.Truncate(path, 0) }},
		{name: "touch", op: func() error { return os.Chtimes(path, time.Now(), time.Now()) }},
	}
	for _, tt := range ops {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.op()
			if tt.errno == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if !errors.Is(err, tt.errno) {
				t.Fatalf("expected %v, got: %v", tt.errno, err)
			}
		})
	}

	if got, want := list(t, d), []string{"x"}; !slices.Equal(got, want) {
		t.Fatalf("unexpected listing: %v, want %v", got, want)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode() != 0o600 {
		t.Fatalf("unexpected file after operations: %v, %v", fi, err)
	} else if st := fi.Sys().(*syscall.Stat_t); st.Uid != 1 || st.Gid != 1 {
		t.Fatalf("owner after chown 1:1: %d:%d", st.Uid, st.Gid)
	}
}

func TestOtherUser(t *testing.T) {
	requireFUSE(t)

	// t.TempDir's two levels of directories are private; let nobody
	// reach the mount.
	tmp := t.TempDir()
	for _, p := range []string{tmp, filepath.Dir(tmp)} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatalf("failed to chmod: %v", err)
		}
	}

	d := mustMount(t, filepath.Join(tmp, "ctl"))
	f := &testFile{contents: "1\n"}
	mustAdd(t, d, "x", f)
	path := filepath.Join(d.Path(), "x")

	nobody := func(cmd string) (string, error) {
		c := exec.Command("sh", "-c", cmd)
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := c.CombinedOutput()
		return string(out), err
	}

	// allow_other lets other users in at all; default_permissions makes
	// the kernel apply the modes.
	out, err := nobody("ls " + d.Path())
	if err != nil || out != "x\n" {
		t.Fatalf("failed to list as nobody: %v: %q", err, out)
	}
	for _, cmd := range []string{"cat " + path, "echo +2 > " + path, "echo +2 >> " + path} {
		out, err := nobody(cmd)
		if err == nil || !strings.Contains(out, "Permission denied") {
			t.Fatalf("expected %q as nobody to be denied, got: %v: %q", cmd, err, out)
		}
	}
	if diff := f.diffWrites(); diff != "" {
		t.Fatal(diff)
	}

	// Given to nobody (as strongSwan's ha plugin chowns its files), the
	// file is nobody's to read and write, and only root can take it back.
	if err := d.Chown("x", 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if out, err := nobody("echo +2 > " + path + " && cat " + path); err != nil || out != "1\n" {
		t.Fatalf("nobody, owning the file, cannot use it: %v: %q", err, out)
	}
	if out, err := nobody("chown 0:0 " + path); err == nil {
		t.Fatalf("nobody gave the file to root: %q", out)
	}
	if err := os.Chown(path, 0, 0); err != nil {
		t.Fatalf("root takes the file back: %v", err)
	}
	if out, err := nobody("cat " + path); err == nil {
		t.Fatalf("nobody still reads root's file: %q", out)
	}
	if err := d.Chown("nope", 1, 1); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Chown of a missing file: %v", err)
	}
}

func TestFilePanics(t *testing.T) {
	d := testDir(t)
	mustAdd(t, d, "bad", panicFile{})
	mustAdd(t, d, "good", &testFile{contents: "1\n"})

	path := filepath.Join(d.Path(), "bad")
	if _, err := os.ReadFile(path); !errors.Is(err, syscall.EIO) {
		t.Fatalf("expected EIO reading a panicking File, got: %v", err)
	}
	fd, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("failed to open: %v", err)
	}
	defer fd.Close()
	if _, err := fd.Write([]byte("+2\n")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("expected EIO writing a panicking File, got: %v", err)
	}

	if got := readFile(t, filepath.Join(d.Path(), "good")); got != "1\n" {
		t.Fatalf("unexpected contents: %q", got)
	}
}

// panicFile is a buggy File.
type panicFile struct{}

func (panicFile) Contents() []byte   { panic("contents") }
func (panicFile) Write([]byte) error { panic("write") }

func TestRemoveWhileOpen(t *testing.T) {
	d := testDir(t)
	f := &testFile{contents: "1\n"}
	mustAdd(t, d, "x", f)
	path := filepath.Join(d.Path(), "x")

	fd, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("failed to open: %v", err)
	}
	defer fd.Close()

	if err := d.Remove("x"); err != nil {
		t.Fatalf("failed to remove: %v", err)
	}

	// Like a removed proc entry: the old descriptor gets EIO, and the
	// File is left alone.
	if _, err := fd.ReadAt(make([]byte, 10), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("expected EIO reading removed file, got: %v", err)
	}
	if _, err := fd.Write([]byte("+2\n")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("expected EIO writing removed file, got: %v", err)
	}
	if _, err := fd.Stat(); err != nil {
		t.Fatalf("failed to stat removed file: %v", err)
	}
	if diff := f.diffWrites(); diff != "" {
		t.Fatal(diff)
	}

	// A new file of the same name is independent of the old descriptor.
	mustAdd(t, d, "x", &testFile{contents: "2\n"})
	if got := readFile(t, path); got != "2\n" {
		t.Fatalf("unexpected contents of new file: %q", got)
	}
	if _, err := fd.ReadAt(make([]byte, 10), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("expected EIO reading removed file after re-add, got: %v", err)
	}
	if err := fd.Close(); err != nil {
		t.Fatalf("failed to close: %v", err)
	}
}

func TestClose(t *testing.T) {
	requireFUSE(t)

	tests := []struct {
		name   string
		exists bool
	}{
		{name: "created", exists: false},
		{name: "existing", exists: true},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ctl")
			if tt.exists {
				if err := os.Mkdir(path, 0o700); err != nil {
					t.Fatalf("failed to create directory: %v", err)
				}
			}

			d, err := procfs.Mount(path)
			if err != nil {
				t.Fatalf("failed to mount: %v", err)
			}
			t.Cleanup(func() { _ = d.Close() })
			if !isMounted(t, path) {
				t.Fatal("not mounted after Mount")
			}
			mustAdd(t, d, "x", &testFile{})

			for range 2 {
				if err := d.Close(); err != nil {
					t.Fatalf("failed to close: %v", err)
				}
			}
			if isMounted(t, path) {
				t.Fatal("still mounted after Close")
			}

			_, err = os.Stat(path)
			if tt.exists && err != nil {
				t.Fatalf("expected pre-existing directory to be kept, got: %v", err)
			}
			if !tt.exists && !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("expected created directory to be removed, got: %v", err)
			}

			if err := d.Add("y", &testFile{}); !errors.Is(err, fs.ErrClosed) {
				t.Fatalf("expected ErrClosed from Add, got: %v", err)
			}
			if err := d.Remove("x"); !errors.Is(err, fs.ErrClosed) {
				t.Fatalf("expected ErrClosed from Remove, got: %v", err)
			}
		})
	}
}

func TestCloseBusy(t *testing.T) {
	requireFUSE(t)
	path := t.TempDir()

	d, err := procfs.Mount(path)
	if err != nil {
		t.Fatalf("failed to mount: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	f := &testFile{contents: "1\n"}
	mustAdd(t, d, "x", f)

	fd, err := os.OpenFile(filepath.Join(path, "x"), os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("failed to open: %v", err)
	}
	defer fd.Close()

	done := make(chan error, 1)
	go func() { done <- d.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("failed to close busy mount: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close hung on a busy mount")
	}

	if isMounted(t, path) {
		t.Fatal("still mounted after Close")
	}
	// Close aborts the connection: what is still open fails at once.
	if _, err := fd.Write([]byte("+2\n")); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("expected ENOTCONN after Close, got: %v", err)
	}
	if diff := f.diffWrites(); diff != "" {
		t.Fatal(diff)
	}
}

// helperEnv makes the test binary act as a process that mounts and then
// waits to be killed; see TestHelperProcess.
const helperEnv = "PROCFS_TEST_HELPER"

func TestStaleMount(t *testing.T) {
	requireFUSE(t)

	t.Run("live", func(t *testing.T) {
		path := t.TempDir()
		d1, err := procfs.Mount(path)
		if err != nil {
			t.Fatalf("failed to mount: %v", err)
		}
		t.Cleanup(func() { _ = d1.Close() })

		d2 := mustMount(t, path)
		mustAdd(t, d2, "x", &testFile{contents: "2\n"})

		// The first Dir must not take the second one's mount down.
		if err := d1.Close(); err != nil {
			t.Fatalf("failed to close replaced mount: %v", err)
		}
		if got := readFile(t, filepath.Join(path, "x")); got != "2\n" {
			t.Fatalf("unexpected contents: %q", got)
		}
	})

	// A process that mounted and was then killed leaves a mount that
	// answers everything with ENOTCONN.
	for _, kind := range []string{"ours", "foreign"} {
		t.Run("dead "+kind, func(t *testing.T) {
			path := t.TempDir()
			mountAndKill(t, kind, path)

			if _, err := os.Stat(path); !errors.Is(err, syscall.ENOTCONN) {
				t.Fatalf("expected dead mount, got: %v", err)
			}

			d := mustMount(t, path)
			mustAdd(t, d, "x", &testFile{contents: "1\n"})
			if got := readFile(t, filepath.Join(path, "x")); got != "1\n" {
				t.Fatalf("unexpected contents: %q", got)
			}
		})
	}
}

// mountAndKill starts the test binary as a helper that mounts a FUSE file
// system at path, of ours or of another kind, and SIGKILLs it once mounted.
func mountAndKill(t *testing.T, kind, path string) {
	t.Helper()

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+kind+":"+path)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("failed to create pipe: %v", err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("failed to start helper: %v", err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})

	ready := make(chan bool, 1)
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			if s.Text() == "ready" {
				ready <- true
				break
			}
		}
		close(ready)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatal("helper exited before mounting")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for helper to mount")
	}

	if err := syscall.Kill(cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("failed to kill helper: %v", err)
	}
	_ = cmd.Wait()
	killed = true
}

// TestHelperProcess is not a real test: it is the mounting process of
// mountAndKill.
func TestHelperProcess(t *testing.T) {
	kind, path, ok := strings.Cut(os.Getenv(helperEnv), ":")
	if !ok {
		return
	}

	switch kind {
	case "ours":
		d, err := procfs.Mount(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if err := d.Add("x", &testFile{contents: "helper\n"}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	case "foreign":
		_, err := fusefs.Mount(path, &fusefs.Inode{}, &fusefs.Options{
			MountOptions: fuse.MountOptions{DirectMountStrict: true, Name: "other"},
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}

	fmt.Println("ready")
	time.Sleep(time.Minute)
	os.Exit(3)
}

func TestFUSEDescriptorNotInherited(t *testing.T) {
	d := testDir(t)
	mustAdd(t, d, "x", &testFile{})

	out, err := exec.Command("sh", "-c", `for f in /proc/$$/fd/*; do readlink "$f" || true; done`).Output()
	if err != nil {
		t.Fatalf("failed to list descriptors: %v", err)
	}
	if strings.Contains(string(out), "/dev/fuse") {
		t.Fatalf("child inherited /dev/fuse:\n%s", out)
	}
}

// testFile is a File that records its writes.
type testFile struct {
	mu       sync.Mutex
	contents string
	writes   []string
	err      error
}

func (f *testFile) Contents() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return []byte(f.contents)
}

func (f *testFile) Write(data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes = append(f.writes, string(data))
	return f.err
}

func (f *testFile) setContents(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.contents = s
}

// diffWrites returns a description of how the recorded writes differ from
// want, or "" if they do not.
func (f *testFile) diffWrites(want ...string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if slices.Equal(f.writes, want) {
		return ""
	}
	return fmt.Sprintf("unexpected writes:\n got: %.80q\nwant: %.80q", f.writes, want)
}

func requireFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping, mounting requires root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("skipping, no FUSE: %v", err)
	}
}

// testDir mounts a Dir that is closed when the test ends, even on failure.
func testDir(t *testing.T) *procfs.Dir {
	t.Helper()
	requireFUSE(t)
	return mustMount(t, filepath.Join(t.TempDir(), "ctl"))
}

func mustMount(t *testing.T, path string) *procfs.Dir {
	t.Helper()
	d, err := procfs.Mount(path)
	if err != nil {
		t.Fatalf("failed to mount: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("failed to close: %v", err)
		}
	})
	return d
}

func mustAdd(t *testing.T, d *procfs.Dir, name string, f procfs.File) {
	t.Helper()
	if err := d.Add(name, f); err != nil {
		t.Fatalf("failed to add %q: %v", name, err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("failed to read: %v", err)
	}
	return string(b)
}

func readAt(t *testing.T, fd *os.File, off int64) string {
	t.Helper()
	b := make([]byte, 4096)
	n, err := fd.ReadAt(b, off)
	if err != nil && err != io.EOF {
		t.Fatalf("failed to read: %v", err)
	}
	return string(b[:n])
}

func list(t *testing.T, d *procfs.Dir) []string {
	t.Helper()
	ents, err := os.ReadDir(d.Path())
	if err != nil {
		t.Fatalf("failed to list: %v", err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func writeNew(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}

func isMounted(t *testing.T, path string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatalf("failed to read mountinfo: %v", err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}
