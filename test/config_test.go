package test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clusterip/clusterip/internal/lab"
)

// Clusters built by hand survive a restart through save and --config; one
// daemon serves several VIPs.
func TestSaveAndConfigFile(t *testing.T) {
	c := newCluster(t, 1, "sourceip", false)
	n1 := c.Nodes[0]
	c.ctl(n1, "new", "--vip", "192.0.2.101", "--interface", "eth0", "--hashmode", "sourceip-sourceport-destport",
		"--clustermac", "01:00:5e:7f:00:01", "--total-nodes", "4", "--local-node", "2", "--local-node", "4", "--hash-init", "1234")
	if out, err := c.Run(n1, "bash", "-c", "echo +1 > "+filepath.Join(c.ControlDir(n1), "192.0.2.101")); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	saved := c.ctl(n1, "save")
	for _, want := range []string{
		"new --vip 192.0.2.100 --interface eth0 --hashmode sourceip --clustermac 01:00:5e:00:02:64 --total-nodes 1 --local-node 1 --hash-init 0",
		"new --vip 192.0.2.101 --interface eth0 --hashmode sourceip-sourceport-destport --clustermac 01:00:5e:7f:00:01 --total-nodes 4 --local-node 1 --local-node 2 --local-node 4 --hash-init 1234",
	} {
		if !strings.Contains(saved, want+"\n") {
			t.Errorf("save lacks %q:\n%s", want, saved)
		}
	}
	file := filepath.Join(c.Dir, "clusters.conf")
	if err := os.WriteFile(file, []byte(saved), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.daemons["n1"].Stop(syscall.SIGTERM, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartDaemon(n1, "--config", file); err != nil {
		t.Fatal(err)
	}
	if again := c.ctl(n1, "save"); again != saved {
		t.Errorf("after restart with --config, save differs:\n%s\nwant\n%s", again, saved)
	}
	if err := c.WaitServing(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The second VIP answers from the same daemon, for exactly the node
	// numbers held here (1, 2 and 4 of 4, with its own seed).
	served := 0
	for port := 43000; port < 43012; port++ {
		node := predict(t, "sourceip-sourceport-destport --hash-init 1234", 4, lab.ClientAddr.String(), port, 80)
		_, err := c.Run(c.Client, "curl", "-sS", "--max-time", "1", "--local-port", strconv.Itoa(port), "http://192.0.2.101/")
		if (err == nil) != (node != 3) {
			t.Errorf("second VIP, port %d (node %d): curl error %v", port, node, err)
		}
		if err == nil {
			served++
		}
	}
	if served == 0 {
		t.Errorf("second VIP served nothing")
	}
}
