package hash_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clusterip/clusterip/hash"
)

// vectors were produced by testdata/jhash_ref.c run with -ports, so the
// ports here are numbers as written in configuration and the C program,
// not the Go code, performed the byte swap.
var vectors = []struct {
	name         string
	cfg          hash.Config
	src          string
	sport, dport uint16
	hash         uint32
	node         int
}{
	{"sip zero everything", cfg(hash.SourceIP, 1, 0), "0.0.0.0", 0, 0, 76781240, 1},
	{"sip broadcast 64 nodes", cfg(hash.SourceIP, 64, 0), "255.255.255.255", 0, 0, 2601633627, 39},
	{"sip seed max", cfg(hash.SourceIP, 2, math.MaxUint32), "192.168.1.1", 0, 0, 3506292097, 2},
	{"sip seed", cfg(hash.SourceIP, 3, 0x12345678), "10.0.0.1", 0, 0, 855713982, 1},
	{"spt port 80", cfg(hash.SourceIPSourcePort, 4, 0), "192.168.1.1", 80, 0, 142927740, 1},
	{"spt port 0x5000", cfg(hash.SourceIPSourcePort, 4, 0), "192.168.1.1", 0x5000, 0, 2047567979, 2},
	{"spt all ones", cfg(hash.SourceIPSourcePort, 16, math.MaxUint32), "255.255.255.255", 65535, 0, 2862772565, 11},
	{"spt seed 1", cfg(hash.SourceIPSourcePort, 64, 1), "0.0.0.0", 0, 0, 249924109, 4},
	{"dpt https", cfg(hash.SourceIPSourcePortDestPort, 2, 0), "10.1.2.3", 12345, 443, 3880570981, 2},
	{"dpt all ones", cfg(hash.SourceIPSourcePortDestPort, 64, math.MaxUint32), "255.255.255.255", 65535, 65535, 3914615304, 59},
	{"dpt one node", cfg(hash.SourceIPSourcePortDestPort, 1, 0xdeadbeef), "0.0.0.0", 0, 0, 796680953, 1},
	{"dpt seven nodes", cfg(hash.SourceIPSourcePortDestPort, 7, 42), "172.16.0.10", 1024, 80, 3249330266, 6},
	{"dpt only dport", cfg(hash.SourceIPSourcePortDestPort, 3, 0), "1.2.3.4", 0, 65535, 2483861303, 2},
	{"sip ignores ports", cfg(hash.SourceIP, 5, 7), "8.8.8.8", 0x1234, 0x5678, 1023470975, 2},
	{"spt ignores dport", cfg(hash.SourceIPSourcePort, 8, 99), "100.64.0.1", 80, 65535, 2358220584, 5},
	{"dpt loopback", cfg(hash.SourceIPSourcePortDestPort, 32, 0x80000000), "127.0.0.1", 65535, 0, 2500985855, 19},
}

func cfg(m hash.Mode, total, seed uint32) hash.Config {
	return hash.Config{Mode: m, TotalNodes: total, Seed: seed}
}

func TestVectors(t *testing.T) {
	for _, tt := range vectors {
		t.Run(tt.name, func(t *testing.T) {
			addr := netip.MustParseAddr(tt.src)
			a := addr.As4()
			src := binary.BigEndian.Uint32(a[:])

			// Build the TCP header the kernel would see to exercise the
			// same wire-to-raw path a packet takes.
			l4 := binary.BigEndian.AppendUint16(nil, tt.sport)
			l4 = binary.BigEndian.AppendUint16(l4, tt.dport)
			sraw, draw := hash.RawPorts(6, l4)

			if got := tt.cfg.Hash(src, sraw, draw); got != tt.hash {
				t.Errorf("Hash = %d, want %d", got, tt.hash)
			}
			if got := tt.cfg.Node(src, sraw, draw); got != tt.node {
				t.Errorf("Node = %d, want %d", got, tt.node)
			}
			got, err := tt.cfg.NodeForPorts(addr, tt.sport, tt.dport)
			if err != nil {
				t.Fatalf("NodeForPorts: %v", err)
			}
			if got != tt.node {
				t.Errorf("NodeForPorts = %d, want %d", got, tt.node)
			}
		})
	}
}

