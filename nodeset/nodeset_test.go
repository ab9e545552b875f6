package nodeset_test

import (
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/clusterip/clusterip/nodeset"
)

func mustOf(t *testing.T, nodes ...int) nodeset.NodeSet {
	t.Helper()
	s, err := nodeset.Of(nodes...)
	if err != nil {
		t.Fatalf("Of(%v): %v", nodes, err)
	}
	return s
}

func TestOf(t *testing.T) {
	tests := []struct {
		name  string
		nodes []int
		want  nodeset.NodeSet
		err   error
	}{
		{name: "none", want: 0},
		{name: "one", nodes: []int{1}, want: 1},
		{name: "max", nodes: []int{64}, want: 1 << 63},
		{name: "several", nodes: []int{5, 1, 2}, want: 0b10011},
		{name: "duplicates", nodes: []int{3, 3}, want: 0b100},
		{name: "zero", nodes: []int{1, 0}, err: nodeset.ErrOutOfRange},
		{name: "negative", nodes: []int{-1}, err: nodeset.ErrOutOfRange},
		{name: "above max", nodes: []int{65}, err: nodeset.ErrOutOfRange},
		{name: "huge", nodes: []int{math.MaxInt}, err: nodeset.ErrOutOfRange},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := nodeset.Of(tt.nodes...)
			if !errors.Is(err, tt.err) {
				t.Fatalf("Of(%v) error = %v, want %v", tt.nodes, err, tt.err)
			}
			if got != tt.want {
				t.Fatalf("Of(%v) = %#x, want %#x", tt.nodes, uint64(got), uint64(tt.want))
			}
		})
	}
}

func TestSetOperations(t *testing.T) {
	s := mustOf(t, 1, 2, 5, 64)

	for n, want := range map[int]bool{
		math.MinInt: false, -1: false, 0: false, 1: true, 2: true, 3: false,
		5: true, 63: false, 64: true, 65: false, math.MaxInt: false,
	} {
		if got := s.Contains(n); got != want {
			t.Errorf("Contains(%d) = %v, want %v", n, got, want)
		}
	}

	if got := s.Len(); got != 4 {
		t.Errorf("Len = %d, want 4", got)
	}
	if got, want := s.Nodes(), []int{1, 2, 5, 64}; !slices.Equal(got, want) {
		t.Errorf("Nodes = %v, want %v", got, want)
	}

	for _, n := range []int{-1, 0, 65, math.MaxInt} {
		if got := s.Add(n); got != s {
			t.Errorf("Add(%d) changed the set to %v", n, got)
		}
		if got := s.Remove(n); got != s {
			t.Errorf("Remove(%d) changed the set to %v", n, got)
		}
	}

	if got, want := s.Add(3), mustOf(t, 1, 2, 3, 5, 64); got != want {
		t.Errorf("Add(3) = %v, want %v", got, want)
	}
	if got := s.Add(2); got != s {
		t.Errorf("Add(2) of held node = %v, want %v", got, s)
	}
	if got, want := s.Remove(64), mustOf(t, 1, 2, 5); got != want {
		t.Errorf("Remove(64) = %v, want %v", got, want)
	}
	if got := s.Remove(3); got != s {
		t.Errorf("Remove(3) of absent node = %v, want %v", got, s)
	}

	var empty nodeset.NodeSet
	if empty.Len() != 0 || empty.Nodes() != nil || empty.String() != "" {
		t.Errorf("zero NodeSet: Len %d, Nodes %v, String %q", empty.Len(), empty.Nodes(), empty.String())
	}
}

