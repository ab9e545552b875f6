package daemon

import (
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/clusterip/clusterip/nodeset"
)

// Writing to a cluster's control file needs a running datapath; the errno a
// refused write returns does not, and is what scripts written for the
// kernel's /proc/net/ipt_CLUSTERIP files check.

func TestControlError(t *testing.T) {
	held, err := nodeset.Of(1)
	if err != nil {
		t.Fatal(err)
	}
	apply := func(cmd string) error {
		t.Helper()
		c, err := nodeset.ParseCommand([]byte(cmd))
		if err != nil {
			return err
		}
		_, err = held.Apply(c, 3)
		if err == nil {
			t.Fatalf("%q was accepted", cmd)
		}
		return err
	}

	tests := []struct {
		name  string
		err   error
		errno syscall.Errno
		is    error // the nodeset error still wrapped
	}{
		{"+N out of range", apply("+4"), syscall.ENOMEM, nodeset.ErrOutOfRange},
		{"+0", apply("+0\n"), syscall.ENOMEM, nodeset.ErrOutOfRange},
		{"+N already held", apply("+1"), syscall.ENOMEM, nodeset.ErrAlreadyHeld},
		{"-N not held", apply("-2"), syscall.ENOENT, nodeset.ErrNotHeld},
		{"-N out of range", apply("-9"), syscall.ENOENT, nodeset.ErrNotHeld},
		{"syntax", apply("1"), syscall.EIO, nodeset.ErrSyntax},
		{"too long", apply("+0000000001"), syscall.EIO, nodeset.ErrSyntax},
		{"other error", errors.New("other"), syscall.EIO, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.is != nil && !errors.Is(tt.err, tt.is) {
				t.Fatalf("test setup: %v does not wrap %v", tt.err, tt.is)
			}
			err := controlError(tt.err)
			if !errors.Is(err, tt.errno) {
				t.Fatalf("controlError(%v) = %v, want errno %v (%d)", tt.err, err, tt.errno, int(tt.errno))
			}
			for _, other := range []syscall.Errno{syscall.ENOMEM, syscall.ENOENT, syscall.EIO} {
				if other != tt.errno && errors.Is(err, other) {
					t.Fatalf("controlError(%v) = %v also matches %v", tt.err, err, other)
				}
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("controlError(%v) = %v, no longer wraps %v", tt.err, err, tt.is)
			}
			if !strings.Contains(err.Error(), tt.err.Error()) {
				t.Fatalf("controlError(%v) = %q, lost the reason", tt.err, err)
			}
		})
	}
}
