package procfs

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

const (
	// maxWrite is the largest FUSE request the kernel may send us.
	maxWrite = 128 << 10

	// maxCommand is the longest write(2) passed to File.Write. The kernel
	// splits a direct I/O write into requests of up to maxWrite bytes,
	// fewer if the user buffer straddles pages, but never less than
	// maxWrite minus one page for the first one. Refusing anything longer
	// than half of maxWrite thus refuses every split write at its first
	// request, before File.Write saw a fragment of it.
	maxCommand = maxWrite / 2
)

// rootNode is the mounted directory. Its children are only changed by Dir, so
// it refuses every namespace operation a shell user could try.
type rootNode struct {
	fusefs.Inode
	mtime time.Time
}

var (
	_ fusefs.NodeGetattrer = (*rootNode)(nil)
	_ fusefs.NodeCreater   = (*rootNode)(nil)
	_ fusefs.NodeMkdirer   = (*rootNode)(nil)
	_ fusefs.NodeMknoder   = (*rootNode)(nil)
	_ fusefs.NodeLinker    = (*rootNode)(nil)
	_ fusefs.NodeSymlinker = (*rootNode)(nil)
	_ fusefs.NodeUnlinker  = (*rootNode)(nil)
	_ fusefs.NodeRmdirer   = (*rootNode)(nil)
	_ fusefs.NodeRenamer   = (*rootNode)(nil)
)

func (r *rootNode) Getattr(_ context.Context, _ fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = 0o755
	out.Nlink = 2
	out.SetTimes(&r.mtime, &r.mtime, &r.mtime)
	return 0
}

// Create returns EACCES, as open(O_CREAT) of a missing file in a proc
// directory does.
func (*rootNode) Create(context.Context, string, uint32, uint32, *fuse.EntryOut) (*fusefs.Inode, fusefs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EACCES
}

// The rest return EPERM, as the VFS does for a directory without the
// operation.