func TestPortByteSwap(t *testing.T) {
	// Port 80 is 0x00 0x50 on the wire; an x86-64 kernel loads it as the
	// native u16 0x5000 and that is what is hashed.
	sraw, draw := hash.RawPorts(6, []byte{0x00, 0x50, 0x01, 0xbb})
	if sraw != 0x5000 || draw != 0xbb01 {
		t.Fatalf("RawPorts = %#04x, %#04x, want 0x5000, 0xbb01", sraw, draw)
	}

	c := cfg(hash.SourceIPSourcePort, 4, 0)
	src := uint32(0xc0a80101)
	if c.Node(src, 0x5000, 0) == c.Node(src, 80, 0) {
		t.Fatal("test vector does not distinguish swapped from unswapped ports")
	}
	n, err := c.NodeForPorts(netip.MustParseAddr("192.168.1.1"), 80, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := c.Node(src, 0x5000, 0); n != want {
		t.Fatalf("NodeForPorts(port 80) = %d, want Node(raw 0x5000) = %d", n, want)
	}
}

// TestJhashPublished checks the jhash primitives against values published
// with the asterinas kernel's Rust port of include/linux/jhash.h
// (kernel/libs/jhash/src/lib.rs), which its authors checked against the
// Linux C code. They are independent of both this package and
// testdata/jhash_ref.c.
func TestJhashPublished(t *testing.T) {
	const max = math.MaxUint32
	tests := []struct {
		name    string
		got     uint32
		want    uint32
		initval uint32
	}{
		{name: "3(1,2,3)", got: hash.Jhash3Words(1, 2, 3, 0), want: 2757843189},
		{name: "3(4,5,6)", got: hash.Jhash3Words(4, 5, 6, 0), want: 3701334656},
		{name: "3(0,0,0)", got: hash.Jhash3Words(0, 0, 0, 0), want: 459859287},
		{name: "3(max)", got: hash.Jhash3Words(max, max, max, 0), want: 1846109353},
		{name: "3(1,2,3)@10", got: hash.Jhash3Words(1, 2, 3, 10), want: 453614296},
		{name: "3(10,20,30)@5", got: hash.Jhash3Words(10, 20, 30, 5), want: 1448556389},
		{name: "2(1,2)", got: hash.Jhash2Words(1, 2, 0), want: 2337044857},
		{name: "2(3,4)", got: hash.Jhash2Words(3, 4, 0), want: 3842257880},
		{name: "2(0,0)", got: hash.Jhash2Words(0, 0, 0), want: 1489077439},
		{name: "2(max)", got: hash.Jhash2Words(max, max, 0), want: 1382321797},
		{name: "2(1,2)@10", got: hash.Jhash2Words(1, 2, 10), want: 1474913524},
		{name: "2(10,20)@5", got: hash.Jhash2Words(10, 20, 5), want: 1368945286},
		{name: "1(1)", got: hash.Jhash1Word(1, 0), want: 1923623579},
		{name: "1(5)", got: hash.Jhash1Word(5, 0), want: 4121471414},
		{name: "1(0)", got: hash.Jhash1Word(0, 0), want: 76781240},
		{name: "1(max)", got: hash.Jhash1Word(max, 0), want: 2601633627},
		{name: "1(1)@10", got: hash.Jhash1Word(1, 10), want: 1508237099},
		{name: "1(10)@5", got: hash.Jhash1Word(10, 5), want: 2141486731},
	}

	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("jhash %s = %d, want %d", tt.name, tt.got, tt.want)
		}
	}
}

func TestReciprocalScale(t *testing.T) {
	tests := []struct {
		val, n, want uint32
	}{
		{0, 0, 0},
		{math.MaxUint32, 0, 0},
		{math.MaxUint32, 1, 0},
		{math.MaxUint32, 2, 1},
		{1 << 31, 2, 1},
		{1<<31 - 1, 2, 0},
		{math.MaxUint32, 64, 63},
		{math.MaxUint32, math.MaxUint32, math.MaxUint32 - 1},
	}

	for _, tt := range tests {
		if got := hash.ReciprocalScale(tt.val, tt.n); got != tt.want {
			t.Errorf("ReciprocalScale(%#x, %d) = %d, want %d", tt.val, tt.n, got, tt.want)
		}
	}
}

// buildRef compiles testdata/jhash_ref.c, skipping the test without gcc.
func buildRef(t *testing.T) string {
	t.Helper()

	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not found; skipping comparison with the C reference")
	}

	bin := filepath.Join(t.TempDir(), "jhash_ref")
	out, err := exec.Command(gcc, "-O2", "-Wall", "-Werror", "-o", bin,
		filepath.Join("testdata", "jhash_ref.c")).CombinedOutput()
	if err != nil {
		t.Fatalf("compiling C reference: %v\n%s", err, out)
	}

	return bin
}

type query struct {
	cfg          hash.Config
	src          uint32
	sport, dport uint16
}

