package daemon_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/internal/daemon"
	"github.com/clusterip/clusterip/internal/datapath"
	"github.com/clusterip/clusterip/internal/health"
	"github.com/clusterip/clusterip/nodeset"
)

// baseArgs is the smallest valid `new`.
var baseArgs = []string{"--vip", "192.0.2.10", "--interface", "eth0", "--hashmode", "sourceip", "--total-nodes", "2"}

// with returns baseArgs with flag's value replaced, or with flag appended
// when baseArgs lacks it.
func with(flag, value string) []string {
	args := slices.Clone(baseArgs)
	if i := slices.Index(args, flag); i >= 0 {
		args[i+1] = value
		return args
	}
	return append(args, flag, value)
}

// without returns baseArgs without flag and its value.
func without(flag string) []string {
	i := slices.Index(baseArgs, flag)
	return slices.Concat(baseArgs[:i], baseArgs[i+2:])
}

func equalSpec(a, b daemon.Spec) bool {
	return a.VIP == b.VIP && a.Interface == b.Interface && a.Mode == b.Mode &&
		bytes.Equal(a.ClusterMAC, b.ClusterMAC) && a.TotalNodes == b.TotalNodes &&
		a.LocalNodes == b.LocalNodes && a.HashInit == b.HashInit && a.HashCompat == b.HashCompat &&
		(a.Check == nil) == (b.Check == nil) && (a.Check == nil || *a.Check == *b.Check)
}

func nodes(n ...int) nodeset.NodeSet {
	s, err := nodeset.Of(n...)
	if err != nil {
		panic(err)
	}
	return s
}

func TestParseSpecErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		// flag is named in the error, and the error contains want.
		flag, want string
	}{
		{"no args", nil, "--vip", "required"},
		{"missing --vip", without("--vip"), "--vip", "required"},
		{"missing --interface", without("--interface"), "--interface", "required"},
		{"missing --hashmode", without("--hashmode"), "--hashmode", "required"},
		{"missing --total-nodes", without("--total-nodes"), "--total-nodes", "required"},
		{"--vip garbage", with("--vip", "vip"), "--vip", "not an IP address"},
		{"--vip empty", with("--vip", ""), "--vip", "not an IP address"},
		{"--vip IPv4-mapped", with("--vip", "::ffff:192.0.2.10"), "--vip", "write an IPv4-mapped address as IPv4"},
		{"--vip prefix", with("--vip", "192.0.2.10/24"), "--vip", "not an IP address"},
		{"--vip leading zero", with("--vip", "192.0.2.010"), "--vip", "not an IP address"},
		{"--vip IPv6 link-local", with("--vip", "fe80::1"), "--vip", "link-local"},
		{"--vip IPv6 with zone", with("--vip", "2001:db8::1%eth0"), "--vip", "link-local"},
		{"--vip IPv6 unspecified", with("--vip", "::"), "--vip", "not a unicast address"},
		{"--vip IPv6 loopback", with("--vip", "::1"), "--vip", "not a unicast address"},
		{"--vip IPv6 multicast", with("--vip", "ff02::1"), "--vip", "not a unicast address"},
		{"--vip IPv6 with the CLUSTERIP hash", append(with("--vip", "2001:db8::1"), "--hash-compat", "clusterip"), "--hash-compat", "no IPv6"},
		{"--vip unspecified", with("--vip", "0.0.0.0"), "--vip", "not a unicast address"},
		{"--vip loopback", with("--vip", "127.0.0.1"), "--vip", "not a unicast address"},
		{"--vip multicast", with("--vip", "224.0.0.1"), "--vip", "not a unicast address"},
		{"--vip broadcast", with("--vip", "255.255.255.255"), "--vip", "not a unicast address"},
		{"--interface empty", with("--interface", ""), "--interface", "not an interface name"},
		{"--interface 16 bytes", with("--interface", "abcdefghijklmnop"), "--interface", "not an interface name"},
		{"--interface slash", with("--interface", "eth0/1"), "--interface", "not an interface name"},
		{"--interface space", with("--interface", "eth 0"), "--interface", "not an interface name"},
		{"--hashmode unknown", with("--hashmode", "sourceip-destport"), "--hashmode", "unknown mode"},
		{"--hashmode case", with("--hashmode", "SourceIP"), "--hashmode", "unknown mode"},
		{"--clustermac garbage", with("--clustermac", "mac"), "--clustermac", "not a MAC address"},
		{"--clustermac unicast", with("--clustermac", "02:00:5e:00:02:0a"), "--clustermac", "unicast"},
		{"--clustermac broadcast", with("--clustermac", "ff:ff:ff:ff:ff:ff"), "--clustermac", "broadcast"},
		{"--clustermac EUI-64", with("--clustermac", "01:00:5e:00:00:00:02:0a"), "--clustermac", "6-byte"},
		{"--mac-mode unknown", with("--mac-mode", "broadcast"), "--mac-mode", "want multicast, unicast or igmp"},
		{"--control-owner empty", with("--control-owner", ""), "--control-owner", "empty"},
		{"--control-owner space", with("--control-owner", "a b"), "--control-owner", "USER[:GROUP]"},
		{"--control-owner no user", with("--control-owner", ":vpn"), "--control-owner", "USER[:GROUP]"},
		{"--control-owner no group", with("--control-owner", "charon:"), "--control-owner", "USER[:GROUP]"},
		{"--control-owner two colons", with("--control-owner", "a:b:c"), "--control-owner", "USER[:GROUP]"},
		{"--mac-mode empty", with("--mac-mode", ""), "--mac-mode", "want multicast, unicast or igmp"},
		{"--mac-mode unicast, multicast MAC", append(with("--mac-mode", "unicast"), "--clustermac", "01:00:5e:00:02:0a"), "--clustermac", "must be unicast"},
		{"--mac-mode unicast, zero MAC", append(with("--mac-mode", "unicast"), "--clustermac", "00:00:00:00:00:00"), "--clustermac", "zero"},
		{"--mac-mode igmp, unmapped MAC", append(with("--mac-mode", "igmp"), "--clustermac", "01:00:5e:00:02:0a"), "--clustermac", "map a group"},
		{"--mac-mode igmp, IPv6, unmapped MAC", append(with("--mac-mode", "igmp"), "--vip", "2001:db8::1", "--clustermac", "01:00:5e:7f:02:0a"), "--clustermac", "map a group"},
		{"--total-nodes 0", with("--total-nodes", "0"), "--total-nodes", "out of range 1..64"},
		{"--total-nodes 65", with("--total-nodes", "65"), "--total-nodes", "out of range 1..64"},
		{"--total-nodes -1", with("--total-nodes", "-1"), "--total-nodes", "out of range 1..64"},
		{"--total-nodes garbage", with("--total-nodes", "two"), "--total-nodes", "invalid argument"},
		{"--local-node 0", with("--local-node", "0"), "--local-node", "out of range 1..2"},
		{"--local-node above total", with("--local-node", "3"), "--local-node", "out of range 1..2"},
		{"--local-node list above total", with("--local-node", "1,3"), "--local-node", "out of range 1..2"},
		{"--local-node garbage", with("--local-node", "one"), "--local-node", "invalid argument"},
		{"--local-node empty item", with("--local-node", "1,,2"), "--local-node", "invalid argument"},
		{"--hash-init negative", with("--hash-init", "-1"), "--hash-init", "invalid argument"},
		{"--hash-init above 32 bits", with("--hash-init", "4294967296"), "--hash-init", "invalid argument"},
		{"--hash-init without value", append(slices.Clone(baseArgs), "--hash-init"), "--hash-init", "needs an argument"},
		{"--hash-compat unknown", with("--hash-compat", "iptables"), "--hash-compat", `unknown hash compatibility "iptables"`},
		{"--hash-compat empty", with("--hash-compat", ""), "--hash-compat", `unknown hash compatibility ""`},
		{"unknown flag", append(slices.Clone(baseArgs), "--nodes", "1"), "--nodes", "unknown flag"},
		{"positional argument", append(slices.Clone(baseArgs), "extra"), "extra", "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := daemon.ParseSpec(tt.args)
			if err == nil {
				t.Fatalf("ParseSpec succeeded with %+v, want error", s)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.flag) || !strings.Contains(msg, tt.want) {
				t.Fatalf("error %q does not name %s and say %q", msg, tt.flag, tt.want)
			}
			if strings.Contains(msg, "\n") {
				t.Fatalf("error %q spans several lines", msg)
			}
		})
	}
}

