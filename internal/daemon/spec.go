package daemon

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/internal/datapath"
	"github.com/clusterip/clusterip/internal/health"
	"github.com/clusterip/clusterip/nodeset"
	"github.com/spf13/pflag"
)

// Spec is one cluster as `clusterctl new` declares it, and as `save` writes
// it back. The same flags are the CLI, the config file and the wire format,
// so there is one grammar and one validator.
type Spec struct {
	VIP        netip.Addr
	Interface  string
	Mode       hash.Mode
	ClusterMAC net.HardwareAddr
	TotalNodes int
	LocalNodes nodeset.NodeSet
	HashInit   uint32
	HashCompat hash.Compat // whose hash: CLUSTERIP's (the default) or nftables'
	MACMode    datapath.MACMode
	// ControlOwner is USER[:GROUP] (names or numbers) the control file is
	// given to, "" for root: strongSwan's ha plugin writes it as its own
	// user.
	ControlOwner string
	Check        *health.Check // nil: no health check
}

// DefaultClusterMAC is the cluster MAC used when --clustermac is left out:
// for IPv4 the multicast MAC prefix 01:00:5e followed by the low 23 bits of
// the VIP, for IPv6 the prefix 33:33 followed by its low 32 bits (the
// mappings of RFC 1112 and RFC 2464). Every node derives the same one from
// the same VIP.
func DefaultClusterMAC(vip netip.Addr) net.HardwareAddr {
	if vip.Is6() {
		b := vip.As16()
		return net.HardwareAddr{0x33, 0x33, b[12], b[13], b[14], b[15]}
	}
	b := vip.As4()
	return net.HardwareAddr{0x01, 0x00, 0x5e, b[1] & 0x7f, b[2], b[3]}
}

// DefaultClusterMACFor is the cluster MAC used in mode when --clustermac is
// left out, the same on every node:
//   - multicast: DefaultClusterMAC;
//   - unicast: 02:bf followed by the VIP's low 32 bits, a locally
//     administered unicast MAC (as Windows NLB's unicast mode derives it);
//   - igmp: the MAC of the group datapath.IGMPGroup maps it to:
//     01:00:5e:7f followed by the IPv4 VIP's last two bytes (group
//     239.255.X.Y, as NLB's IGMP mode), or for IPv6 the multicast default
//     (group ff15:: and the VIP's low 32 bits).
func DefaultClusterMACFor(vip netip.Addr, mode datapath.MACMode) net.HardwareAddr {
	b := vip.As16()
	switch mode {
	case datapath.MACUnicast:
		return net.HardwareAddr{0x02, 0xbf, b[12], b[13], b[14], b[15]}
	case datapath.MACIGMP:
		if vip.Is4() {
			return net.HardwareAddr{0x01, 0x00, 0x5e, 0x7f, b[14], b[15]}
		}
	}
	return DefaultClusterMAC(vip)
}