// runRef feeds qs to the C reference and returns its node and hash for
// each.
func runRef(t *testing.T, bin string, qs []query, args ...string) (nodes []int, hashes []uint32) {
	t.Helper()

	var in bytes.Buffer
	for _, q := range qs {
		fmt.Fprintf(&in, "%d %d %d %d %d %d\n",
			q.cfg.Mode-1, q.cfg.TotalNodes, q.cfg.Seed, q.src, q.sport, q.dport)
	}

	cmd := exec.Command(bin, args...)
	cmd.Stdin = &in
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("running C reference: %v\n%s", err, stderr.String())
	}

	s := bufio.NewScanner(bytes.NewReader(out))
	for s.Scan() {
		var (
			n int
			h uint32
		)
		if _, err := fmt.Sscanf(s.Text(), "%d %d", &n, &h); err != nil {
			t.Fatalf("parsing C reference output %q: %v", s.Text(), err)
		}
		nodes = append(nodes, n)
		hashes = append(hashes, h)
	}
	if len(nodes) != len(qs) {
		t.Fatalf("C reference answered %d of %d queries", len(nodes), len(qs))
	}

	return nodes, hashes
}

// randomQueries covers every mode and cluster size, with the extreme
// seeds, addresses and ports mixed into otherwise random inputs.
func randomQueries(n int) []query {
	rng := rand.New(rand.NewPCG(0xc1, 0x5e))
	pick32 := func(edges ...uint32) uint32 {
		if rng.IntN(8) == 0 {
			return edges[rng.IntN(len(edges))]
		}
		return rng.Uint32()
	}
	pick16 := func() uint16 {
		switch rng.IntN(8) {
		case 0:
			return 0
		case 1:
			return math.MaxUint16
		default:
			return uint16(rng.Uint32())
		}
	}

	qs := make([]query, n)
	for i := range qs {
		qs[i] = query{
			cfg: hash.Config{
				Mode:       hash.Mode(i%3 + 1),
				TotalNodes: uint32(i/3%hash.MaxNodes + 1),
				Seed:       pick32(0, math.MaxUint32, 0xdeadbeef),
			},
			src:   pick32(0, math.MaxUint32, 0x7f000001),
			sport: pick16(),
			dport: pick16(),
		}
	}

	return qs
}

func TestCReference(t *testing.T) {
	bin := buildRef(t)
	qs := randomQueries(20000)
	nodes, hashes := runRef(t, bin, qs)

	var failed int
	for i, q := range qs {
		h := q.cfg.Hash(q.src, q.sport, q.dport)
		n := q.cfg.Node(q.src, q.sport, q.dport)
		if h == hashes[i] && n == nodes[i] {
			continue
		}

		t.Errorf("%+v src=%#08x sport=%#04x dport=%#04x: got node %d hash %d, C says node %d hash %d",
			q.cfg, q.src, q.sport, q.dport, n, h, nodes[i], hashes[i])
		if failed++; failed == 10 {
			t.Fatal("too many mismatches")
		}
	}
}

func TestCReferencePortNumbers(t *testing.T) {
	// The C program's -ports path loads the wire bytes natively, which is
	// the kernel's behaviour only where native means little-endian.
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("C reference models x86-64 port loads only on a little-endian host")
	}

	bin := buildRef(t)
	qs := randomQueries(2000)
	nodes, _ := runRef(t, bin, qs, "-ports")

	for i, q := range qs {
		a := netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, q.src)))
		n, err := q.cfg.NodeForPorts(a, q.sport, q.dport)
		if err != nil {
			t.Fatalf("NodeForPorts: %v", err)
		}
		if n != nodes[i] {
			t.Fatalf("%+v %s ports %d,%d: got node %d, C says %d",
				q.cfg, a, q.sport, q.dport, n, nodes[i])
		}
	}
}

func TestRangeTiles(t *testing.T) {
	for total := uint32(1); total <= hash.MaxNodes; total++ {
		next := uint64(0)
		for node := uint32(1); node <= total; node++ {
			lo, hi := hash.Range(total, node)
			if uint64(lo) != next {
				t.Fatalf("Range(%d, %d) starts at %#x, want %#x", total, node, lo, next)
			}
			if lo > hi {
				t.Fatalf("Range(%d, %d) = [%#x, %#x] is empty", total, node, lo, hi)
			}

			// The bounds are where the answer changes, so check them and
			// their neighbours directly.
			for _, h := range []uint64{uint64(lo) - 1, uint64(lo), uint64(hi), uint64(hi) + 1} {
				if h > math.MaxUint32 {
					continue
				}
				in := h >= uint64(lo) && h <= uint64(hi)
				if owns := hash.ReciprocalScale(uint32(h), total)+1 == node; owns != in {
					t.Fatalf("total %d node %d h %#x: owns=%v but in [%#x, %#x]=%v",
						total, node, h, owns, lo, hi, in)
				}
			}

			next = uint64(hi) + 1
		}
		if next != 1<<32 {
			t.Fatalf("ranges for total %d end at %#x, want 0xffffffff", total, next-1)
		}
	}
}

func TestRangeRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200_000; i++ {
		total := uint32(rng.IntN(hash.MaxNodes) + 1)
		node := uint32(rng.IntN(int(total)) + 1)
		h := rng.Uint32()

		lo, hi := hash.Range(total, node)
		in := lo <= h && h <= hi
		if owns := hash.ReciprocalScale(h, total)+1 == node; owns != in {
			t.Fatalf("total %d node %d h %#x: owns=%v but in [%#x, %#x]=%v",
				total, node, h, owns, lo, hi, in)
		}
	}
}

func TestRangeInvalid(t *testing.T) {
	for _, tt := range []struct{ total, node uint32 }{
		{0, 0}, {0, 1}, {1, 0}, {1, 2}, {64, 65}, {3, math.MaxUint32},
	} {
		if lo, hi := hash.Range(tt.total, tt.node); lo <= hi {
			t.Errorf("Range(%d, %d) = [%#x, %#x], want empty", tt.total, tt.node, lo, hi)
		}
	}
}

func TestParseMode(t *testing.T) {
	tests := []struct {
		s    string
		want hash.Mode
		ok   bool
	}{
		{s: "sourceip", want: hash.SourceIP, ok: true},
		{s: "sourceip-sourceport", want: hash.SourceIPSourcePort, ok: true},
		{s: "sourceip-sourceport-destport", want: hash.SourceIPSourcePortDestPort, ok: true},
		{s: ""},
		{s: "SourceIP"},
		{s: "sourceip "},
		{s: "sourceip-destport"},
		{s: "sip"},
		{s: "0"},
	}

	for _, tt := range tests {
		t.Run(tt.s, func(t *testing.T) {
			got, err := hash.ParseMode(tt.s)
			if !tt.ok {
				if err == nil {
					t.Fatalf("ParseMode(%q) = %v, want error", tt.s, got)
				}
				msg := err.Error()
				if !strings.Contains(msg, fmt.Sprintf("%q", tt.s)) ||
					!strings.Contains(msg, "sourceip-sourceport-destport") {
					t.Fatalf("error %q names neither the input nor the valid modes", msg)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseMode(%q): %v", tt.s, err)
			}
			if got != tt.want {
				t.Fatalf("ParseMode(%q) = %v, want %v", tt.s, got, tt.want)
			}
		})
	}
}

func FuzzParseMode(f *testing.F) {
	for _, s := range []string{"sourceip", "sourceip-sourceport", "sourceip-sourceport-destport", "", "Mode(4)"} {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, s string) {
		m, err := hash.ParseMode(s)
		if err != nil {
			return
		}
		if got := m.String(); got != s {
			t.Fatalf("ParseMode(%q).String() = %q", s, got)
		}
		if err := (hash.Config{Mode: m, TotalNodes: 1}).Validate(); err != nil {
			t.Fatalf("ParseMode(%q) = %v, which does not validate: %v", s, m, err)
		}
	})
}

func TestModeString(t *testing.T) {
	tests := []struct {
		m     hash.Mode
		s     string
		ports bool
	}{
		{0, "Mode(0)", false},
		{hash.SourceIP, "sourceip", false},
		{hash.SourceIPSourcePort, "sourceip-sourceport", true},
		{hash.SourceIPSourcePortDestPort, "sourceip-sourceport-destport", true},
		{4, "Mode(4)", false},
		{255, "Mode(255)", false},
	}

	for _, tt := range tests {
		if got := tt.m.String(); got != tt.s {
			t.Errorf("Mode(%d).String() = %q, want %q", uint8(tt.m), got, tt.s)
		}
		if got := tt.m.UsesPorts(); got != tt.ports {
			t.Errorf("%v.UsesPorts() = %v, want %v", tt.m, got, tt.ports)
		}
	}
}

func TestPortsOffset(t *testing.T) {
	want := map[uint8]int{
		6:   0, // TCP
		17:  0, // UDP
		33:  0, // DCCP
		50:  0, // ESP
		51:  4, // AH
		132: 0, // SCTP
		136: 0, // UDP-Lite
	}

	for p := 0; p <= math.MaxUint8; p++ {
		w, ok := want[uint8(p)]
		if !ok {
			w = -1
		}
		if got := hash.PortsOffset(uint8(p)); got != w {
			t.Errorf("PortsOffset(%d) = %d, want %d", p, got, w)
		}
	}
}