func TestParseSpec(t *testing.T) {
	vip := netip.MustParseAddr("192.0.2.10")
	defMAC := net.HardwareAddr{0x01, 0x00, 0x5e, 0x00, 0x02, 0x0a}
	base := daemon.Spec{VIP: vip, Interface: "eth0", Mode: hash.SourceIP, ClusterMAC: defMAC, TotalNodes: 2}
	spec := func(f func(s *daemon.Spec)) daemon.Spec {
		s := base
		f(&s)
		return s
	}

	tests := []struct {
		name string
		args []string
		want daemon.Spec
	}{
		{"defaults", baseArgs, base},
		{"one local node", with("--local-node", "2"), spec(func(s *daemon.Spec) { s.LocalNodes = nodes(2) })},
		{
			"repeated --local-node",
			append(with("--total-nodes", "8"), "--local-node", "3", "--local-node", "1"),
			spec(func(s *daemon.Spec) { s.TotalNodes = 8; s.LocalNodes = nodes(1, 3) }),
		},
		{
			"comma-separated --local-node",
			append(with("--total-nodes", "8"), "--local-node", "1,3,8"),
			spec(func(s *daemon.Spec) { s.TotalNodes = 8; s.LocalNodes = nodes(1, 3, 8) }),
		},
		{
			"mixed and duplicate --local-node",
			append(with("--total-nodes", "8"), "--local-node", "1,3", "--local-node=3", "--local-node", "5"),
			spec(func(s *daemon.Spec) { s.TotalNodes = 8; s.LocalNodes = nodes(1, 3, 5) }),
		},
		{
			"64 nodes",
			append(with("--total-nodes", "64"), "--local-node", "64"),
			spec(func(s *daemon.Spec) { s.TotalNodes = 64; s.LocalNodes = nodes(64) }),
		},
		{
			"explicit cluster MAC, any spelling",
			with("--clustermac", "01-00-5E-7F-00-01"),
			spec(func(s *daemon.Spec) { s.ClusterMAC = net.HardwareAddr{0x01, 0x00, 0x5e, 0x7f, 0x00, 0x01} }),
		},
		{"port mode", with("--hashmode", "sourceip-sourceport-destport"), spec(func(s *daemon.Spec) { s.Mode = hash.SourceIPSourcePortDestPort })},
		{"hash-init max", with("--hash-init", "4294967295"), spec(func(s *daemon.Spec) { s.HashInit = math.MaxUint32 })},
		{"hash-init hex", with("--hash-init", "0xdeadbeef"), spec(func(s *daemon.Spec) { s.HashInit = 0xdeadbeef })},
		{"hash-compat nftables", with("--hash-compat", "nftables"), spec(func(s *daemon.Spec) { s.HashCompat = hash.NFTables })},
		{"IPv6: nftables hash, 33:33 MAC", with("--vip", "2001:db8::a:b0c"), spec(func(s *daemon.Spec) {
			s.VIP, s.HashCompat = netip.MustParseAddr("2001:db8::a:b0c"), hash.NFTables
			s.ClusterMAC = net.HardwareAddr{0x33, 0x33, 0, 0x0a, 0x0b, 0x0c}
		})},
		{"hash-compat clusterip", with("--hash-compat", "clusterip"), spec(func(s *daemon.Spec) {})},
		{"mac-mode multicast", with("--mac-mode", "multicast"), spec(func(s *daemon.Spec) {})},
		{"control-owner user", with("--control-owner", "charon"), spec(func(s *daemon.Spec) { s.ControlOwner = "charon" })},
		{"control-owner numbers", with("--control-owner", "998:997"), spec(func(s *daemon.Spec) { s.ControlOwner = "998:997" })},
		{"mac-mode unicast: 02:bf and the VIP", with("--mac-mode", "unicast"), spec(func(s *daemon.Spec) {
			s.MACMode, s.ClusterMAC = datapath.MACUnicast, net.HardwareAddr{0x02, 0xbf, 192, 0, 2, 10}
		})},
		{"mac-mode unicast, any unicast MAC", append(with("--mac-mode", "unicast"), "--clustermac", "52:54:00:12:34:56"), spec(func(s *daemon.Spec) {
			s.MACMode, s.ClusterMAC = datapath.MACUnicast, net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
		})},
		{"mac-mode igmp: 239.255.2.10", with("--mac-mode", "igmp"), spec(func(s *daemon.Spec) {
			s.MACMode, s.ClusterMAC = datapath.MACIGMP, net.HardwareAddr{0x01, 0x00, 0x5e, 0x7f, 2, 10}
		})},
		{"mac-mode igmp, IPv6: ff15::a:b0c", append(with("--mac-mode", "igmp"), "--vip", "2001:db8::a:b0c"), spec(func(s *daemon.Spec) {
			s.VIP, s.HashCompat, s.MACMode = netip.MustParseAddr("2001:db8::a:b0c"), hash.NFTables, datapath.MACIGMP
			s.ClusterMAC = net.HardwareAddr{0x33, 0x33, 0, 0x0a, 0x0b, 0x0c}
		})},
		{
			"--flag=value forms",
			[]string{"--vip=192.0.2.10", "--interface=eth0", "--hashmode=sourceip", "--total-nodes=2"},
			base,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := daemon.ParseSpec(tt.args)
			if err != nil {
				t.Fatalf("ParseSpec: %v", err)
			}
			if !equalSpec(got, tt.want) {
				t.Fatalf("ParseSpec =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestDefaultClusterMAC(t *testing.T) {
	for _, vip := range []string{"192.0.2.10", "10.0.0.1", "10.128.0.1", "10.255.255.255", "172.16.129.3", "203.0.113.254"} {
		t.Run(vip, func(t *testing.T) {
			a := netip.MustParseAddr(vip).As4()
			low23 := binary.BigEndian.Uint32(a[:]) & (1<<23 - 1)
			want := net.HardwareAddr{0x01, 0x00, 0x5e, byte(low23 >> 16), byte(low23 >> 8), byte(low23)}

			if got := daemon.DefaultClusterMAC(netip.MustParseAddr(vip)); !bytes.Equal(got, want) {
				t.Fatalf("DefaultClusterMAC = %s, want %s", got, want)
			}
			s, err := daemon.ParseSpec(with("--vip", vip))
			if err != nil {
				t.Fatalf("ParseSpec: %v", err)
			}
			if !bytes.Equal(s.ClusterMAC, want) {
				t.Fatalf("ParseSpec without --clustermac: cluster MAC %s, want %s", s.ClusterMAC, want)
			}
		})
	}
}

// specs are valid Specs covering every field's edges.
func specs() []daemon.Spec {
	return []daemon.Spec{
		{VIP: netip.MustParseAddr("192.0.2.10"), Interface: "eth0", Mode: hash.SourceIP,
			ClusterMAC: daemon.DefaultClusterMAC(netip.MustParseAddr("192.0.2.10")), TotalNodes: 1},
		{VIP: netip.MustParseAddr("10.0.0.1"), Interface: "bond0.100", Mode: hash.SourceIPSourcePort,
			ClusterMAC: net.HardwareAddr{0x03, 0, 0, 0, 0, 1}, TotalNodes: 3, LocalNodes: nodes(1, 3), HashInit: 1, HashCompat: hash.NFTables},
		{VIP: netip.MustParseAddr("203.0.113.254"), Interface: "enp0s31f6", Mode: hash.SourceIPSourcePortDestPort,
			ClusterMAC: net.HardwareAddr{0x01, 0x00, 0x5e, 0x7f, 0xff, 0xff}, TotalNodes: 64,
			LocalNodes: nodes(1, 2, 63, 64), HashInit: math.MaxUint32},
		{VIP: netip.MustParseAddr("169.254.1.1"), Interface: "-dash", Mode: hash.SourceIP,
			ClusterMAC: net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xfe}, TotalNodes: 16},
		{VIP: netip.MustParseAddr("2001:db8:1:2::100"), Interface: "eth0", Mode: hash.SourceIPSourcePortDestPort,
			ClusterMAC: net.HardwareAddr{0x33, 0x33, 0, 0, 1, 0}, TotalNodes: 5, LocalNodes: nodes(2), HashCompat: hash.NFTables},
		{VIP: netip.MustParseAddr("192.0.2.11"), Interface: "eth0", Mode: hash.SourceIP, MACMode: datapath.MACUnicast,
			ClusterMAC: net.HardwareAddr{0x02, 0xbf, 192, 0, 2, 11}, TotalNodes: 2, ControlOwner: "strongswan:vpn"},
		{VIP: netip.MustParseAddr("2001:db8::7"), Interface: "eth0", Mode: hash.SourceIP, MACMode: datapath.MACIGMP,
			ClusterMAC: net.HardwareAddr{0x33, 0x33, 0, 0, 0, 7}, TotalNodes: 2, HashCompat: hash.NFTables},
	}
}

func TestArgsRoundTrip(t *testing.T) {
	for _, s := range specs() {
		t.Run(s.VIP.String(), func(t *testing.T) {
			if err := s.Validate(); err != nil {
				t.Fatalf("test spec invalid: %v", err)
			}
			got, err := daemon.ParseSpec(s.Args())
			if err != nil {
				t.Fatalf("ParseSpec(%q): %v", s.Args(), err)
			}
			if !equalSpec(got, s) {
				t.Fatalf("round trip through %q:\n got %+v\nwant %+v", s.Args(), got, s)
			}
		})
	}
}

// A # that starts a word starts a comment, as in a shell; one inside a
// word or quotes is data.
func TestParseConfigTrailingComment(t *testing.T) {
	text := "new " + strings.Join(baseArgs, " ") + " --local-node 1   # the web VIP\n" +
		"new --vip 192.0.2.11 --interface eth0 --hashmode sourceip --total-nodes 2 --check 'exec:test -f /run/#ok' #note\n" +
		"   # an indented comment\n"
	specs, err := daemon.ParseConfig("c.conf", strings.NewReader(text))
	if err != nil || len(specs) != 2 {
		t.Fatalf("ParseConfig = %v, %v", specs, err)
	}
	if specs[0].LocalNodes != nodes(1) || specs[1].Check == nil || specs[1].Check.Target != "test -f /run/#ok" {
		t.Fatalf("specs %+v, check %+v", specs[0], specs[1].Check)
	}
}

func TestParseConfig(t *testing.T) {
	const good = `# clusters
new --vip 192.0.2.10 --interface eth0 --hashmode sourceip --total-nodes 2 --local-node 1

	# indented comment
#new --vip 192.0.2.10 --interface eth0
new	--vip 192.0.2.11   --interface eth1 --hashmode sourceip-sourceport --total-nodes 4 --local-node 2,4 --hash-init 7` + "\r\n\n   \n"

	specs, err := daemon.ParseConfig("clusters.conf", strings.NewReader(good))
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	want := []daemon.Spec{
		{VIP: netip.MustParseAddr("192.0.2.10"), Interface: "eth0", Mode: hash.SourceIP,
			ClusterMAC: daemon.DefaultClusterMAC(netip.MustParseAddr("192.0.2.10")), TotalNodes: 2, LocalNodes: nodes(1)},
		{VIP: netip.MustParseAddr("192.0.2.11"), Interface: "eth1", Mode: hash.SourceIPSourcePort,
			ClusterMAC: daemon.DefaultClusterMAC(netip.MustParseAddr("192.0.2.11")), TotalNodes: 4, LocalNodes: nodes(2, 4), HashInit: 7},
	}
	if len(specs) != len(want) {
		t.Fatalf("ParseConfig returned %d specs, want %d", len(specs), len(want))
	}
	for i := range want {
		if !equalSpec(specs[i], want[i]) {
			t.Errorf("spec %d =\n%+v\nwant\n%+v", i, specs[i], want[i])
		}
	}

	for _, empty := range []string{"", "\n\n", "# nothing\n", "   \t\n#\n"} {
		specs, err := daemon.ParseConfig("empty", strings.NewReader(empty))
		if err != nil || len(specs) != 0 {
			t.Errorf("ParseConfig(%q) = %d specs, %v; want none, nil", empty, len(specs), err)
		}
	}
}

func TestParseConfigErrors(t *testing.T) {
	const line = "new --vip 192.0.2.10 --interface eth0 --hashmode sourceip --total-nodes 2\n"
	tests := []struct {
		name   string
		config string
		want   string // the whole error starts with it
	}{
		{
			name:   "unknown leading word",
			config: "add --vip 192.0.2.10 --interface eth0 --hashmode sourceip --total-nodes 2\n",
			want:   `test.conf:1: expected "new --vip ...", got "add"`,
		},
		{
			name:   "flags without new",
			config: "# c\n--vip 192.0.2.10\n",
			want:   `test.conf:2: expected "new --vip ...", got "--vip"`,
		},
		{
			name:   "bad flag after comments and blank lines",
			config: "# one\n\n" + line + "\n# five\nnew --vip 192.0.2.11 --interface eth0 --hashmode bogus --total-nodes 2\n",
			want:   "test.conf:6: --hashmode: ",
		},
		{
			name:   "missing flag",
			config: "new --vip 192.0.2.10\n",
			want:   "test.conf:1: --interface is required",
		},
		{
			name:   "bare new",
			config: line + "new\n",
			want:   "test.conf:2: --vip is required",
		},
		{
			name:   "duplicate VIP",
			config: "#\n" + line + line,
			want:   "test.conf:3: VIP 192.0.2.10 already declared on line 2",
		},
		{
			name:   "CRLF line numbers",
			config: line + "\r\n" + "new --vip 192.0.2.11\r\n",
			want:   "test.conf:3: --interface is required",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			specs, err := daemon.ParseConfig("test.conf", strings.NewReader(tt.config))
			if err == nil {
				t.Fatalf("ParseConfig = %d specs, want error", len(specs))
			}
			if specs != nil {
				t.Errorf("ParseConfig returned %d specs with its error, want none", len(specs))
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("error %q, want it to start with %q", err, tt.want)
			}
		})
	}
}

func TestParseConfigReadError(t *testing.T) {
	boom := errors.New("boom")
	_, err := daemon.ParseConfig("test.conf", iotest.ErrReader(boom))
	if !errors.Is(err, boom) || !strings.HasPrefix(err.Error(), "test.conf: ") {
		t.Fatalf("ParseConfig = %v, want the read error prefixed with the file name", err)
	}
}

func TestFormatConfigRoundTrip(t *testing.T) {
	in := specs()
	text := daemon.FormatConfig(in)
	if !strings.HasPrefix(text, "#") {
		t.Errorf("FormatConfig does not start with its header comment:\n%s", text)
	}
	out, err := daemon.ParseConfig("saved", strings.NewReader(text))
	if err != nil {
		t.Fatalf("ParseConfig(FormatConfig):\n%s\n%v", text, err)
	}
	if len(out) != len(in) {
		t.Fatalf("round trip kept %d of %d specs:\n%s", len(out), len(in), text)
	}
	for i := range in {
		if !equalSpec(in[i], out[i]) {
			t.Errorf("spec %d:\n got %+v\nwant %+v", i, out[i], in[i])
		}
	}
	if again := daemon.FormatConfig(out); again != text {
		t.Errorf("FormatConfig not stable:\n%s\nthen\n%s", text, again)
	}

	empty, err := daemon.ParseConfig("saved", strings.NewReader(daemon.FormatConfig(nil)))
	if err != nil || len(empty) != 0 {
		t.Fatalf("FormatConfig(nil) parses to %d specs, %v; want none", len(empty), err)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add(daemon.FormatConfig(specs()))
	f.Add("new " + strings.Join(baseArgs, " ") + " --local-node 1,2 --clustermac 01:00:5e:01:02:03\n")
	f.Add("new --vip=10.0.0.1 --interface=x --hashmode=sourceip-sourceport --total-nodes=0x10 --hash-init=0x10\n")
	f.Add("# only a comment\n\n")
	f.Add("new --vip 192.0.2.10\nnew --vip 192.0.2.10\n")
	f.Add("new --help\n")

	f.Fuzz(func(t *testing.T, config string) {
		specs, err := daemon.ParseConfig("fuzz", strings.NewReader(config))
		if err != nil {
			if specs != nil {
				t.Fatalf("ParseConfig returned specs with error %v", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		vips := map[netip.Addr]bool{}
		for _, s := range specs {
			if err := s.Validate(); err != nil {
				t.Fatalf("ParseConfig accepted an invalid spec %+v: %v", s, err)
			}
			if vips[s.VIP] {
				t.Fatalf("ParseConfig accepted VIP %s twice", s.VIP)
			}
			vips[s.VIP] = true
			again, err := daemon.ParseSpec(s.Args())
			if err != nil || !equalSpec(again, s) {
				t.Fatalf("Args round trip of %+v: %+v, %v", s, again, err)
			}
		}
		text := daemon.FormatConfig(specs)
		out, err := daemon.ParseConfig("saved", strings.NewReader(text))
		if err != nil {
			t.Fatalf("ParseConfig(FormatConfig) of accepted specs:\n%s\n%v", text, err)
		}
		if len(out) != len(specs) {
			t.Fatalf("round trip kept %d of %d specs", len(out), len(specs))
		}
		for i := range specs {
			if !equalSpec(specs[i], out[i]) {
				t.Fatalf("spec %d round trip:\n got %+v\nwant %+v", i, out[i], specs[i])
			}
		}
	})
}

// withExec is a valid spec with an exec health check running cmd.
func withExec(t testing.TB, cmd string) (daemon.Spec, bool) {
	s := specs()[1]
	c, err := health.Parse("exec:" + cmd)
	if err != nil {
		return s, false
	}
	s.Check = &c
	if s.Validate() != nil {
		return s, false
	}
	return s, true
}

// save writes what load reads back, byte for byte: a command with a newline,
// a carriage return, quotes, a tab, control bytes or bytes that are not
// UTF-8 must not turn into a config the daemon refuses at the next boot.
func TestFormatConfigQuotesEveryByte(t *testing.T) {
	for _, cmd := range []string{
		"test -f /run/ok\nexit 0",
		"curl -sf http://127.0.0.1/health\r",
		"printf '%s\\n' \"$HOME\" # not a comment",
		"a\tb\vc",
		"\x01\x1b[0m\x7f",
		"\xff\xfe not utf-8",
		"ünïcödé 'quoted'",
		"$'already' \\x41",
		"\\",
		"'",
		"line1\nline2\n",
	} {
		s, ok := withExec(t, cmd)
		if !ok {
			t.Fatalf("%q: not a valid check", cmd)
		}
		text := daemon.FormatConfig([]daemon.Spec{s})
		if strings.Count(text, "\n") != strings.Count(daemon.FormatConfig(nil), "\n")+1 {
			t.Errorf("%q: saved over more than one line:\n%s", cmd, text)
		}
		out, err := daemon.ParseConfig("saved", strings.NewReader(text))
		if err != nil {
			t.Errorf("%q: saved config refused: %v\n%s", cmd, err, text)
			continue
		}
		if len(out) != 1 || out[0].Check == nil || out[0].Check.Target != cmd {
			t.Errorf("%q: came back as %+v\n%s", cmd, out, text)
		}
	}
}

// The quoting is what bash reads too: a saved line pasted after
// `clusterctl` passes the same arguments.
func TestFormatConfigQuotingIsBash(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	for _, cmd := range []string{"a\nb", "x\ry", "it's", "\x01\xff", "tab\there", "$HOME `id`"} {
		s, _ := withExec(t, cmd)
		line := strings.TrimPrefix(strings.TrimSpace(strings.SplitN(daemon.FormatConfig([]daemon.Spec{s}), "\nnew ", 2)[1]), "new ")
		out, err := exec.Command(bash, "-c", "for a in "+line+"; do printf '%s\\0' \"$a\"; done").Output()
		if err != nil {
			t.Fatal(err)
		}
		args := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
		if !slices.Equal(args, s.Args()) {
			t.Errorf("%q: bash reads %q, want %q", cmd, args, s.Args())
		}
	}
}

func FuzzFormatConfigRoundTrip(f *testing.F) {
	for _, s := range []string{"true", "a\nb", "x\ry", "\xff", "'\"$`\\", "$'\\n'"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cmd string) {
		s, ok := withExec(t, cmd)
		if !ok {
			return
		}
		text := daemon.FormatConfig([]daemon.Spec{s})
		out, err := daemon.ParseConfig("saved", strings.NewReader(text))
		if err != nil {
			t.Fatalf("%q: saved config refused: %v\n%s", cmd, err, text)
		}
		if len(out) != 1 || !equalSpec(out[0], s) {
			t.Fatalf("%q: came back as %+v\n%s", cmd, out, text)
		}
	})
}
