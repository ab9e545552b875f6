package procfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// fsName is both the mount source and the subtype, so our mounts show up as
// "clusterip" of type "fuse.clusterip" in /proc/self/mountinfo and can be
// recognised as ours after a crash.
const fsName = "clusterip"

// File is the behaviour behind one control file.
//
// Its methods may be called concurrently, from several readers and writers.
type File interface {
	// Contents is what a read(2) of the file returns at this moment (e.g. "1,2\n").
	Contents() []byte

	// Write handles one write(2) call as one whole command. A non-nil error
	// fails the writer's write(2): if errors.As(err, &syscall.Errno) that
	// errno is returned, otherwise EIO. The data slice must not be retained.
	Write(data []byte) error
}

// serveTimeout bounds how long Close waits for the server to finish after
// unmounting.
const serveTimeout = 5 * time.Second

// Dir is a mounted directory of control files.
type Dir struct {
	path    string
	created bool
	root    *rootNode
	served  chan struct{} // closed when the FUSE server has finished

	// Our mount, recognised at Close by its unique mount ID (Linux 6.8+)
	// or else by its device number; zero values if unknown.
	mntID uint64
	dev   string

	mu     sync.Mutex
	closed bool

	closeOnce sync.Once
	closeErr  error
}

// Mount mounts an empty control directory at path (creating the directory,
// mode 0755, if missing; its parent must exist).
//
// If a previous run crashed and left a dead FUSE mount at path ("transport
// endpoint is not connected"), or any stale mount of ours, it is detached
// first.
func Mount(path string) (*Dir, error) {
	path, err := mountPath(path)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", path, err)
	}

	if err := detachStale(path); err != nil {
		return nil, fmt.Errorf("mount %s: %w", path, err)
	}

	created := false
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.Mkdir(path, 0o755); err != nil {
			return nil, fmt.Errorf("mount %s: %w", path, err)
		}
		created = true
	case err != nil:
		return nil, fmt.Errorf("mount %s: %w", path, err)
	case !fi.IsDir():
		return nil, fmt.Errorf("mount %s: %w", path, syscall.ENOTDIR)
	}

	d, err := mount(path)
	if err != nil {
		if created {
			_ = os.Remove(path)
		}
		return nil, fmt.Errorf("mount %s: %w", path, err)
	}
	d.created = created

	return d, nil
}

func mount(path string) (*Dir, error) {
	// Zero timeouts: the kernel must ask us on every lookup and stat, so
	// that added and removed files are visible at once. A nil
	// NegativeTimeout makes failed lookups uncached as well.
	var zero time.Duration
	now := time.Now()
	root := &rootNode{mtime: now}
	opts := &fusefs.Options{
		MountOptions: fuse.MountOptions{
			// DirectMountStrict wins over DirectMount; it keeps go-fuse
			// from falling back to the fusermount binary, which we do
			// not need as root and which would hide the real mount(2)
			// or umount(2) error.
			DirectMount:       true,
			DirectMountStrict: true,
			FsName:            fsName,
			Name:              fsName,
			AllowOther:        true,
			Options:           []string{"default_permissions"},
			MaxWrite:          maxWrite,
			// There is nothing to store in xattrs; ENOSYS makes the
			// kernel stop asking (e.g. for security.capability on
			// every write).
			DisableXAttrs: true,
		},
		EntryTimeout: &zero,
		AttrTimeout:  &zero,
		// Small inode numbers, so 32-bit stat(2) callers do not fail
		// with EOVERFLOW on go-fuse's default of 2^63.
		RootStableAttr:    &fusefs.StableAttr{Ino: 1},
		FirstAutomaticIno: 2,
	}

	// go-fuse leaves its /dev/fuse descriptor inheritable; holding
	// ForkLock keeps any fork from slipping in before we fix that.
	syscall.ForkLock.RLock()
	server, err := fusefs.Mount(path, root, opts)
	closeOnExecFuse()
	syscall.ForkLock.RUnlock()
	if err != nil {
		return nil, err
	}

	d := &Dir{
		path:   path,
		root:   root,
		served: make(chan struct{}),
	}
	go func() {
		server.Wait()
		close(d.served)
	}()

	if id, err := uniqueMountID(path); err == nil {
		d.mntID = id
	}
	if m, ok := topMount(path); ok && m.fstype == "fuse."+fsName {
		d.dev = m.dev
	}

	return d, nil
}

