package test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/internal/daemon"
	"github.com/clusterip/clusterip/internal/lab"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// nftCase is one packet: a cluster's hash settings and the source and
// ports the kernel and clusterctl hash each place on a node. proto and l4
// are the packet's protocol and transport bytes; sport and dport are what
// "th sport" and "th dport" read from them.
type nftCase struct {
	mode         string
	total, seed  uint32
	dst, src     netip.Addr
	sport, dport uint16
	proto        uint8
	l4           []byte
	raw          uint8 // the raw socket's protocol that receives it
}

// TestNFTablesHashMatchesKernel loads the rules Pacemaker's IPaddr2
// writes for an nftables cluster (jhash over saddr, saddr . th sport,
// saddr . th sport . th dport; IPv4 and IPv6) into a namespace on the
// running kernel, feeds them real frames with random sources and ports,
// reads the node each packet was given from its mark (SO_RCVMARK on a raw
// socket), and checks that `clusterctl hash --hash-compat nftables`
// names the same node for every one. Besides UDP the packets are ICMP
// echoes, GRE, ESP and AH, whose "ports" are whatever four bytes start
// the transport header (AH's own, also when an IPv6 AH carries UDP), which
// the daemon's datapath must read exactly as the kernel does.
func TestNFTablesHashMatchesKernel(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	// Four clusters per family and mode, each its own destination address
	// with its own size and seed, so one rule set covers many settings.
	rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), 0x6e6674))
	var clusters []nftCase
	for _, v6 := range []bool{false, true} {
		for mi, mode := range []string{"sourceip", "sourceip-sourceport", "sourceip-sourceport-destport"} {
			for k := range 4 {
				c := nftCase{mode: mode, total: uint32(rng.IntN(64) + 1), seed: rng.Uint32()}
				if k == 0 {
					c.seed = 0
				}
				c.dst = netip.AddrFrom4([4]byte{10, 99, byte(mi), byte(k + 1)})
				if v6 {
					c.dst = netip.MustParseAddr(fmt.Sprintf("fd00:99::%d:%d", mi, k+1))
				}
				clusters = append(clusters, c)
			}
		}
	}
	ns := nftKernel(t, clusters)

	var cases []nftCase
	for i := range 1200 {
		nc := clusters[(i/200)*4+i%4] // 200 packets per family and mode
		if nc.dst.Is4() {
			nc.src = randomUnicast4(rng)
		} else {
			nc.src = randomUnicast6(rng)
		}
		nc.transport(i, rng)
		cases = append(cases, nc)
	}

	marks := kernelMarks(t, ns, cases)
	var failed int
	for i, nc := range cases {
		args := []string{"--hash-init", fmt.Sprint(nc.seed), "--hash-compat", "nftables"}
		want := int(marks[i])
		got := predict(t, nc.mode+" "+strings.Join(args, " "), int(nc.total), nc.src.String(), int(nc.sport), int(nc.dport))
		if got != want {
			t.Errorf("%s total %d seed %#x: protocol %d from %s, ports %d,%d: kernel picked node %d, clusterctl hash says %d",
				nc.mode, nc.total, nc.seed, nc.proto, nc.src, nc.sport, nc.dport, want, got)
			if failed++; failed == 10 {
				t.Fatal("too many mismatches")
			}
		}
	}
}

// nftKernel makes a namespace with a veth pair, inj and rcv, and for each
// cluster puts c.dst on rcv and a rule in prerouting that marks UDP to it
// with the node nftables' jhash picks, as IPaddr2 writes the rule.
func nftKernel(t *testing.T, clusters []nftCase) (ns string) {
	t.Helper()
	nft, err := exec.LookPath("nft")
	if err != nil {
		t.Fatal("nft not found: make deps installs nftables")
	}
	b := make([]byte, 3)
	rand.Read(b)
	ns = "ciptnft" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	sh := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
		}
	}
	sh("ip", "link", "add", "inj", "type", "veth", "peer", "name", "rcv")
	sh("sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
	sh("ip", "link", "set", "inj", "up")
	sh("ip", "link", "set", "rcv", "up")

	exprs := map[string]string{
		"sourceip":                     "",
		"sourceip-sourceport":          " . th sport",
		"sourceip-sourceport-destport": " . th sport . th dport",
	}
	var rules strings.Builder
	for _, c := range clusters {
		fam := "ip"
		if c.dst.Is4() {
			sh("ip", "addr", "add", c.dst.String()+"/32", "dev", "rcv")
		} else {
			fam = "ip6"
			sh("ip", "addr", "add", c.dst.String()+"/128", "dev", "rcv", "nodad")
		}
		fmt.Fprintf(&rules, "\t\t%s daddr %s meta mark set jhash %s saddr%s mod %d seed 0x%x offset 1\n",
			fam, c.dst, fam, exprs[c.mode], c.total, c.seed)
	}
	// The output chain drops everything: the stack answers packets to
	// their made-up sources (port and protocol unreachables, echo replies).
	ruleset := fmt.Sprintf(`table inet ciptest {
	chain pre {
		type filter hook prerouting priority -300; policy accept;
%s	}
	chain out {
		type filter hook output priority 0; policy drop;
	}
}
`, rules.String())
	load := exec.Command("ip", "netns", "exec", ns, nft, "-f", "-")
	load.Stdin = strings.NewReader(ruleset)
	if out, err := load.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v: %s\n%s", err, out, ruleset)
	}
	return ns
}

