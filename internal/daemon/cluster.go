package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"

	"github.com/clusterip/clusterip/internal/datapath"
	"github.com/clusterip/clusterip/nodeset"
)

// cluster is one VIP served by this daemon.
type cluster struct {
	spec Spec
	dp   *datapath.Datapath
	log  *slog.Logger

	mu sync.Mutex // serializes control-file writes: read, apply, store
}

// Contents is the control file's text: the node numbers held, as the
// kernel's /proc/net/ipt_CLUSTERIP/<VIP> printed them ("1,3\n", and nothing
// at all when no node is held).
func (c *cluster) Contents() []byte {
	s := c.dp.Nodes()
	if s.Len() == 0 {
		return nil
	}
	return []byte(s.String() + "\n")
}

// Write applies one control-file command, "+N" or "-N". A refused command
// fails the writer's write(2) with the errno the kernel used and changes
// nothing.
func (c *cluster) Write(data []byte) error {
	cmd, err := nodeset.ParseCommand(data)
	if err != nil {
		return controlError(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	next, err := c.dp.Nodes().Apply(cmd, c.spec.TotalNodes)
	if err != nil {
		return controlError(err)
	}
	c.dp.SetNodes(next)
	c.log.Info("control file", "command", fmt.Sprintf("%q", string(data)), "nodes", next.String())
	return nil
}

// controlError maps nodeset's errors to the errno the kernel's
// clusterip_proc_write returned for the same mistake.
func controlError(err error) error {
	errno := syscall.EIO
	switch {
	case errors.Is(err, nodeset.ErrOutOfRange), errors.Is(err, nodeset.ErrAlreadyHeld):
		errno = syscall.ENOMEM
	case errors.Is(err, nodeset.ErrNotHeld):
		errno = syscall.ENOENT
	}
	return fmt.Errorf("%w: %w", errno, err)
}