func TestRawPorts(t *testing.T) {
	ah := []byte{0x06, 0x04, 0x00, 0x00, 0x12, 0x34, 0x56, 0x78}
	tests := []struct {
		name         string
		proto        uint8
		l4           []byte
		sport, dport uint16
	}{
		{"tcp", 6, []byte{0x00, 0x50, 0x01, 0xbb, 0xff}, 0x5000, 0xbb01},
		{"udp exact", 17, []byte{0x00, 0x35, 0xc0, 0x00}, 0x3500, 0x00c0},
		{"tcp truncated", 6, []byte{0x00, 0x50, 0x01}, 0, 0},
		{"icmp", 1, []byte{0x08, 0x00, 0x12, 0x34}, 0, 0},
		{"ah spi", 51, ah, 0x3412, 0x7856},
		{"ah truncated", 51, ah[:7], 0, 0},
		{"empty", 6, nil, 0, 0},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, d := hash.RawPorts(tt.proto, tt.l4)
			if s != tt.sport || d != tt.dport {
				t.Fatalf("RawPorts = %#04x, %#04x, want %#04x, %#04x", s, d, tt.sport, tt.dport)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  hash.Config
		ok   bool
	}{
		{"zero", hash.Config{}, false},
		{"no mode", hash.Config{TotalNodes: 2}, false},
		{"bad mode", hash.Config{Mode: 4, TotalNodes: 2}, false},
		{"no nodes", hash.Config{Mode: hash.SourceIP}, false},
		{"one node", hash.Config{Mode: hash.SourceIP, TotalNodes: 1}, true},
		{"max nodes", hash.Config{Mode: hash.SourceIPSourcePortDestPort, TotalNodes: 64, Seed: math.MaxUint32}, true},
		{"too many", hash.Config{Mode: hash.SourceIPSourcePort, TotalNodes: 65}, false},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestNodeForPortsErrors(t *testing.T) {
	good := cfg(hash.SourceIP, 2, 0)
	tests := []struct {
		name string
		cfg  hash.Config
		src  netip.Addr
	}{
		{"ipv6", good, netip.MustParseAddr("2001:db8::1")},
		{"ipv4-mapped", good, netip.MustParseAddr("::ffff:192.0.2.1")},
		{"zero addr", good, netip.Addr{}},
		{"invalid config", hash.Config{}, netip.MustParseAddr("192.0.2.1")},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n, err := tt.cfg.NodeForPorts(tt.src, 1, 2); err == nil {
				t.Fatalf("NodeForPorts = %d, want error", n)
			}
		})
	}
}

func TestNodeDoesNotAllocate(t *testing.T) {
	c := cfg(hash.SourceIPSourcePortDestPort, 7, 42)
	var sink int
	allocs := testing.AllocsPerRun(100, func() {
		sink += c.Node(0xac10000a, 0x0004, 0x5000)
	})
	if allocs != 0 {
		t.Fatalf("Node allocates %v times per call", allocs)
	}
}

var benchSink int

func BenchmarkNode(b *testing.B) {
	for _, m := range []hash.Mode{hash.SourceIP, hash.SourceIPSourcePort, hash.SourceIPSourcePortDestPort} {
		b.Run(m.String(), func(b *testing.B) {
			c := cfg(m, 7, 0xdeadbeef)
			src := uint32(0xc0a80101)
			b.ReportAllocs()
			for b.Loop() {
				// Vary the input so the work cannot be hoisted.
				src++
				benchSink += c.Node(src, uint16(src), 0x5000)
			}
		})
	}
}

func TestRangeMatchesNode(t *testing.T) {
	// Tie Range to Node itself, not only to ReciprocalScale, since the
	// BPF compiler will use Range to reproduce Node.
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 10_000; i++ {
		c := cfg(hash.Mode(rng.IntN(3)+1), uint32(rng.IntN(hash.MaxNodes)+1), rng.Uint32())
		src, sp, dp := rng.Uint32(), uint16(rng.Uint32()), uint16(rng.Uint32())

		h := c.Hash(src, sp, dp)
		n := c.Node(src, sp, dp)
		if lo, hi := hash.Range(c.TotalNodes, uint32(n)); h < lo || h > hi {
			t.Fatalf("%+v: hash %#x node %d not in Range [%#x, %#x]", c, h, n, lo, hi)
		}
	}
}