func (*rootNode) Mkdir(context.Context, string, uint32, *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (*rootNode) Mknod(context.Context, string, uint32, uint32, *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (*rootNode) Link(context.Context, fusefs.InodeEmbedder, string, *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (*rootNode) Symlink(context.Context, string, string, *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

// Unlink must be implemented: without it go-fuse reports success and drops
// the child from the tree behind Dir's back.
func (*rootNode) Unlink(context.Context, string) syscall.Errno { return syscall.EPERM }

func (*rootNode) Rmdir(context.Context, string) syscall.Errno { return syscall.EPERM }

func (*rootNode) Rename(context.Context, string, fusefs.InodeEmbedder, string, uint32) syscall.Errno {
	return syscall.EPERM
}

// fileNode is one control file.
type fileNode struct {
	fusefs.Inode
	f     File
	mtime time.Time
	// owner is the file's uid and gid (uid<<32 | gid): root's, or whom
	// Dir.Chown or a chown(2) by root gave it to.
	owner atomic.Uint64

	// removed is set by Dir.Remove and Dir.Close, after which the kernel
	// may still hold the node through open descriptors.
	removed atomic.Bool
}

var (
	_ fusefs.NodeGetattrer = (*fileNode)(nil)
	_ fusefs.NodeSetattrer = (*fileNode)(nil)
	_ fusefs.NodeOpener    = (*fileNode)(nil)
	_ fusefs.NodeReader    = (*fileNode)(nil)
	_ fusefs.NodeWriter    = (*fileNode)(nil)
	_ fusefs.NodeFsyncer   = (*fileNode)(nil)
)

func (n *fileNode) Getattr(_ context.Context, _ fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.attr(&out.Attr)
	return 0
}

// attr fills in the attributes of a proc file: size 0, since the contents
// only exist when read.
func (n *fileNode) attr(a *fuse.Attr) {
	// go-fuse fills in the inode number for GETATTR but not for
	// SETATTR replies.
	a.Ino = n.StableAttr().Ino
	a.Mode = 0o600
	a.Nlink = 1
	a.Size = 0
	o := n.owner.Load()
	a.Uid, a.Gid = uint32(o>>32), uint32(o)
	a.SetTimes(&n.mtime, &n.mtime, &n.mtime)
}

// Setattr accepts truncation and time changes as no-ops, so that opening with
// O_TRUNC (the shell's >) and touch work; go-fuse does not negotiate
// atomic O_TRUNC, so the kernel sends truncation as a separate SETATTR.
// The mode is fixed. Ownership may change: the kernel has already checked
// the caller's right to chown (default_permissions), and the owner then
// reads and writes the file as root does (strongSwan's ha plugin chowns
// its files to its own user).
func (n *fileNode) Setattr(_ context.Context, _ fusefs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if in.Valid&fuse.FATTR_MODE != 0 {
		return syscall.EPERM
	}
	if in.Valid&(fuse.FATTR_UID|fuse.FATTR_GID) != 0 {
		for {
			old := n.owner.Load()
			uid, gid := uint32(old>>32), uint32(old)
			if in.Valid&fuse.FATTR_UID != 0 {
				uid = in.Uid
			}
			if in.Valid&fuse.FATTR_GID != 0 {
				gid = in.Gid
			}
			if n.owner.CompareAndSwap(old, uint64(uid)<<32|uint64(gid)) {
				break
			}
		}
	}
	n.attr(&out.Attr)
	return 0
}

func (n *fileNode) Open(context.Context, uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	if n.removed.Load() {
		return nil, 0, syscall.ENOENT
	}
	// Direct I/O: no page cache, so every read(2) comes to us, and every
	// write(2) arrives as it was made instead of as dirty pages.
	return &handle{}, fuse.FOPEN_DIRECT_IO, 0
}

func (n *fileNode) Read(_ context.Context, fh fusefs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if n.removed.Load() {
		return nil, syscall.EIO
	}

	h, ok := fh.(*handle)
	if !ok {
		// Cannot happen as Open always returns a handle, but a fresh
		// snapshot is the right answer anyway.
		h = &handle{}
	}
	b := h.snapshot(n.f, off)

	if off < 0 || off >= int64(len(b)) {
		return fuse.ReadResultData(nil), 0
	}
	end := min(int64(len(b)), off+int64(len(dest)))
	return fuse.ReadResultData(b[off:end]), 0
}

func (n *fileNode) Write(_ context.Context, _ fusefs.FileHandle, data []byte, _ int64) (uint32, syscall.Errno) {
	if n.removed.Load() {
		return 0, syscall.EIO
	}
	if len(data) > maxCommand {
		return 0, syscall.EINVAL
	}
	if err := n.f.Write(data); err != nil {
		return 0, errnoOf(err)
	}
	return uint32(len(data)), 0
}

// Fsync succeeds: there is nothing to sync, and failing it would break tools
// that sync what they write.
func (*fileNode) Fsync(context.Context, fusefs.FileHandle, uint32) syscall.Errno { return 0 }

// errnoOf maps a File.Write error to the errno the writer's write(2) fails with.
func errnoOf(err error) syscall.Errno {
	var errno syscall.Errno
	// The kernel rejects replies with errors outside 1..511 and leaves the
	// request pending: the writer would hang until the mount is aborted.
	// Errno 0 would turn a failure into a zero-length write.
	if errors.As(err, &errno) && errno > 0 && errno < 512 {
		return errno
	}
	return syscall.EIO
}

// handle is one open file description. It keeps the contents the last read at
// offset 0 saw, so a read(2) sequence that continues at later offsets reads
// one consistent version, as with a kernel seq_file.
type handle struct {
	mu   sync.Mutex
	snap []byte
}

func (h *handle) snapshot(f File, off int64) []byte {
	h.mu.Lock()
	defer h.mu.Unlock()
	if off == 0 || h.snap == nil {
		// Copied, as the File may reuse its buffer while the kernel is
		// still being sent this one.
		h.snap = bytes.Clone(f.Contents())
		if h.snap == nil {
			h.snap = []byte{}
		}
	}
	return h.snap
}