// SpecFlags registers the flags of `new` on fs and returns a function that
// builds and validates the Spec after fs has parsed.
func SpecFlags(fs *pflag.FlagSet) func() (Spec, error) {
	vip := fs.String("vip", "", "the cluster's virtual IP address, IPv4 or IPv6 (required)")
	iface := fs.String("interface", "", "the interface the VIP's clients reach (required)")
	mode := fs.String("hashmode", "", "sourceip, sourceip-sourceport or sourceip-sourceport-destport (required)")
	mac := fs.String("clustermac", "", "cluster MAC shared by all nodes: multicast, or unicast with --mac-mode unicast (default: derived from the VIP, see README)")
	macMode := fs.String("mac-mode", "", "how frames reach every node: multicast (the default: CLUSTERIP's), unicast (flooded as unknown unicast, through IGMP/MLD snooping) or igmp (a multicast MAC whose group every node joins)")
	total := fs.Int("total-nodes", 0, fmt.Sprintf("number of node numbers in the cluster, 1..%d (required)", nodeset.Max))
	local := fs.IntSlice("local-node", nil, "node number this node answers for; repeat for several (none: a standby that answers nothing until +N)")
	seed := fs.Uint32("hash-init", 0, "hash seed, the same on every node")
	compat := fs.String("hash-compat", "", `whose hash: clusterip (the iptables CLUSTERIP target's; the default for IPv4) or nftables (that of "jhash ip saddr . th sport . th dport mod N seed S offset 1", to share a VIP with nftables nodes; the only one for IPv6)`)
	owner := fs.String("control-owner", "", "give the cluster's control file to USER[:GROUP] (names or numbers; the group defaults to the user's), who may then read and write it as root does: for strongSwan's ha plugin")
	check := fs.String("check", "", "health check of the local service: tcp:PORT (on the VIP), http:URL or exec:COMMAND; while it fails the node hands its numbers to the others (needs --peers on the daemon)")
	interval := fs.Duration("check-interval", health.DefaultInterval, "time between health checks")
	timeout := fs.Duration("check-timeout", 0, "time a check may take (0: the interval)")
	fall := fs.Int("check-fall", health.DefaultFall, "consecutive failures that make the node unhealthy")
	rise := fs.Int("check-rise", health.DefaultRise, "consecutive successes that make it healthy again")
	return func() (Spec, error) {
		for _, name := range []string{"vip", "interface", "hashmode", "total-nodes"} {
			if !fs.Changed(name) {
				return Spec{}, fmt.Errorf("--%s is required", name)
			}
		}
		var s Spec
		var err error
		if s.VIP, err = netip.ParseAddr(*vip); err != nil {
			return Spec{}, fmt.Errorf("--vip %q: not an IP address", *vip)
		}
		s.Interface = *iface
		if s.Mode, err = hash.ParseMode(*mode); err != nil {
			return Spec{}, fmt.Errorf("--hashmode: %w", err)
		}
		if fs.Changed("mac-mode") {
			if s.MACMode, err = datapath.ParseMACMode(*macMode); err != nil {
				return Spec{}, fmt.Errorf("--mac-mode: %w", err)
			}
		}
		if fs.Changed("clustermac") {
			if s.ClusterMAC, err = net.ParseMAC(*mac); err != nil {
				return Spec{}, fmt.Errorf("--clustermac %q: not a MAC address", *mac)
			}
		} else if s.VIP.Is4() || s.VIP.Is6() && !s.VIP.Is4In6() {
			s.ClusterMAC = DefaultClusterMACFor(s.VIP, s.MACMode)
		}
		s.TotalNodes = *total
		if s.TotalNodes < 1 || s.TotalNodes > nodeset.Max {
			return Spec{}, fmt.Errorf("--total-nodes %d: out of range 1..%d", s.TotalNodes, nodeset.Max)
		}
		for _, n := range *local {
			if n < 1 || n > s.TotalNodes {
				return Spec{}, fmt.Errorf("--local-node %d: out of range 1..%d (--total-nodes)", n, s.TotalNodes)
			}
			s.LocalNodes = s.LocalNodes.Add(n)
		}
		s.HashInit = *seed
		switch {
		case fs.Changed("hash-compat"):
			if s.HashCompat, err = hash.ParseCompat(*compat); err != nil {
				return Spec{}, fmt.Errorf("--hash-compat: %w", err)
			}
		case s.VIP.Is6():
			s.HashCompat = hash.NFTables
		}
		if fs.Changed("control-owner") {
			if *owner == "" {
				return Spec{}, fmt.Errorf("--control-owner: empty; want USER[:GROUP]")
			}
			s.ControlOwner = *owner
		}
		if fs.Changed("check") {
			c, err := health.Parse(*check)
			if err != nil {
				return Spec{}, err
			}
			c.Interval, c.Timeout, c.Fall, c.Rise = *interval, *timeout, *fall, *rise
			s.Check = &c
		} else {
			for _, name := range []string{"check-interval", "check-timeout", "check-fall", "check-rise"} {
				if fs.Changed(name) {
					return Spec{}, fmt.Errorf("--%s needs --check", name)
				}
			}
		}
		return s, s.Validate()
	}
}