// randomUnicast4 is a random source the IPv4 input path accepts: not in
// 0/8, 127/8 or 224/3, and not the test's own 10.99/16.
func randomUnicast4(rng *mrand.Rand) netip.Addr {
	for {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], rng.Uint32())
		if a[0] != 0 && a[0] != 127 && a[0] < 224 && !(a[0] == 10 && a[1] == 99) {
			return netip.AddrFrom4(a)
		}
	}
}

// randomUnicast6 is a random global unicast source (2000::/3).
func randomUnicast6(rng *mrand.Rand) netip.Addr {
	var a [16]byte
	binary.BigEndian.PutUint64(a[:], rng.Uint64())
	binary.BigEndian.PutUint64(a[8:], rng.Uint64())
	a[0] = 0x20 | a[0]&0x1f
	return netip.AddrFrom16(a)
}

// Protocols of the test packets.
const (
	ipprotoICMP   = 1
	ipprotoUDP    = 17
	ipprotoGRE    = 47
	ipprotoESP    = 50
	ipprotoAH     = 51
	ipprotoICMPv6 = 58
)

// transport fills in c's protocol and transport bytes, the i-th packet of
// the test, which it carries at its end so that its raw socket can tell
// it from another.
func (c *nftCase) transport(i int, rng *mrand.Rand) {
	idx := binary.BigEndian.AppendUint32(nil, uint32(i))
	v6 := c.dst.Is6()
	switch i % 5 {
	case 0, 1:
		c.proto = ipprotoUDP
		c.l4 = make([]byte, 8)
		binary.BigEndian.PutUint16(c.l4[0:], uint16(rng.Uint32()))
		binary.BigEndian.PutUint16(c.l4[2:], uint16(rng.Uint32()))
		binary.BigEndian.PutUint16(c.l4[4:], 12)
		c.l4 = append(c.l4, idx...)
		c.l4 = c.withChecksum(c.l4, 6, true)
	case 2:
		c.proto = ipprotoICMP
		typ := byte(8) // echo request
		if v6 {
			c.proto, typ = ipprotoICMPv6, 128
		}
		c.l4 = append([]byte{typ, 0, 0, 0, byte(rng.Uint32()), byte(rng.Uint32()), 0, 1}, idx...)
		c.l4 = c.withChecksum(c.l4, 2, v6)
	case 3:
		c.proto = ipprotoGRE
		c.l4 = append(binary.BigEndian.AppendUint32(nil, rng.Uint32()&0x0000ffff), idx...)
	case 4:
		if rng.IntN(2) == 0 {
			c.proto = ipprotoESP
			c.l4 = append(binary.BigEndian.AppendUint32(nil, rng.Uint32()), 0, 0, 0, 1)
			c.l4 = append(c.l4, idx...)
			break
		}
		// AH (RFC 4302): next header, length in words minus 2, reserved,
		// SPI, sequence, 12-byte ICV; then a UDP header, unless nothing.
		c.proto = ipprotoAH
		ah := []byte{59, 4, 0, 0}
		ah = binary.BigEndian.AppendUint32(ah, rng.Uint32())
		ah = append(ah, make([]byte, 16)...)
		if v6 {
			ah[0] = ipprotoUDP
			udp := make([]byte, 8)
			binary.BigEndian.PutUint16(udp[0:], uint16(rng.Uint32()))
			binary.BigEndian.PutUint16(udp[2:], uint16(rng.Uint32()))
			binary.BigEndian.PutUint16(udp[4:], 12)
			ah = append(ah, udp...)
		}
		c.l4 = append(ah, idx...)
	}
	c.raw = c.proto
	// What "th" reads: the first header that is not an IPv6 extension
	// header, AH counting as one that ends the walk
	// (nft_set_pktinfo_ipv6 passes IP6_FH_F_AUTH to ipv6_find_hdr).
	c.sport, c.dport = binary.BigEndian.Uint16(c.l4[0:]), binary.BigEndian.Uint16(c.l4[2:])
}

