package nodeset_test

import (
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/clusterip/clusterip/nodeset"
)

func TestParseCommand(t *testing.T) {
	tests := []struct {
		in   string
		want nodeset.Command
		ok   bool
	}{
		{in: "+2", want: nodeset.Command{Add: true, Node: 2}, ok: true},
		{in: "-2", want: nodeset.Command{Add: false, Node: 2}, ok: true},
		{in: "+2\n", want: nodeset.Command{Add: true, Node: 2}, ok: true},
		{in: "+02", want: nodeset.Command{Add: true, Node: 2}, ok: true},
		// Range checks belong to Apply.
		{in: "+0", want: nodeset.Command{Add: true, Node: 0}, ok: true},
		{in: "+65", want: nodeset.Command{Add: true, Node: 65}, ok: true},
		{in: "-0", want: nodeset.Command{Add: false, Node: 0}, ok: true},
		{in: "+999999999", want: nodeset.Command{Add: true, Node: 999999999}, ok: true},
		{in: "-99999999\n", want: nodeset.Command{Add: false, Node: 99999999}, ok: true},
		{in: "+000000064", want: nodeset.Command{Add: true, Node: 64}, ok: true},

		{in: ""},
		{in: "\n"},
		{in: "+"},
		{in: "-"},
		{in: "+\n"},
		{in: "2"},
		{in: "2\n"},
		{in: " +2"},
		{in: "+ 2"},
		{in: "+2 "},
		{in: "+2\n\n"},
		{in: "+2\r\n"},
		{in: "\n+2"},
		{in: "+-2"},
		{in: "++2"},
		{in: "-+2"},
		{in: "+2a"},
		{in: "+0x2"},
		{in: "*2"},
		{in: "+2\x00"},
		{in: "+9999999999"},
		{in: "+99999999999"},
		{in: "+999999999\n\n"},
	}

	for _, tt := range tests {
		t.Run(strconv.Quote(tt.in), func(t *testing.T) {
			got, err := nodeset.ParseCommand([]byte(tt.in))
			if !tt.ok {
				if !errors.Is(err, nodeset.ErrSyntax) {
					t.Fatalf("ParseCommand(%q) = %+v, %v, want ErrSyntax", tt.in, got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseCommand(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("ParseCommand(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

// commandRE is the ParseCommand grammar stated independently.
var commandRE = regexp.MustCompile(`^[+-][0-9]+\n?$`)

func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{"+2", "-2\n", "+02", "+0", "+", "+2\n\n", " +2", "+-2", "+99999999999", "-999999999"} {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, b []byte) {
		want := len(b) <= nodeset.MaxCommandLen && commandRE.Match(b)

		cmd, err := nodeset.ParseCommand(b)
		if (err == nil) != want {
			t.Fatalf("ParseCommand(%q) = %+v, %v; grammar says ok=%v", b, cmd, err, want)
		}
		if err != nil {
			if !errors.Is(err, nodeset.ErrSyntax) {
				t.Fatalf("ParseCommand(%q) error %v does not wrap ErrSyntax", b, err)
			}
			return
		}

		digits := strings.TrimSuffix(string(b[1:]), "\n")
		n, err := strconv.Atoi(digits)
		if err != nil || n != cmd.Node || cmd.Add != (b[0] == '+') {
			t.Fatalf("ParseCommand(%q) = %+v, want node %s", b, cmd, digits)
		}

		again, err := nodeset.ParseCommand([]byte(cmd.String()))
		if err != nil || again != cmd {
			t.Fatalf("ParseCommand(%q) = %+v, %v, want %+v", cmd.String(), again, err, cmd)
		}

		// Whatever Apply does with it, it must not panic, must return the
		// set unchanged on error and must change only node cmd.Node.
		s, _ := nodeset.Of(1, 3)
		got, err := s.Apply(cmd, 4)
		if err != nil && got != s {
			t.Fatalf("Apply(%+v) failed but changed the set to %v", cmd, got)
		}
		if diff := got ^ s; diff != 0 && (diff.Len() != 1 || !diff.Contains(cmd.Node)) {
			t.Fatalf("Apply(%+v) changed %v to %v", cmd, s, got)
		}
	})
}

func TestCommandString(t *testing.T) {
	for _, tt := range []struct {
		c    nodeset.Command
		want string
	}{
		{nodeset.Command{Add: true, Node: 2}, "+2"},
		{nodeset.Command{Add: false, Node: 64}, "-64"},
		{nodeset.Command{}, "-0"},
	} {
		if got := tt.c.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.c, got, tt.want)
		}
	}
}

func TestApply(t *testing.T) {
	add := func(n int) nodeset.Command { return nodeset.Command{Add: true, Node: n} }
	del := func(n int) nodeset.Command { return nodeset.Command{Add: false, Node: n} }

	tests := []struct {
		name  string
		held  []int
		cmd   nodeset.Command
		total int
		want  []int
		err   error
		msg   string
	}{
		{name: "add", held: []int{1}, cmd: add(2), total: 3, want: []int{1, 2}},
		{name: "add last", cmd: add(3), total: 3, want: []int{3}},
		{name: "add 64", cmd: add(64), total: 64, want: []int{64}},
		{name: "add zero", cmd: add(0), total: 3, err: nodeset.ErrOutOfRange, msg: "node 0 out of range 1..3"},
		{name: "add above total", held: []int{1}, cmd: add(5), total: 3, want: []int{1},
			err: nodeset.ErrOutOfRange, msg: "node 5 out of range 1..3"},
		{name: "add 65", cmd: add(65), total: 64, err: nodeset.ErrOutOfRange, msg: "node 65 out of range 1..64"},
		{name: "add 65 big total", cmd: add(65), total: 1000, err: nodeset.ErrOutOfRange, msg: "node 65 out of range 1..64"},
		{name: "add held", held: []int{1, 2}, cmd: add(2), total: 3, want: []int{1, 2},
			err: nodeset.ErrAlreadyHeld, msg: "node 2 already held"},
		{name: "remove", held: []int{1, 2}, cmd: del(2), total: 3, want: []int{1}},
		{name: "remove last", held: []int{2}, cmd: del(2), total: 3},
		{name: "remove not held", held: []int{1}, cmd: del(2), total: 3, want: []int{1},
			err: nodeset.ErrNotHeld, msg: "node 2 not held"},
		{name: "remove zero", held: []int{1}, cmd: del(0), total: 3, want: []int{1},
			err: nodeset.ErrNotHeld, msg: "node 0 not held (out of range 1..3)"},
		{name: "remove above total", held: []int{1, 4}, cmd: del(4), total: 3, want: []int{1, 4},
			err: nodeset.ErrNotHeld, msg: "node 4 not held (out of range 1..3)"},
		{name: "no nodes", cmd: add(1), total: 0, err: nodeset.ErrOutOfRange},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := nodeset.Of(tt.held...)
			if err != nil {
				t.Fatal(err)
			}

			got, err := s.Apply(tt.cmd, tt.total)
			if !errors.Is(err, tt.err) {
				t.Fatalf("Apply(%+v, %d) error = %v, want %v", tt.cmd, tt.total, err, tt.err)
			}
			if tt.msg != "" && err.Error() != tt.msg {
				t.Fatalf("error text %q, want %q", err.Error(), tt.msg)
			}
			if err != nil && got != s {
				t.Fatalf("failed Apply changed %v to %v", s, got)
			}
			if want, _ := nodeset.Of(tt.want...); got != want {
				t.Fatalf("Apply = %v, want %v", got, want)
			}
		})
	}
}