// Validate checks everything about a Spec that does not depend on the host.
func (s Spec) Validate() error {
	switch {
	case !s.VIP.IsValid() || s.VIP.Is4In6():
		return fmt.Errorf("--vip %s: not an IPv4 or IPv6 address (write an IPv4-mapped address as IPv4)", s.VIP)
	case s.VIP.Zone() != "" || s.VIP.Is6() && s.VIP.IsLinkLocalUnicast():
		return fmt.Errorf("--vip %s: link-local; a VIP must be reachable beyond its link", s.VIP)
	case s.VIP.IsUnspecified() || s.VIP.IsLoopback() || s.VIP.IsMulticast() || s.VIP == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("--vip %s: not a unicast address", s.VIP)
	case s.VIP.Is6() && s.HashCompat != hash.NFTables:
		return fmt.Errorf("--hash-compat %s: the CLUSTERIP hash has no IPv6; an IPv6 VIP hashes as nftables does (--hash-compat nftables)", s.HashCompat)
	case !validIfaceName(s.Interface):
		return fmt.Errorf("--interface %q: not an interface name", s.Interface)
	case s.MACMode > datapath.MACIGMP:
		return fmt.Errorf("--mac-mode %s: want multicast, unicast or igmp", s.MACMode)
	case len(s.ClusterMAC) != 6:
		return fmt.Errorf("--clustermac %s: not a 6-byte Ethernet address", s.ClusterMAC)
	case s.MACMode == datapath.MACUnicast && s.ClusterMAC[0]&1 != 0:
		return fmt.Errorf("--clustermac %s: multicast; with --mac-mode unicast the cluster MAC must be unicast (e.g. 02:bf:...)", s.ClusterMAC)
	case s.MACMode == datapath.MACUnicast && string(s.ClusterMAC) == string(make([]byte, 6)):
		return fmt.Errorf("--clustermac %s: the zero address", s.ClusterMAC)
	case s.MACMode != datapath.MACUnicast && s.ClusterMAC[0]&1 == 0:
		return fmt.Errorf("--clustermac %s: unicast; the cluster MAC must be multicast (e.g. 01:00:5e:...), or use --mac-mode unicast", s.ClusterMAC)
	case s.ClusterMAC.String() == "ff:ff:ff:ff:ff:ff":
		return fmt.Errorf("--clustermac %s: broadcast; the cluster MAC must be a multicast address", s.ClusterMAC)
	case s.MACMode == datapath.MACIGMP && !igmpMACOK(s):
		return fmt.Errorf("--clustermac %s: with --mac-mode igmp the cluster MAC must map a group: 01:00:5e:7f:X:Y (239.255.X.Y) for IPv4, 33:33:... (ff15::...) for IPv6", s.ClusterMAC)
	case s.TotalNodes < 1 || s.TotalNodes > nodeset.Max:
		return fmt.Errorf("--total-nodes %d: out of range 1..%d", s.TotalNodes, nodeset.Max)
	case s.ControlOwner != "" && !validOwner(s.ControlOwner):
		return fmt.Errorf("--control-owner %q: want USER[:GROUP], names or numbers", s.ControlOwner)
	}
	for _, n := range s.LocalNodes.Nodes() {
		if n > s.TotalNodes {
			return fmt.Errorf("--local-node %d: out of range 1..%d (--total-nodes)", n, s.TotalNodes)
		}
	}
	if s.Check != nil {
		if err := s.Check.Validate(); err != nil {
			return err
		}
	}
	return s.HashConfig().Validate()
}

// validOwner accepts USER or USER:GROUP whose parts are non-empty and have
// no white space, colon or control character: what a passwd name can be.
func validOwner(o string) bool {
	user, group, hasGroup := strings.Cut(o, ":")
	ok := func(s string) bool {
		return s != "" && len(s) <= 64 && !strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == ':' || r == 0x7f })
	}
	return ok(user) && (!hasGroup || ok(group))
}

func igmpMACOK(s Spec) bool {
	_, ok := datapath.IGMPGroup(s.ClusterMAC, s.VIP.Is6())
	return ok
}

// validIfaceName accepts what the kernel's dev_valid_name accepts: 1 to 15
// bytes, not "." or "..", no '/', ':', white space or NUL.
func validIfaceName(name string) bool {
	if name == "" || len(name) > 15 || name == "." || name == ".." {
		return false
	}
	for i := 0; i < len(name); i++ {
		switch name[i] {
		case '/', ':', ' ', '\t', '\n', '\v', '\f', '\r', 0:
			return false
		}
	}
	return true
}

