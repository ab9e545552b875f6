package nodeset

import (
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

// Max is the highest node number a NodeSet can hold.
const Max = 64

// Errors wrapped by the functions of this package, for errors.Is. Their
// texts read as the tail of a sentence naming the node, such as
// "node 5 out of range 1..3".
var (
	// ErrSyntax reports text that is not a node number, node list or
	// command. The kernel answers such writes with EIO.
	ErrSyntax = errors.New("invalid syntax")
	// ErrOutOfRange reports a node number outside 1..total. The kernel
	// answers "+N" writes that fail this way with ENOMEM.
	ErrOutOfRange = errors.New("out of range")
	// ErrAlreadyHeld reports "+N" for a node already held; the kernel
	// answers ENOMEM.
	ErrAlreadyHeld = errors.New("already held")
	// ErrNotHeld reports "-N" for a node not held, including numbers that
	// could never be held; the kernel answers ENOENT.
	ErrNotHeld = errors.New("not held")
)

// A NodeSet is a set of node numbers 1..Max. Bit n-1 is set when node n is
// held, matching the kernel's local_nodes bitmap. The zero value is the
// empty set.
type NodeSet uint64

// Of returns the set holding nodes. Duplicates are harmless.
func Of(nodes ...int) (NodeSet, error) {
	var s NodeSet
	for _, n := range nodes {
		if !inRange(n, Max) {
			return 0, outOfRange(n, Max)
		}
		s = s.Add(n)
	}

	return s, nil
}

// Contains reports whether s holds node n. It is false for numbers no set
// can hold.
func (s NodeSet) Contains(n int) bool {
	return inRange(n, Max) && s&bit(n) != 0
}

// Add returns s with node n added, or s unchanged if n is outside 1..Max.
func (s NodeSet) Add(n int) NodeSet {
	if !inRange(n, Max) {
		return s
	}
	return s | bit(n)
}

// Remove returns s without node n.
func (s NodeSet) Remove(n int) NodeSet {
	if !inRange(n, Max) {
		return s
	}
	return s &^ bit(n)
}

// Len returns the number of nodes in s.
func (s NodeSet) Len() int {
	return bits.OnesCount64(uint64(s))
}

// Nodes returns the nodes of s in ascending order, or nil if s is empty.
func (s NodeSet) Nodes() []int {
	if s == 0 {
		return nil
	}

	ns := make([]int, 0, s.Len())
	for v := uint64(s); v != 0; v &= v - 1 {
		ns = append(ns, bits.TrailingZeros64(v)+1)
	}

	return ns
}

// String returns the nodes of s in ascending order separated by commas, as
// in "1,2,5", and "" for the empty set.
//
// The kernel's control file prints this followed by a newline, except that
// an empty set reads as zero bytes rather than a lone newline.
func (s NodeSet) String() string {
	return string(s.appendText(nil))
}

func (s NodeSet) appendText(b []byte) []byte {
	for v := uint64(s); v != 0; v &= v - 1 {
		if len(b) > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(bits.TrailingZeros64(v)+1), 10)
	}
	return b
}

// Parse parses a set in the form String produces. It is lenient where a
// person editing a configuration file might reasonably differ: nodes may
// come in any order, repeat, have leading zeros and be surrounded by
// spaces or tabs. The empty or blank string is the empty set.
func Parse(s string) (NodeSet, error) {
	if strings.TrimSpace(s) == "" {
		return 0, nil
	}

	var set NodeSet
	for f := range strings.SplitSeq(s, ",") {
		f = strings.Trim(f, " \t")
		n, ok := parseNode(f)
		if !ok {
			return 0, fmt.Errorf("parsing node set %q: %w", s, ErrSyntax)
		}
		if !inRange(n, Max) {
			// Quote the text: n may have saturated.
			return 0, fmt.Errorf("parsing node set %q: node %s %w 1..%d", s, f, ErrOutOfRange, Max)
		}
		set = set.Add(n)
	}

	return set, nil
}

// MarshalText implements encoding.TextMarshaler using String.
func (s NodeSet) MarshalText() ([]byte, error) {
	return s.appendText(nil), nil
}

// UnmarshalText implements encoding.TextUnmarshaler using Parse.
func (s *NodeSet) UnmarshalText(b []byte) error {
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// parseNode parses one or more ASCII digits. Values too large for any set
// saturate rather than overflow, so that they are reported as out of range
// and not as some smaller, valid node.
func parseNode(s string) (int, bool) {
	if s == "" {
		return 0, false
	}

	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n <= Max {
			n = n*10 + int(c-'0')
		}
	}

	return n, true
}

func inRange(n, total int) bool {
	return n >= 1 && n <= total
}

func bit(n int) NodeSet {
	return 1 << (n - 1)
}

func outOfRange(n, total int) error {
	return fmt.Errorf("node %d %w 1..%d", n, ErrOutOfRange, total)
}