// Path returns the absolute path of the mounted directory.
func (d *Dir) Path() string { return d.path }

// Add creates file name (mode 0600, owned by root) backed by f. It is an
// error if name exists or is not a plain file name.
func (d *Dir) Add(name string, f File) error {
	if err := checkName(name); err != nil {
		return d.pathError("add", name, err)
	}
	if f == nil {
		return d.pathError("add", name, fs.ErrInvalid)
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return d.pathError("add", name, fs.ErrClosed)
	}

	// Only Add and Remove change the tree (the mount refuses unlink and
	// rename), and both hold d.mu, so this check is not racy.
	if d.root.GetChild(name) != nil {
		return d.pathError("add", name, fs.ErrExist)
	}

	n := &fileNode{f: f, mtime: time.Now()}
	ch := d.root.NewPersistentInode(context.Background(), n, fusefs.StableAttr{Mode: syscall.S_IFREG})
	if !d.root.AddChild(name, ch, false) {
		ch.ForgetPersistent()
		return d.pathError("add", name, fs.ErrExist)
	}

	return nil
}

// Chown gives file name to uid and gid, as chown(2) by root would; it is
// an error if name does not exist. The file stays mode 0600: its owner may
// read and write it.
func (d *Dir) Chown(name string, uid, gid uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return d.pathError("chown", name, fs.ErrClosed)
	}
	ch := d.root.GetChild(name)
	if ch == nil {
		return d.pathError("chown", name, fs.ErrNotExist)
	}
	n, ok := ch.Operations().(*fileNode)
	if !ok {
		return d.pathError("chown", name, fs.ErrInvalid)
	}
	n.owner.Store(uint64(uid)<<32 | uint64(gid))
	return nil
}

// Remove deletes file name. It is an error if name does not exist.
//
// Once Remove returns, the File is no longer called by the package (calls
// already in progress are not waited for) and descriptors still open on the
// file get EIO.
func (d *Dir) Remove(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return d.pathError("remove", name, fs.ErrClosed)
	}

	// GetChild of an invalid name simply finds nothing.
	ch := d.root.GetChild(name)
	if ch == nil {
		return d.pathError("remove", name, fs.ErrNotExist)
	}

	if n, ok := ch.Operations().(*fileNode); ok {
		n.removed.Store(true)
	}
	d.root.RmChild(name)
	// Without this the node would stay in go-fuse's tables forever. If the
	// kernel still holds it (an open descriptor), go-fuse drops it once
	// the kernel forgets it.
	ch.ForgetPersistent()

	// Deliberately no NotifyDelete: the zero entry timeout already makes
	// the kernel look the name up again, and a notification would deadlock
	// if Remove were called from within File.Write of the same file, as
	// the kernel holds the file's inode lock while it waits for us.

	return nil
}

// Close unmounts the directory and waits for the FUSE server to finish. It
// removes the directory if Mount created it. Close is safe to call more than
// once; later calls return the result of the first.
//
// Close aborts the FUSE connection as it unmounts, so it returns promptly
// even when the mount is busy (a process has a file open or its working
// directory inside) or lives on as a copy in another mount namespace: the
// mount disappears from this namespace, and whatever still refers to it, an
// open descriptor or a copy elsewhere, fails with ENOTCONN from then on.
func (d *Dir) Close() error {
	d.closeOnce.Do(func() {
		d.closeErr = d.close()
	})
	return d.closeErr
}

