package hash_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"os/exec"
	"testing"

	"github.com/clusterip/clusterip/hash"
)

// TestJhashLookup3Published checks Jhash against the values Bob Jenkins
// printed for hashlittle() in lookup3.c's driver5(): the kernel's jhash()
// is hashlittle() with words loaded in the CPU's byte order, so on x86-64
// the two agree on every key.
func TestJhashLookup3Published(t *testing.T) {
	const four = "Four score and seven years ago"
	tests := []struct {
		key     string
		initval uint32
		want    uint32
	}{
		{"", 0, 0xdeadbeef},
		{"", 0xdeadbeef, 0xbd5b7dde},
		{four, 0, 0x17770551},
		{four, 1, 0xcd628161},
	}
	for _, tt := range tests {
		if got := hash.Jhash([]byte(tt.key), tt.initval); got != tt.want {
			t.Errorf("Jhash(%q, %#x) = %#08x, want %#08x", tt.key, tt.initval, got, tt.want)
		}
	}
}

// nftVectors were produced by testdata/jhash_ref.c -nft, and every node
// was confirmed on a 6.18 kernel with nftKernel and kernelMarks from
// test/nftables_test.go ("meta mark set jhash ... mod N seed S offset 1",
// the mark of each packet read back with SO_RCVMARK), which repeats that
// check with random cases on whatever kernel runs it.
var nftVectors = []struct {
	name         string
	cfg          hash.Config
	src          string
	sport, dport uint16
	hash         uint32
	node         int
}{
	{"v4 sip", nft(hash.SourceIP, 2, 0), "10.0.0.1", 0, 0, 799405953, 1},
	{"v4 sip seed", nft(hash.SourceIP, 7, 0xdeadbeef), "192.0.2.77", 0, 0, 4030735343, 7},
	{"v4 spt", nft(hash.SourceIPSourcePort, 4, 1), "198.51.100.9", 40000, 0, 45829313, 1},
	{"v4 dpt", nft(hash.SourceIPSourcePortDestPort, 3, 42), "203.0.113.200", 12345, 443, 603887148, 1},
	{"v4 dpt max ports", nft(hash.SourceIPSourcePortDestPort, 64, math.MaxUint32), "223.255.255.255", 65535, 65535, 324312800, 5},
	{"v6 sip", nft(hash.SourceIP, 2, 0), "2001:db8::1", 0, 0, 240847579, 1},
	{"v6 sip seed", nft(hash.SourceIP, 5, 0x12345678), "fe80::1:2:3:4", 0, 0, 437104585, 1},
	{"v6 spt", nft(hash.SourceIPSourcePort, 4, 7), "2001:db8:aa::bb", 53, 0, 1934968748, 2},
	{"v6 dpt", nft(hash.SourceIPSourcePortDestPort, 4, 5), "2001:db8::1", 80, 443, 659080431, 1},
	{"v6 dpt max ports", nft(hash.SourceIPSourcePortDestPort, 64, math.MaxUint32), "3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535, 65535, 838021576, 13},
	{"v6 one node", nft(hash.SourceIPSourcePortDestPort, 1, 0), "2001:db8::", 0, 0, 1581669600, 1},
}

func nft(m hash.Mode, total, seed uint32) hash.Config {
	return hash.Config{Mode: m, TotalNodes: total, Seed: seed, Compat: hash.NFTables}
}

func TestNFTablesVectors(t *testing.T) {
	for _, tt := range nftVectors {
		t.Run(tt.name, func(t *testing.T) {
			addr := netip.MustParseAddr(tt.src)
			key := hash.NFTKey(nil, tt.cfg.Mode, addr.AsSlice(), tt.sport, tt.dport)
			if got := hash.Jhash(key, tt.cfg.Seed); got != tt.hash {
				t.Errorf("Jhash(NFTKey) = %d, want %d", got, tt.hash)
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

type nftQuery struct {
	cfg          hash.Config
	src          netip.Addr
	sport, dport uint16
}

// randomNFTQueries mixes IPv4 and IPv6 sources across every mode and
// cluster size, with extreme values mixed into random ones.
func randomNFTQueries(n int) []nftQuery {
	rng := rand.New(rand.NewPCG(0x6e, 0x66))
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
	qs := make([]nftQuery, n)
	for i := range qs {
		var src netip.Addr
		if i%2 == 0 {
			src = netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, rng.Uint32())))
		} else {
			var a [16]byte
			binary.BigEndian.PutUint64(a[:], rng.Uint64())
			binary.BigEndian.PutUint64(a[8:], rng.Uint64())
			if rng.IntN(8) == 0 {
				a = [16]byte{}
			}
			src = netip.AddrFrom16(a)
		}
		seed := rng.Uint32()
		if rng.IntN(8) == 0 {
			seed = []uint32{0, math.MaxUint32, 0xdeadbeef}[rng.IntN(3)]
		}
		qs[i] = nftQuery{
			cfg:   nft(hash.Mode(i/2%3+1), uint32(i/6%hash.MaxNodes+1), seed),
			src:   src,
			sport: pick16(),
			dport: pick16(),
		}
	}
	return qs
}

func TestNFTablesCReference(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the C reference models x86-64 word loads only on a little-endian host")
	}
	bin := buildRef(t)
	qs := randomNFTQueries(20000)

	var in bytes.Buffer
	for _, q := range qs {
		fmt.Fprintf(&in, "%d %d %d %s %d %d\n", q.cfg.Mode-1, q.cfg.TotalNodes, q.cfg.Seed,
			hex.EncodeToString(q.src.AsSlice()), q.sport, q.dport)
	}
	cmd := exec.Command(bin, "-nft")
	cmd.Stdin = &in
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("running C reference: %v\n%s", err, stderr.String())
	}

	s := bufio.NewScanner(bytes.NewReader(out))
	var i, failed int
	for ; s.Scan(); i++ {
		var (
			want  int
			wantH uint32
		)
		if _, err := fmt.Sscanf(s.Text(), "%d %d", &want, &wantH); err != nil {
			t.Fatalf("parsing C reference output %q: %v", s.Text(), err)
		}
		q := qs[i]
		h := hash.Jhash(hash.NFTKey(nil, q.cfg.Mode, q.src.AsSlice(), q.sport, q.dport), q.cfg.Seed)
		n, err := q.cfg.NodeForPorts(q.src, q.sport, q.dport)
		if err != nil {
			t.Fatalf("NodeForPorts(%s): %v", q.src, err)
		}
		if n == want && h == wantH {
			continue
		}
		t.Errorf("%+v %s ports %d,%d: got node %d hash %d, C says node %d hash %d",
			q.cfg, q.src, q.sport, q.dport, n, h, want, wantH)
		if failed++; failed == 10 {
			t.Fatal("too many mismatches")
		}
	}
	if i != len(qs) {
		t.Fatalf("C reference answered %d of %d queries", i, len(qs))
	}
}

// TestNFTablesWirePath ties the per-packet entry points (Node for IPv4,
// Node6 for IPv6, both on raw port fields) to the key nftables hashes.
func TestNFTablesWirePath(t *testing.T) {
	for _, q := range randomNFTQueries(5000) {
		l4 := binary.BigEndian.AppendUint16(nil, q.sport)
		l4 = binary.BigEndian.AppendUint16(l4, q.dport)
		sraw, draw := hash.RawPorts(17, l4)

		var got int
		if q.src.Is4() {
			a := q.src.As4()
			got = q.cfg.Node(binary.BigEndian.Uint32(a[:]), sraw, draw)
		} else {
			a := q.src.As16()
			got = q.cfg.Node6(&a, sraw, draw)
		}
		h := hash.Jhash(hash.NFTKey(nil, q.cfg.Mode, q.src.AsSlice(), q.sport, q.dport), q.cfg.Seed)
		if want := int(hash.ReciprocalScale(h, q.cfg.TotalNodes)) + 1; got != want {
			t.Fatalf("%+v %s ports %d,%d: wire path says node %d, NFTKey says %d",
				q.cfg, q.src, q.sport, q.dport, got, want)
		}
	}
}

func TestNFTablesDiffersFromCLUSTERIP(t *testing.T) {
	// The point of the option: the byte order of the address differs, so
	// the two hashes disagree on most sources.
	a, b := cfg(hash.SourceIP, 64, 0), nft(hash.SourceIP, 64, 0)
	var same int
	for i := range uint32(1000) {
		src := 0x0a000000 + i
		if a.Node(src, 0, 0) == b.Node(src, 0, 0) {
			same++
		}
	}
	if same > 100 {
		t.Fatalf("CLUSTERIP and nftables hashes agree on %d of 1000 sources", same)
	}
}

func TestNode6DoesNotAllocate(t *testing.T) {
	c := nft(hash.SourceIPSourcePortDestPort, 7, 42)
	src := netip.MustParseAddr("2001:db8::1").As16()
	var sink int
	allocs := testing.AllocsPerRun(100, func() {
		sink += c.Node6(&src, 0x0004, 0x5000)
	})
	if allocs != 0 {
		t.Fatalf("Node6 allocates %v times per call", allocs)
	}
}

func TestParseCompat(t *testing.T) {
	tests := []struct {
		in   string
		want hash.Compat
		ok   bool
	}{
		{"clusterip", hash.CLUSTERIP, true},
		{"nftables", hash.NFTables, true},
		{"", 0, false},
		{"NFTABLES", 0, false},
		{"nft", 0, false},
	}
	for _, tt := range tests {
		got, err := hash.ParseCompat(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseCompat(%q) = %v, %v; want %v, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
		if tt.ok && got.String() != tt.in {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), tt.in)
		}
	}
	if err := (hash.Config{Mode: hash.SourceIP, TotalNodes: 2, Compat: 9}).Validate(); err == nil {
		t.Error("Validate accepted Compat 9")
	}
}

func FuzzParseCompat(f *testing.F) {
	f.Add("nftables")
	f.Add("clusterip")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := hash.ParseCompat(s)
		if err != nil {
			return
		}
		if c.String() != s {
			t.Fatalf("ParseCompat(%q) = %v, which prints as %q", s, c, c.String())
		}
	})
}

func BenchmarkNode6(b *testing.B) {
	for _, m := range []hash.Mode{hash.SourceIP, hash.SourceIPSourcePort, hash.SourceIPSourcePortDestPort} {
		b.Run(m.String(), func(b *testing.B) {
			c := nft(m, 7, 0xdeadbeef)
			src := netip.MustParseAddr("2001:db8::1").As16()
			b.ReportAllocs()
			for b.Loop() {
				src[15]++
				benchSink += c.Node6(&src, uint16(src[15]), 0x5000)
			}
		})
	}
}
