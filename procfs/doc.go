// Package procfs serves a directory of control files over FUSE, in the
// manner of the /proc/net/ipt_CLUSTERIP/<VIP> files of the kernel's iptables
// CLUSTERIP target.
//
// Each file is backed by a File: a read(2) returns File.Contents at that
// moment and each write(2) is handed to File.Write as one whole command, so
// shell users drive the files exactly as they drove the proc files:
//
//	d, err := procfs.Mount("/run/clusterip")
//	if err != nil {
//		return err
//	}
//	defer d.Close()
//
//	if err := d.Add("10.0.0.100", vip); err != nil {
//		return err
//	}
//
//	// $ cat /run/clusterip/10.0.0.100
//	// 1,2
//	// $ echo +3 > /run/clusterip/10.0.0.100
//
// The package knows nothing about clusters; it only moves bytes between the
// kernel and File implementations.
//
// # Semantics
//
// Files are mode 0600 and owned by root (Dir.Chown, or chown(2) by root, gives
// one to another user), the directory is mode 0755, and the mount uses the
// default_permissions option so that the kernel enforces those modes. Nothing is cached by the kernel: every read(2) reaches Contents and
// every lookup sees the current set of files.
//
// Reads behave like a seq_file: a read at offset 0 takes a fresh snapshot of
// Contents and reads at later offsets on the same open file continue from that
// snapshot, so a reader never sees a torn mix of two versions.
//
// The file offset, O_APPEND and O_TRUNC are ignored on writes: opening with
// O_TRUNC (echo cmd > file) succeeds and truncates nothing. A write(2) longer
// than 64 KiB fails with EINVAL rather than reaching File.Write, because the
// kernel would split it into several FUSE requests and it would no longer be
// one command.
//
// Once a file is removed, reads and writes through file descriptors that were
// opened earlier fail with EIO, as they do for a removed proc entry, and its
// File is not called again. Calls already in progress are not waited for.
// Closing the Dir aborts the FUSE connection: everything that still refers to
// the mount, here or as a copy in another mount namespace, fails with
// ENOTCONN, and Close does not wait for any of it.
//
// Files cannot be created, removed or renamed through the mount; only the
// owner of the Dir changes its contents.
//
// The package requires Linux and root privileges (or CAP_SYS_ADMIN), since it
// mounts with mount(2) directly rather than through fusermount.
package procfs
