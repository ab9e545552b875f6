package test

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// nftCase is one packet: a cluster's hash settings and the source and
// ports the kernel and clusterctl hash each place on a node.
type nftCase struct {
	mode         string
	total, seed  uint32
	dst, src     netip.Addr
	sport, dport uint16
}

// TestNFTablesHashMatchesKernel loads the rules Pacemaker's IPaddr2
// writes for an nftables cluster (jhash over saddr, saddr . th sport,
// saddr . th sport . th dport; IPv4 and IPv6) into a namespace on the
// running kernel, feeds them real frames with random sources and ports,
// reads the node each packet was given from its mark (SO_RCVMARK on a raw
// socket), and checks that `clusterctl hash --hash-compat nftables`
// names the same node for every one.
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
		nc.sport, nc.dport = uint16(rng.Uint32()), uint16(rng.Uint32())
		if nc.dst.Is4() {
			nc.src = randomUnicast4(rng)
		} else {
			nc.src = randomUnicast6(rng)
		}
		cases = append(cases, nc)
	}

	marks := kernelMarks(t, ns, cases)
	var failed int
	for i, nc := range cases {
		args := []string{"--hash-init", fmt.Sprint(nc.seed), "--hash-compat", "nftables"}
		want := int(marks[i])
		got := predict(t, nc.mode+" "+strings.Join(args, " "), int(nc.total), nc.src.String(), int(nc.sport), int(nc.dport))
		if got != want {
			t.Errorf("%s total %d seed %#x: %s ports %d,%d: kernel picked node %d, clusterctl hash says %d",
				nc.mode, nc.total, nc.seed, nc.src, nc.sport, nc.dport, want, got)
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
		fmt.Fprintf(&rules, "\t\t%s daddr %s meta l4proto udp meta mark set jhash %s saddr%s mod %d seed 0x%x offset 1\n",
			fam, c.dst, fam, exprs[c.mode], c.total, c.seed)
	}
	// The output chain drops everything: the UDP layer answers each
	// datagram with a port unreachable to its made-up source.
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

// kernelMarks sends one UDP datagram per case into ns, through a veth, and
// returns the mark the kernel's rules gave each, read back on raw sockets.
func kernelMarks(t *testing.T, ns string, cases []nftCase) []uint32 {
	t.Helper()
	var (
		inj        *packet.Conn
		dstMAC     net.HardwareAddr
		srcMAC     net.HardwareAddr
		raw4, raw6 int
	)
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
		if raw4, err = markSocket(unix.AF_INET); err != nil {
			return err
		}
		raw6, err = markSocket(unix.AF_INET6)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inj.Close(); unix.Close(raw4); unix.Close(raw6) })

	marks := make([]uint32, len(cases))
	buf := make([]byte, 2048)
	oob := make([]byte, 128)
	for i, c := range cases {
		var payload [4]byte
		binary.BigEndian.PutUint32(payload[:], uint32(i))
		frame, fd, skip := udpFrame(srcMAC, dstMAC, c, payload[:]), raw6, 8
		if c.dst.Is4() {
			fd, skip = raw4, 20+8
		}
		if _, err := inj.WriteTo(frame, &packet.Addr{HardwareAddr: dstMAC}); err != nil {
			t.Fatal(err)
		}
		for {
			n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, 0)
			if err != nil {
				t.Fatalf("case %d (%s from %s): no datagram delivered: %v", i, c.dst, c.src, err)
			}
			if n < skip+4 || binary.BigEndian.Uint32(buf[skip:]) != uint32(i) {
				continue // an earlier case's duplicate, or not ours
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

// markSocket is a raw UDP socket that reports each datagram's mark.
func markSocket(family int) (int, error) {
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
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

// udpFrame is an Ethernet frame carrying a UDP datagram for c, with valid
// checksums.
func udpFrame(src, dst net.HardwareAddr, c nftCase, payload []byte) []byte {
	udp := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], c.sport)
	binary.BigEndian.PutUint16(udp[2:], c.dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	udp = append(udp, payload...)

	var pseudo []byte
	pseudo = append(pseudo, c.src.AsSlice()...)
	pseudo = append(pseudo, c.dst.AsSlice()...)
	pseudo = append(pseudo, 0, 17)
	pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(len(udp)))
	sum := inetChecksum(append(pseudo, udp...))
	if sum == 0 {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], sum)

	frame := append(append([]byte{}, dst...), src...)
	if c.dst.Is4() {
		frame = binary.BigEndian.AppendUint16(frame, 0x0800)
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
		ip[8], ip[9] = 64, 17
		copy(ip[12:], c.src.AsSlice())
		copy(ip[16:], c.dst.AsSlice())
		binary.BigEndian.PutUint16(ip[10:], inetChecksum(ip))
		frame = append(frame, ip...)
	} else {
		frame = binary.BigEndian.AppendUint16(frame, 0x86dd)
		ip := make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(len(udp)))
		ip[6], ip[7] = 17, 64
		copy(ip[8:], c.src.AsSlice())
		copy(ip[24:], c.dst.AsSlice())
		frame = append(frame, ip...)
	}
	return append(frame, udp...)
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