func TestString(t *testing.T) {
	tests := []struct {
		s    nodeset.NodeSet
		want string
	}{
		{0, ""},
		{1, "1"},
		{0b10011, "1,2,5"},
		{1 << 63, "64"},
		{math.MaxUint64, "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32," +
			"33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64"},
	}

	for _, tt := range tests {
		if got := tt.s.String(); got != tt.want {
			t.Errorf("NodeSet(%#x).String() = %q, want %q", uint64(tt.s), got, tt.want)
		}
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want []int
		err  error
	}{
		{in: "", want: nil},
		{in: "  ", want: nil},
		{in: "1", want: []int{1}},
		{in: "1,2,5", want: []int{1, 2, 5}},
		{in: "5,1,2", want: []int{1, 2, 5}},
		{in: "1, 2,\t5 ", want: []int{1, 2, 5}},
		{in: "2,2", want: []int{2}},
		{in: "064", want: []int{64}},
		{in: "0", err: nodeset.ErrOutOfRange},
		{in: "65", err: nodeset.ErrOutOfRange},
		{in: "1,99999999999999999999999", err: nodeset.ErrOutOfRange},
		{in: "1,", err: nodeset.ErrSyntax},
		{in: ",1", err: nodeset.ErrSyntax},
		{in: "1,,2", err: nodeset.ErrSyntax},
		{in: "1 2", err: nodeset.ErrSyntax},
		{in: "+1", err: nodeset.ErrSyntax},
		{in: "-1", err: nodeset.ErrSyntax},
		{in: "1-3", err: nodeset.ErrSyntax},
		{in: "1\n", err: nodeset.ErrSyntax},
		{in: "a", err: nodeset.ErrSyntax},
		{in: "１", err: nodeset.ErrSyntax},
	}

	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := nodeset.Parse(tt.in)
			if !errors.Is(err, tt.err) {
				t.Fatalf("Parse(%q) error = %v, want %v", tt.in, err, tt.err)
			}
			if err != nil {
				return
			}
			if !slices.Equal(got.Nodes(), tt.want) {
				t.Fatalf("Parse(%q) = %v, want %v", tt.in, got.Nodes(), tt.want)
			}
		})
	}
}

func TestParseOutOfRangeMessage(t *testing.T) {
	_, err := nodeset.Parse("1,99999999999999999999999")
	if err == nil || !strings.Contains(err.Error(), "node 99999999999999999999999 out of range 1..64") {
		t.Fatalf("error %v does not name the node as written", err)
	}
}

func TestTextMarshaling(t *testing.T) {
	var v struct{ Nodes nodeset.NodeSet }
	if err := json.Unmarshal([]byte(`{"Nodes":"3,1"}`), &v); err != nil {
		t.Fatal(err)
	}
	if v.Nodes != mustOf(t, 1, 3) {
		t.Fatalf("unmarshaled %v, want 1,3", v.Nodes)
	}

	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"Nodes":"1,3"}`; got != want {
		t.Fatalf("marshaled %s, want %s", got, want)
	}

	if err := json.Unmarshal([]byte(`{"Nodes":"0"}`), &v); !errors.Is(err, nodeset.ErrOutOfRange) {
		t.Fatalf("unmarshaling node 0: %v, want ErrOutOfRange", err)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "1", "1,2,5", " 5 , 1", "64", "0", "65", "1,,2", "007"} {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, s string) {
		set, err := nodeset.Parse(s)
		if err != nil {
			if !errors.Is(err, nodeset.ErrSyntax) && !errors.Is(err, nodeset.ErrOutOfRange) {
				t.Fatalf("Parse(%q) error %v wraps neither ErrSyntax nor ErrOutOfRange", s, err)
			}
			return
		}

		str := set.String()
		again, err := nodeset.Parse(str)
		if err != nil {
			t.Fatalf("Parse(%q) failed on String() of Parse(%q): %v", str, s, err)
		}
		if again != set {
			t.Fatalf("Parse(%q) = %v, but Parse(String()) = %v", s, set, again)
		}
		if set.Len() != len(set.Nodes()) {
			t.Fatalf("Len %d != len(Nodes()) %d", set.Len(), len(set.Nodes()))
		}
	})
}

func FuzzStringParse(f *testing.F) {
	f.Add(uint64(0))
	f.Add(uint64(0b10011))
	f.Add(uint64(math.MaxUint64))

	f.Fuzz(func(t *testing.T, v uint64) {
		set := nodeset.NodeSet(v)
		got, err := nodeset.Parse(set.String())
		if err != nil {
			t.Fatalf("Parse(%q): %v", set.String(), err)
		}
		if got != set {
			t.Fatalf("Parse(%q) = %#x, want %#x", set.String(), uint64(got), v)
		}
		back, err := nodeset.Of(set.Nodes()...)
		if err != nil || back != set {
			t.Fatalf("Of(Nodes()) = %#x, %v, want %#x", uint64(back), err, v)
		}
	})
}
