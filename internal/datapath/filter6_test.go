package datapath

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/nodeset"
)

// For an IPv6 VIP the filter passes neighbour solicitations for the VIP
// whatever their destination, packets to the VIP at the cluster MAC whose
// number is in pass (hashed in the kernel exactly as Owner.Node does), and
// every packet with extension headers or ICMPv6 to user space; nothing
// else.
func TestCaptureFilter6(t *testing.T) {
	const client, vip = "2001:db8:1::7", "2001:db8::10"
	rng := rand.New(rand.NewPCG(6, 1))
	sn, snMAC := SolicitedNode(testVIP6)
	for round := 0; round < 36; round++ {
		cfg := hash.Config{Mode: testModes[round%3], TotalNodes: uint32(1 + rng.IntN(64)), Seed: rng.Uint32(), Compat: hash.NFTables}
		pass := nodeset.NodeSet(rng.Uint64()) & (nodeset.NodeSet(1)<<cfg.TotalNodes - 1)
		vm := ownershipVM(t, testVIP6, testClusterMAC6, cfg, pass)
		o := Owner{Hash: cfg}
		run := func(frame []byte) bool {
			n, err := vm.Run(frame)
			if err != nil {
				t.Fatal(err)
			}
			return n > 0
		}
		for i := 0; i < 200; i++ {
			var src [16]byte
			for j := range src {
				src[j] = byte(rng.Uint32())
			}
			src[0] = 0x20
			sa := netip.AddrFrom16(src).String()
			proto, l4 := testL4(i%8, uint16(rng.Uint32()), uint16(rng.Uint32()), rng.Uint32())
			var exts []testExt
			if i%4 == 0 {
				exts = []testExt{extOpts(60, 0)}
			}
			ip := mkIPv6(sa, vip, exts, proto, l4)
			var p ipPacket
			if !parseIPv6(ip, &p) {
				t.Fatal("test packet does not parse")
			}
			want := exts != nil || proto == testAH || pass.Contains(o.Node(&p))
			frame := mkEther(testClusterMAC6, testClientMAC, etherTypeIPv6, ip)
			if got := run(frame); got != want {
				t.Fatalf("cfg %+v pass %s, proto %d from %s (ext %v): passed %v, want %v (node %d)", cfg, pass, proto, sa, exts != nil, got, want, o.Node(&p))
			}
			if run(mkEther(testNICMAC, testClientMAC, etherTypeIPv6, ip)) {
				t.Fatal("a frame to the NIC's own MAC reached user space")
			}
		}
		always := [][]byte{
			mkEther(snMAC, testClientMAC, etherTypeIPv6, mkIPv6(client, sn.String(), nil, protoICMPv6, mkNS(client, sn.String(), vip, nil))),
			mkEther(testNICMAC, testClientMAC, etherTypeIPv6, mkIPv6(client, vip, nil, protoICMPv6, mkNS(client, vip, vip, nil))),
			mkEther(testClusterMAC6, testClientMAC, etherTypeIPv6, mkIPv6(client, vip, nil, protoICMPv6, mkICMPv6(client, vip, 128, 0, 1, nil))),
			mkEther(testClusterMAC6, testClientMAC, etherTypeIPv6, mkIPv6(client, vip, []testExt{extFrag(9, false, 1)}, testUDP, []byte("later"))),
		}
		never := [][]byte{
			mkEther(snMAC, testClientMAC, etherTypeIPv6, mkIPv6(client, sn.String(), nil, protoICMPv6, mkNS(client, sn.String(), "2001:db8::11", nil))),
			mkEther(testClusterMAC6, testClientMAC, etherTypeIPv6, mkIPv6(client, "2001:db8::11", nil, testTCP, mkTCP(1, 2))),
			mkEther(testClusterMAC6, testClientMAC, etherTypeIPv4, mkIPv4(testIPHdr{src: "198.51.100.7", dst: "192.0.2.10", proto: testTCP}, mkTCP(1, 2))),
		}
		for _, f := range always {
			if !run(f) {
				t.Fatalf("cfg %+v: filtered out % x", cfg, f)
			}
		}
		for _, f := range never {
			if run(f) {
				t.Fatalf("cfg %+v: passed % x", cfg, f)
			}
		}
	}
}
