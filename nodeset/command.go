package nodeset

import (
	"fmt"
	"strconv"
)

// MaxCommandLen is the longest control-file write ParseCommand accepts, the
// kernel's PROC_WRITELEN. It also keeps every accepted node number well
// within an int.
const MaxCommandLen = 10

// A Command is one control-file write: "+N" adds node N, "-N" removes it.
type Command struct {
	// Add is true for "+N" and false for "-N".
	Add bool
	// Node is N. ParseCommand leaves range checks to Apply, which knows
	// the cluster size, so Node may be 0 or above Max.
	Node int
}

// String returns c as it would be written to the control file, without a
// trailing newline.
func (c Command) String() string {
	op := "-"
	if c.Add {
		op = "+"
	}
	return op + strconv.Itoa(c.Node)
}

// ParseCommand parses one control-file write. It accepts exactly '+' or '-'
// followed by one or more decimal digits and at most one newline, as
// written by echo, in no more than MaxCommandLen bytes; anything else is
// an error wrapping ErrSyntax.
func ParseCommand(b []byte) (Command, error) {
	if len(b) > MaxCommandLen {
		return Command{}, fmt.Errorf("parsing command: %d bytes exceeds limit of %d: %w",
			len(b), MaxCommandLen, ErrSyntax)
	}

	s := b
	if n := len(s); n > 0 && s[n-1] == '\n' {
		s = s[:n-1]
	}
	if len(s) < 2 || (s[0] != '+' && s[0] != '-') {
		return Command{}, syntaxError(b)
	}

	// At most 9 digits fit in MaxCommandLen, so n cannot overflow.
	n := 0
	for _, c := range s[1:] {
		if c < '0' || c > '9' {
			return Command{}, syntaxError(b)
		}
		n = n*10 + int(c-'0')
	}

	return Command{Add: s[0] == '+', Node: n}, nil
}

func syntaxError(b []byte) error {
	return fmt.Errorf("parsing command %q: %w", b, ErrSyntax)
}

// Apply returns the set after cmd in a cluster of total nodes. On error s
// is returned unchanged, with an error naming the node and wrapping
// ErrOutOfRange or ErrAlreadyHeld for "+N", or ErrNotHeld for "-N". As in
// the kernel, removing a node that could never be held reports ErrNotHeld,
// not ErrOutOfRange.
func (s NodeSet) Apply(cmd Command, total int) (NodeSet, error) {
	total = min(total, Max)
	n := cmd.Node

	if cmd.Add {
		switch {
		case !inRange(n, total):
			return s, outOfRange(n, total)
		case s.Contains(n):
			return s, fmt.Errorf("node %d %w", n, ErrAlreadyHeld)
		}
		return s.Add(n), nil
	}

	switch {
	case !inRange(n, total):
		return s, fmt.Errorf("node %d %w (out of range 1..%d)", n, ErrNotHeld, total)
	case !s.Contains(n):
		return s, fmt.Errorf("node %d %w", n, ErrNotHeld)
	}
	return s.Remove(n), nil
}