// HashConfig is the hashing part of the Spec.
func (s Spec) HashConfig() hash.Config {
	return hash.Config{Mode: s.Mode, TotalNodes: uint32(s.TotalNodes), Seed: s.HashInit, Compat: s.HashCompat}
}

// Args renders the Spec as the flags of `new`, the inverse of ParseSpec.
func (s Spec) Args() []string {
	args := []string{
		"--vip", s.VIP.String(),
		"--interface", s.Interface,
		"--hashmode", s.Mode.String(),
		"--clustermac", s.ClusterMAC.String(),
		"--total-nodes", strconv.Itoa(s.TotalNodes),
	}
	for _, n := range s.LocalNodes.Nodes() {
		args = append(args, "--local-node", strconv.Itoa(n))
	}
	args = append(args, "--hash-init", strconv.FormatUint(uint64(s.HashInit), 10))
	if s.HashCompat != hash.CLUSTERIP && s.VIP.Is4() {
		// Only when not the family's default, so that a saved file stays
		// readable by releases without the flag whenever it can.
		args = append(args, "--hash-compat", s.HashCompat.String())
	}
	if s.MACMode != datapath.MACMulticast {
		args = append(args, "--mac-mode", s.MACMode.String())
	}
	if s.ControlOwner != "" {
		args = append(args, "--control-owner", s.ControlOwner)
	}
	if c := s.Check; c != nil {
		args = append(args, "--check", c.String(), "--check-interval", c.Interval.String(),
			"--check-timeout", c.Timeout.String(), "--check-fall", strconv.Itoa(c.Fall), "--check-rise", strconv.Itoa(c.Rise))
	}
	return args
}

