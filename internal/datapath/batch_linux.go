package datapath

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchSize is how many frames one recvmmsg(2) can return.
const batchSize = 32

// batch is a worker's receive buffers and the recvmmsg(2) headers that
// point into them, allocated once so that the per-packet path never
// allocates.
type batch struct {
	bufs [batchSize][]byte
	iovs [batchSize]unix.Iovec
	msgs [batchSize]unix.Mmsghdr
}

func newBatch(frameLen int) *batch {
	b := &batch{}
	for i := range b.bufs {
		b.bufs[i] = make([]byte, frameLen)
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(frameLen)
		b.msgs[i].Hdr.Iov = &b.iovs[i]
		b.msgs[i].Hdr.SetIovlen(1)
	}
	return b
}

// recv blocks until at least one frame is waiting (or the socket's receive
// timeout passes: EAGAIN) and reads up to batchSize frames.
func (b *batch) recv(fd int) (int, error) {
	n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.msgs[0])),
		batchSize, unix.MSG_WAITFORONE, 0, 0)
	if errno != 0 {
		return 0, syscall.Errno(errno)
	}
	return int(n), nil
}

// frame returns the i-th frame of the last recv: virtio-net header first.
func (b *batch) frame(i int) []byte { return b.bufs[i][:b.msgs[i].Len] }

// truncated tells whether the i-th frame of the last recv did not fit its
// buffer: half a frame must not reach the stack.
func (b *batch) truncated(i int) bool { return b.msgs[i].Hdr.Flags&unix.MSG_TRUNC != 0 }
