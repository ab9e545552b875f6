package hash_test

import (
	"fmt"
	"log"
	"net/netip"

	"github.com/clusterip/clusterip/hash"
)

// This example finds which node of a four-node cluster answers an HTTP
// client, the way an iptables rule with
// "--hashmode sourceip-sourceport --total-nodes 4 --hash-init 0" would.
func Example() {
	mode, err := hash.ParseMode("sourceip-sourceport")
	if err != nil {
		log.Fatal(err)
	}

	c := hash.Config{Mode: mode, TotalNodes: 4, Seed: 0}
	if err := c.Validate(); err != nil {
		log.Fatal(err)
	}

	n, err := c.NodeForPorts(netip.MustParseAddr("192.168.1.1"), 80, 0)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("node:", n)

	// On the packet path the same answer comes from the source address as
	// an integer and the port as the kernel loads it: 80 is 0x5000.
	fmt.Println("node:", c.Node(0xc0a80101, 0x5000, 0))

	// Node n's share of the hash space, for compiling ownership into BPF.
	lo, hi := hash.Range(c.TotalNodes, uint32(n))
	fmt.Printf("hashes: %#08x-%#08x\n", lo, hi)

	// Output:
	// node: 1
	// node: 1
	// hashes: 0x00000000-0x3fffffff
}