// ParseSpec parses the flags of `new`.
func ParseSpec(args []string) (Spec, error) {
	fs := pflag.NewFlagSet("new", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	build := SpecFlags(fs)
	if err := fs.Parse(args); err != nil {
		return Spec{}, err
	}
	if fs.NArg() > 0 {
		return Spec{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return build()
}

// configHeader starts every saved config.
const configHeader = `# clusterip clusters: one "new" per line, with the flags of "clusterctl new".
# Load with: clusterctl daemon --config FILE
`

// FormatConfig renders specs in the config file format.
func FormatConfig(specs []Spec) string {
	var b strings.Builder
	b.WriteString(configHeader)
	for _, s := range specs {
		b.WriteString("new " + joinQuoted(s.Args()) + "\n")
	}
	return b.String()
}

// ParseConfig parses a config file: blank lines and lines starting with #
// are ignored, every other line is "new" followed by the flags of `clusterctl
// new`. Any bad line refuses the whole file, naming the line.
func ParseConfig(name string, r io.Reader) ([]Spec, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var specs []Spec
	seen := map[netip.Addr]int{}
	for i, line := range strings.Split(string(data), "\n") {
		lineErr := func(err error) error { return fmt.Errorf("%s:%d: %w", name, i+1, err) }
		fields, err := splitQuoted(line)
		if err != nil {
			return nil, lineErr(err)
		}
		if len(fields) == 0 {
			continue // blank, or only a comment
		}
		if fields[0] != "new" {
			return nil, lineErr(fmt.Errorf("expected \"new --vip ...\", got %q", fields[0]))
		}
		s, err := ParseSpec(fields[1:])
		if err != nil {
			return nil, lineErr(err)
		}
		if prev, dup := seen[s.VIP]; dup {
			return nil, lineErr(fmt.Errorf("VIP %s already declared on line %d", s.VIP, prev))
		}
		seen[s.VIP] = i + 1
		specs = append(specs, s)
	}
	return specs, nil
}

// joinQuoted joins args with spaces, quoting those that need it as a POSIX
// shell would, so a saved line can also be pasted after `clusterctl`: single
// quotes in general, and bash's $'...' for an argument holding control
// characters (a newline in an exec check) or bytes that are not UTF-8, which
// must stay on the line and come back byte for byte.
func joinQuoted(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		switch {
		case a != "" && !strings.ContainsAny(a, " \t'\"\\$`#;&|<>()*?[]{}~!") && !needsEscapes(a):
			out[i] = a
		case needsEscapes(a):
			out[i] = ansiQuote(a)
		default:
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(out, " ")
}

// needsEscapes tells whether s holds a byte that single quotes cannot carry
// through a line-based file: a control character, DEL, or invalid UTF-8.
func needsEscapes(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return !utf8.ValidString(s)
}

// ansiQuote renders s as $'...' with every byte that needs it escaped.
func ansiQuote(s string) string {
	var b strings.Builder
	b.WriteString("$'")
	valid := utf8.ValidString(s)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\r':
			b.WriteString(`\r`)
		case c == '\t':
			b.WriteString(`\t`)
		case c == '\\' || c == '\'':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c == 0x7f || (c >= 0x80 && !valid):
			fmt.Fprintf(&b, `\x%02x`, c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('\'')
	return b.String()
}

// splitQuoted splits a config line into words: whitespace separates,
// single quotes keep everything literally, double quotes too except for
// backslash escapes, $'...' decodes bash's ANSI-C escapes, and a backslash
// outside quotes escapes one character. A carriage return outside quotes is
// white space, so files with CRLF line ends read as intended. A # that
// starts a word outside quotes starts a comment, as in a shell.
func splitQuoted(line string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case ch == '#' && !inWord:
			i = len(line) // the rest of the line is a comment
		case ch == ' ' || ch == '\t' || ch == '\r':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case ch == '$' && i+1 < len(line) && line[i+1] == '\'':
			n, err := ansiUnquote(line[i+2:], &cur)
			if err != nil {
				return nil, err
			}
			i += 1 + n
			inWord = true
		case ch == '\'':
			j := strings.IndexByte(line[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("unterminated single quote")
			}
			cur.WriteString(line[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case ch == '"':
			i++
			for ; i < len(line) && line[i] != '"'; i++ {
				if line[i] == '\\' && i+1 < len(line) {
					i++
				}
				cur.WriteByte(line[i])
			}
			if i >= len(line) {
				return nil, errors.New("unterminated double quote")
			}
			inWord = true
		case ch == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
			inWord = true
		default:
			cur.WriteByte(ch)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// ansiUnquote decodes the body of $'...' from s (just past the opening
// quote) into b and returns how many bytes of s it used, the closing quote
// included. The escapes are bash's: \n \r \t \a \b \e \f \v \\ \' \" \?,
// \xHH (one or two hex digits) and \NNN (one to three octal digits); any
// other backslash stays as it is.
func ansiUnquote(s string, b *strings.Builder) (int, error) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\'' {
			return i + 1, nil
		}
		if c != '\\' || i+1 >= len(s) {
			b.WriteByte(c)
			continue
		}
		i++
		switch e := s[i]; e {
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'a':
			b.WriteByte('\a')
		case 'b':
			b.WriteByte('\b')
		case 'e', 'E':
			b.WriteByte(0x1b)
		case 'f':
			b.WriteByte('\f')
		case 'v':
			b.WriteByte('\v')
		case '\\', '\'', '"', '?':
			b.WriteByte(e)
		case 'x':
			v, n := 0, 0
			for ; n < 2 && i+1 < len(s) && isHex(s[i+1]); n++ {
				i++
				v = v*16 + hexVal(s[i])
			}
			if n == 0 {
				b.WriteString(`\x`)
				continue
			}
			b.WriteByte(byte(v))
		case '0', '1', '2', '3', '4', '5', '6', '7':
			v := int(e - '0')
			for n := 1; n < 3 && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '7'; n++ {
				i++
				v = v*8 + int(s[i]-'0')
			}
			b.WriteByte(byte(v))
		default:
			b.WriteByte('\\')
			b.WriteByte(e)
		}
	}
	return 0, errors.New("unterminated $' quote")
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func hexVal(c byte) int {
	switch {
	case c >= 'a':
		return int(c-'a') + 10
	case c >= 'A':
		return int(c-'A') + 10
	}
	return int(c - '0')
}