// withChecksum returns l4 with its Internet checksum at off: over the
// pseudo-header too when pseudo is set (UDP, ICMPv6), as a checksum
// verifying stack needs it.
func (c *nftCase) withChecksum(l4 []byte, off int, pseudo bool) []byte {
	var sum []byte
	if pseudo {
		sum = append(sum, c.src.AsSlice()...)
		sum = append(sum, c.dst.AsSlice()...)
		sum = append(sum, 0, c.proto)
		sum = binary.BigEndian.AppendUint16(sum, uint16(len(l4)))
	}
	v := inetChecksum(append(sum, l4...))
	if v == 0 && c.proto == ipprotoUDP {
		v = 0xffff
	}
	binary.BigEndian.PutUint16(l4[off:], v)
	return l4
}

// kernelMarks sends one packet per case into ns, through a veth, and
// returns the mark the kernel's rules gave each, read back on raw sockets.
func kernelMarks(t *testing.T, ns string, cases []nftCase) []uint32 {
	t.Helper()
	var (
		inj    *packet.Conn
		dstMAC net.HardwareAddr
		srcMAC net.HardwareAddr
	)
	type sockKey struct {
		v6    bool
		proto uint8
	}
	socks := map[sockKey]int{}
	t.Cleanup(func() {
		for _, fd := range socks {
			unix.Close(fd)
		}
	})
	err := inNetns(ns, func() error {
		in, err := net.InterfaceByName("inj")
		if err != nil {
			return err
		}
		rcv, err := net.InterfaceByName("rcv")
		if err != nil {
			return err
		}
		srcMAC, dstMAC = in.HardwareAddr, rcv.HardwareAddr
		if inj, err = packet.Listen(in, packet.Raw, 0x88b5, nil); err != nil {
			return err
		}
		for _, c := range cases {
			k := sockKey{c.dst.Is6(), c.raw}
			if _, ok := socks[k]; ok {
				continue
			}
			family := unix.AF_INET
			if k.v6 {
				family = unix.AF_INET6
			}
			fd, err := markSocket(family, int(k.proto))
			if err != nil {
				return err
			}
			socks[k] = fd
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inj.Close() })

	marks := make([]uint32, len(cases))
	buf := make([]byte, 2048)
	oob := make([]byte, 128)
	for i, c := range cases {
		if _, err := inj.WriteTo(ipFrame(srcMAC, dstMAC, c), &packet.Addr{HardwareAddr: dstMAC}); err != nil {
			t.Fatal(err)
		}
		fd := socks[sockKey{c.dst.Is6(), c.raw}]
		for {
			n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, 0)
			if err != nil {
				t.Fatalf("case %d (protocol %d, %s from %s): not delivered: %v", i, c.proto, c.dst, c.src, err)
			}
			if n < 4 || binary.BigEndian.Uint32(buf[n-4:n]) != uint32(i) {
				continue // an earlier case's, or not ours
			}
			mark, ok := rcvMark(oob[:oobn])
			if !ok {
				t.Fatalf("case %d: no SO_MARK control message", i)
			}
			marks[i] = mark
			break
		}
	}
	return marks
}

// markSocket is a raw socket for proto that reports each packet's mark.
func markSocket(family, proto int) (int, error) {
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, fmt.Errorf("raw socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVMARK, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("SO_RCVMARK (kernel 5.19 or later): %w", err)
	}
	tv := unix.Timeval{Sec: 2}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func rcvMark(oob []byte) (uint32, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SO_MARK && len(m.Data) >= 4 {
			return binary.NativeEndian.Uint32(m.Data), true
		}
	}
	return 0, false
}

// ipFrame is an Ethernet frame carrying c's packet.
func ipFrame(src, dst net.HardwareAddr, c nftCase) []byte {
	frame := append(append([]byte{}, dst...), src...)
	if c.dst.Is4() {
		frame = binary.BigEndian.AppendUint16(frame, 0x0800)
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(c.l4)))
		ip[8], ip[9] = 64, c.proto
		copy(ip[12:], c.src.AsSlice())
		copy(ip[16:], c.dst.AsSlice())
		binary.BigEndian.PutUint16(ip[10:], inetChecksum(ip))
		frame = append(frame, ip...)
	} else {
		frame = binary.BigEndian.AppendUint16(frame, 0x86dd)
		ip := make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(len(c.l4)))
		ip[6], ip[7] = c.proto, 64
		copy(ip[8:], c.src.AsSlice())
		copy(ip[24:], c.dst.AsSlice())
		frame = append(frame, ip...)
	}
	return append(frame, c.l4...)
}

