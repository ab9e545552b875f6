package test

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/clusterip/clusterip/internal/lab"
)

// The control file behaves as /proc/net/ipt_CLUSTERIP/<VIP> did for shell
// users: cat shows the nodes held, echo +N / -N change them, and a refused
// write makes echo fail with the kernel's errno and changes nothing.
func TestControlFileSemantics(t *testing.T) {
	c := newCluster(t, 1, "sourceip", false)
	n1 := c.Nodes[0]
	c.ctl(n1, "delete", lab.VIP.String())
	c.ctl(n1, "new", "--vip", lab.VIP.String(), "--interface", "eth0", "--hashmode", "sourceip",
		"--total-nodes", "3", "--local-node", "1")
	file := c.ControlFile(n1)

	st, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("control file mode %v uid %d, want 0600 root", st.Mode().Perm(), st.Sys().(*syscall.Stat_t).Uid)
	}
	read := func() string {
		t.Helper()
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	steps := []struct {
		shell   string // run as bash -c, with $F the control file
		wantErr string // bash's message for the errno; "" for success
		after   string
	}{
		{"cat $F", "", "1\n"},
		{"echo +2 > $F", "", "1,2\n"},
		{"echo +3 >> $F", "", "1,2,3\n"},
		{"echo +3 > $F", "Cannot allocate memory", "1,2,3\n"}, // already held: ENOMEM
		{"echo -2 > $F", "", "1,3\n"},
		{"echo -2 >> $F", "No such file or directory", "1,3\n"}, // not held: ENOENT
		{"echo +0 > $F", "Cannot allocate memory", "1,3\n"},     // out of range: ENOMEM
		{"echo +4 > $F", "Cannot allocate memory", "1,3\n"},
		{"echo 2 > $F", "Input/output error", "1,3\n"}, // no sign: EIO
		{"echo +x > $F", "Input/output error", "1,3\n"},
		{"echo +123456789012 > $F", "Input/output error", "1,3\n"}, // longer than the kernel took
		{"printf '' > $F", "", "1,3\n"},
		{"echo -1 > $F; echo -3 > $F", "", ""}, // none held: empty, as the kernel printed nothing
		{"echo +2 > $F", "", "2\n"},
	}
	for _, s := range steps {
		cmd := c.Command(n1, "bash", "-c", s.shell)
		cmd.Env = append(os.Environ(), "F="+file)
		out, err := cmd.CombinedOutput()
		switch {
		case s.wantErr == "" && err != nil:
			t.Errorf("%s: %v: %s", s.shell, err, out)
		case s.wantErr != "" && err == nil:
			t.Errorf("%s: succeeded, want %q", s.shell, s.wantErr)
		case s.wantErr != "" && !strings.Contains(string(out), s.wantErr):
			t.Errorf("%s: said %q, want %q", s.shell, out, s.wantErr)
		}
		if got := read(); got != s.after {
			t.Errorf("after %s: control file reads %q, want %q", s.shell, got, s.after)
		}
	}
	// The daemon's view agrees with the file.
	if out := c.ctl(n1, "save"); !strings.Contains(out, "--local-node 2 --hash-init") || strings.Contains(out, "--local-node 1") {
		t.Errorf("save after the writes does not show node 2 alone:\n%s", out)
	}
}

// After a node's daemon stops, its share of connections is lost until a
// survivor takes its number with +N; then every connection is served again,
// by the node the hash and the control files name, from the next packet on.
func TestTakeoverWithControlFile(t *testing.T) {
	c := newCluster(t, 3, "sourceip-sourceport", false)
	if err := c.daemons["n3"].Stop(syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	res, err := c.ProbeFrom(context.Background(), c.Client, 30, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	lost := 0
	for _, r := range res {
		if r.Err != nil {
			lost++
		}
	}
	if lost == 0 || lost == len(res) {
		t.Fatalf("with n3 stopped and no takeover, %d of %d connections failed; want only node 3's share", lost, len(res))
	}

	if out, err := c.Run(c.Nodes[0], "sh", "-c", "echo +3 > "+c.ControlFile(c.Nodes[0])); err != nil {
		t.Fatalf("echo +3: %v %s", err, out)
	}
	res, err = c.ProbeFrom(context.Background(), c.Client, 60, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	served := map[string]int{}
	for _, r := range res {
		if r.Err != nil {
			t.Fatalf("after +3 on n1, connection from port %d failed: %v", r.LocalPort, r.Err)
		}
		want := "n1"
		if node := predict(t, c.mode, 3, lab.ClientAddr.String(), r.LocalPort, 80); node == 2 {
			want = "n2"
		}
		if r.Node != want {
			t.Errorf("port %d served by %s, want %s", r.LocalPort, r.Node, want)
		}
		served[r.Node]++
	}
	if served["n1"] == 0 || served["n2"] == 0 {
		t.Errorf("served %v: want both survivors serving", served)
	}
}