func (d *Dir) close() error {
	d.mu.Lock()
	d.closed = true
	for _, ch := range d.root.Children() {
		if n, ok := ch.Operations().(*fileNode); ok {
			n.removed.Store(true)
		}
	}
	d.mu.Unlock()

	wait, err := d.unmount()
	if err != nil {
		return fmt.Errorf("unmount %s: %w", d.path, err)
	}
	if wait {
		// The abort ends the server at once; the timeout is for a
		// kernel without MNT_FORCE support in FUSE.
		select {
		case <-d.served:
		case <-time.After(serveTimeout):
		}
	}

	if d.created {
		if err := os.Remove(d.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("unmount %s: %w", d.path, err)
		}
	}

	return nil
}

// unmount takes our mount off d.path, reporting whether the server can be
// expected to finish promptly.
func (d *Dir) unmount() (wait bool, err error) {
	// Unmounting by path would hit whatever is mounted there now; if our
	// mount was already detached (e.g. by a later Mount's stale-mount
	// cleanup), the mount there is not ours to remove.
	if !d.mounted() {
		return false, nil
	}

	// MNT_FORCE first aborts the FUSE connection (the kernel's
	// fuse_umount_begin), which ends our server at once even when copies
	// of the mount live on in other mount namespaces (a service started
	// with `ip netns exec`, or systemd's PrivateTmp=): the connection
	// belongs to the superblock they share, and without the abort the
	// server would run until the last copy went. The copies then fail
	// with ENOTCONN instead of hanging.
	//
	// Descriptors closed just before Close may still be on their way out
	// of the kernel (release is asynchronous), so retry EBUSY briefly.
	delay := 5 * time.Millisecond
	for range 5 {
		err = unix.Unmount(d.path, unix.MNT_FORCE)
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(delay)
		delay *= 2
	}

	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EBUSY):
		if err := unix.Unmount(d.path, unix.MNT_DETACH); err != nil {
			return false, err
		}
		// Aborted above: the server ends without waiting for the
		// descriptors still open.
		return true, nil
	case errors.Is(err, unix.EINVAL):
		// Not a mount point any more: someone detached it between
		// our check and the unmount.
		return false, nil
	default:
		return false, err
	}
}

// mounted reports whether the mount at d.path is still ours.
func (d *Dir) mounted() bool {
	if d.mntID != 0 {
		id, err := uniqueMountID(d.path)
		return err == nil && id == d.mntID
	}
	if d.dev != "" {
		// Device numbers are recycled as soon as a detached mount is
		// gone, but not while it exists, which it does as long as our
		// server is running.
		select {
		case <-d.served:
			return false
		default:
		}
		m, ok := topMount(d.path)
		return ok && m.dev == d.dev
	}
	// Nothing to recognise it by: trust the path.
	return true
}

func (d *Dir) pathError(op, name string, err error) error {
	return &fs.PathError{Op: op, Path: filepath.Join(d.path, name), Err: err}
}

// checkName reports whether name can be a file directly in the directory.
func checkName(name string) error {
	switch {
	case name == "", name == ".", name == "..",
		len(name) > 255, // NAME_MAX: the kernel could never look it up.
		strings.ContainsAny(name, "/\x00"):
		return fs.ErrInvalid
	}
	return nil
}

// mountPath makes path absolute with symbolic links resolved, as the kernel
// shows mount points in /proc/self/mountinfo.
func mountPath(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return path, err
	}
	if abs == "/" {
		return abs, fs.ErrInvalid
	}

	// The parent first: resolving all of path would fail on a dead mount
	// at path itself, which is for detachStale to handle.
	parent, err := filepath.EvalSymlinks(filepath.Dir(abs))
	if err != nil {
		return abs, err
	}
	abs = filepath.Join(parent, filepath.Base(abs))

	if fi, err := os.Lstat(abs); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return filepath.EvalSymlinks(abs)
	}
	return abs, nil
}