// inetChecksum is the Internet checksum (RFC 1071) of b.
func inetChecksum(b []byte) uint16 {
	var s uint32
	for len(b) >= 2 {
		s += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// TestMixedClusterWithNFTablesNode is a rolling migration's middle: node 1
// runs the kernel's nftables recipe (as Pacemaker's IPaddr2 writes it),
// nodes 2 and 3 run the daemon with --hash-compat nftables. Every TCP
// connection is answered by the node the hash names, every UDP datagram
// gets exactly one reply, from that node, and every ping exactly one reply:
// ICMP too is hashed the nftables way, on the first four bytes of its
// header.
func TestMixedClusterWithNFTablesNode(t *testing.T) {
	for _, tc := range []struct {
		mode, datapath string
		seed           uint32
	}{
		{"sourceip-sourceport", "auto", 0x5eed},
		{"sourceip-sourceport-destport", "user", 7},
	} {
		t.Run(tc.mode+"/"+tc.datapath, func(t *testing.T) {
			l := newLab(t, 3, false)
			m, err := hash.ParseMode(tc.mode)
			if err != nil {
				t.Fatal(err)
			}
			mac := daemon.DefaultClusterMAC(lab.VIP)
			if err := l.NFTablesNode(l.Nodes[0], lab.VIP, mac, hash.Config{Mode: m, TotalNodes: 3, Seed: tc.seed}, 1); err != nil {
				t.Fatal(err)
			}
			for i, h := range l.Nodes[1:] {
				if _, err := l.StartDaemon(h, "--datapath", tc.datapath); err != nil {
					t.Fatal(err)
				}
				if out, err := l.Clusterctl(h, "new", "--vip", lab.VIP.String(), "--interface", "eth0", "--hashmode", tc.mode,
					"--total-nodes", "3", "--local-node", strconv.Itoa(i+2), "--hash-init", fmt.Sprint(tc.seed), "--hash-compat", "nftables"); err != nil {
					t.Fatalf("new: %v: %s", err, out)
				}
			}
			for _, h := range l.Nodes {
				if _, err := l.StartServer(h, "--tcp", ":80", "--udp", ":7"); err != nil {
					t.Fatal(err)
				}
			}
			for _, h := range l.Nodes {
				if err := l.WaitListening(h, 7); err != nil {
					t.Fatal(err)
				}
			}
			if err := l.WaitServing(context.Background()); err != nil {
				t.Fatal(err)
			}
			mode := fmt.Sprintf("%s --hash-init %d --hash-compat nftables", tc.mode, tc.seed)

			seen := map[string]int{}
			for port := 40200; port < 40230; port++ {
				want := fmt.Sprintf("n%d", predict(t, mode, 3, lab.ClientAddr.String(), port, 80))
				out, err := l.Run(l.Client, "curl", "-sS", "--max-time", "5", "--local-port", strconv.Itoa(port), "http://"+lab.VIP.String()+"/")
				if err != nil {
					t.Fatalf("connection from port %d (hash names %s): %v", port, want, err)
				}
				got := strings.TrimSpace(out)
				if got != want {
					t.Errorf("connection from port %d served by %q, hash names %s", port, got, want)
				}
				seen[got]++
			}
			if len(seen) != 3 {
				t.Errorf("30 connections reached only %v; they should spread over all 3 nodes", seen)
			}

			base := 41300
			for i, got := range udpExchange(t, l, base, 20, 64) {
				want := fmt.Sprintf("n%d 64", predict(t, mode, 3, lab.ClientAddr.String(), base+i, 7))
				if len(got) != 1 || got[0] != want {
					t.Errorf("datagram from port %d: replies %q, want exactly [%q]", base+i, got, want)
				}
			}

			out, err := l.Run(l.Client, "ping", "-c", "10", "-i", "0.2", "-W", "2", lab.VIP.String())
			if err != nil {
				t.Fatalf("ping: %v\n%s", err, out)
			}
			if s := pingSummary.FindStringSubmatch(out); s == nil || s[1] != "10" || s[2] != "10" || strings.Contains(out, "DUP!") {
				t.Errorf("ping: want 10 replies, one each:\n%s", out)
			}
		})
	}
}
