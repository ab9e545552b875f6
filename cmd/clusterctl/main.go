// Command clusterctl is the clusterip daemon and its control tool: a
// userspace replacement for the iptables CLUSTERIP target.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := rootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "clusterctl:", err)
		os.Exit(1)
	}
}
