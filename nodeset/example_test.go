package nodeset_test

import (
	"errors"
	"fmt"
	"log"

	"github.com/clusterip/clusterip/nodeset"
)

// This example takes over node 3 of a three-node cluster, the way
// "echo +3 > /proc/net/ipt_CLUSTERIP/192.0.2.10" would, and shows what the
// control file then reads.
func Example() {
	held, err := nodeset.Parse("1,2")
	if err != nil {
		log.Fatal(err)
	}

	cmd, err := nodeset.ParseCommand([]byte("+3\n"))
	if err != nil {
		log.Fatal(err)
	}

	held, err = held.Apply(cmd, 3)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", held)

	// Taking over a node twice fails, as it does in the kernel.
	_, err = held.Apply(cmd, 3)
	fmt.Println(err, errors.Is(err, nodeset.ErrAlreadyHeld))

	// Output:
	// 1,2,3
	// node 3 already held true
}
