package procfs_test

import (
	"fmt"
	"log"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/clusterip/clusterip/procfs"
)

// nodes is a File holding a set of node numbers, driven like a CLUSTERIP
// proc file: "+N" adds node N, "-N" removes it.
type nodes struct {
	mu  sync.Mutex
	set map[int]bool
}

func (n *nodes) Contents() []byte {
	n.mu.Lock()
	defer n.mu.Unlock()
	var s []string
	for i := 1; i <= 16; i++ {
		if n.set[i] {
			s = append(s, strconv.Itoa(i))
		}
	}
	return []byte(strings.Join(s, ",") + "\n")
}

func (n *nodes) Write(data []byte) error {
	cmd := strings.TrimSpace(string(data))
	if len(cmd) < 2 {
		return syscall.EINVAL
	}
	i, err := strconv.Atoi(cmd[1:])
	if err != nil || i < 1 || i > 16 {
		return syscall.EINVAL
	}

	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case cmd[0] == '+' && !n.set[i]:
		n.set[i] = true
	case cmd[0] == '-' && n.set[i]:
		delete(n.set, i)
	default:
		// The proc file's answer to adding a present or removing an
		// absent node.
		return syscall.ENOENT
	}
	return nil
}

// This example serves one control file per virtual IP, which shell users
// read with cat and change with echo.
func ExampleMount() {
	d, err := procfs.Mount("/run/clusterip")
	if err != nil {
		log.Fatalf("failed to mount: %v", err)
	}
	defer d.Close()

	vip := &nodes{set: map[int]bool{1: true, 2: true}}
	if err := d.Add("10.0.0.100", vip); err != nil {
		log.Fatalf("failed to add: %v", err)
	}

	// $ cat /run/clusterip/10.0.0.100
	// 1,2
	// $ echo +3 > /run/clusterip/10.0.0.100
	// $ echo +3 > /run/clusterip/10.0.0.100
	// sh: 1: echo: echo: I/O error
	fmt.Println("serving", d.Path())
}
