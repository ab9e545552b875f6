package test

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A service started in a mount namespace of its own (ip netns exec,
// systemd's PrivateTmp=) holds a copy of the control-file mount. The daemon
// still stops in well under a second, and the copy fails with an error
// instead of hanging.
func TestStopWithControlMountCopied(t *testing.T) {
	c := newCluster(t, 1, "sourceip", false)
	n1 := c.Nodes[0]
	// A private copy of the host's mounts, the control files included.
	holder := exec.Command("unshare", "--mount", "--propagation", "private", "sleep", "60")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	mntns := "/proc/" + strconv.Itoa(holder.Process.Pid) + "/ns/mnt"
	eventually(t, 5*time.Second, "the copy shows the control file", func() (bool, string) {
		out, err := exec.Command("nsenter", "--mount="+mntns, "cat", c.ControlFile(n1)).CombinedOutput()
		return err == nil && strings.TrimSpace(string(out)) == "1", string(out)
	})
	began := time.Now()
	if err := c.daemons["n1"].Stop(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took > time.Second {
		t.Errorf("SIGTERM took %s with a copy of the control mount in another namespace, want under 1s", took.Round(time.Millisecond))
	}
	out, err := exec.Command("nsenter", "--mount="+mntns, "timeout", "5", "cat", c.ControlFile(n1)).CombinedOutput()
	if err == nil || strings.Contains(string(out), "Terminated") {
		t.Errorf("control file in the copy after the daemon stopped: %v %q, want an error at once", err, out)
	}
	if _, err := os.Stat(c.ControlFile(n1)); err == nil {
		t.Errorf("control file still there after the daemon stopped")
	}
}
