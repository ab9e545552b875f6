// Command clusterctl is the clusterip daemon and its control tool: a
// userspace replacement for the iptables CLUSTERIP target.
package main

import (
	"fmt"
	"os"

	"github.com/clusterip/clusterip/internal/cli"
)

func main() {
	if err := cli.Root().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "clusterctl:", err)
		os.Exit(1)
	}
}
