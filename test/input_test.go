package test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clusterip/clusterip/internal/daemon"
	"github.com/clusterip/clusterip/internal/lab"
)

// status is h's clusters, as `status --json` prints them.
func status(t *testing.T, c *cluster, h *lab.Host) []daemon.ClusterStatus {
	t.Helper()
	var st daemon.Status
	if err := json.Unmarshal([]byte(c.ctl(h, "status", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	return st.Clusters
}

// Every bad command is refused with one line on stderr naming what is wrong
// and a non-zero exit, and the daemon's state does not change.
func TestBadCommandsRefused(t *testing.T) {
	c := newCluster(t, 1, "sourceip", false)
	n1 := c.Nodes[0]
	before := status(t, c, n1)
	vip := lab.VIP.String()
	ok := []string{"--vip", "192.0.2.50", "--interface", "eth0", "--hashmode", "sourceip", "--total-nodes", "2", "--local-node", "1"}
	with := func(flag, value string) []string {
		args := append([]string{"new"}, ok...)
		for i := range args {
			if args[i] == flag {
				args[i+1] = value
			}
		}
		return args
	}
	cases := []struct {
		args []string
		want string // part of the one-line error
	}{
		{append(with("--vip", "192.0.2.50"), "--clustermac", "02:00:00:00:00:01"), "unicast"},
		{append(with("--vip", "192.0.2.50"), "--clustermac", "01:00:5e:zz:00:01"), "not a MAC"},
		{append(with("--vip", "192.0.2.50"), "--clustermac", "ff:ff:ff:ff:ff:ff"), "broadcast"},
		{with("--total-nodes", "0"), "--total-nodes 0"},
		{with("--total-nodes", "65"), "--total-nodes 65"},
		{with("--local-node", "3"), "--local-node 3"},
		{with("--local-node", "0"), "--local-node 0"},
		{with("--interface", "nosuch0"), "nosuch0"},
		{with("--interface", "lo"), "not an Ethernet"},
		{with("--hashmode", "roundrobin"), "roundrobin"},
		{with("--vip", "fe80::1"), "link-local"},
		{append(with("--vip", "2001:db8::1"), "--hash-compat", "clusterip"), "no IPv6"},
		{with("--vip", "::ffff:192.0.2.50"), "IPv4-mapped"},
		{with("--vip", "224.0.0.5"), "unicast"},
		{with("--vip", "banana"), "banana"},
		{with("--vip", vip), "already exists"},
		{with("--vip", n1.Addr.String()), "already an address"},
		{[]string{"new", "--vip", "192.0.2.50"}, "required"},
		{[]string{"delete", "192.0.2.77"}, "no such cluster"},
		{[]string{"delete", "nonsense"}, "nonsense"},
		{[]string{"status", "extra"}, "unknown command"},
		{[]string{"hash", "--hashmode", "sourceip", "--total-nodes", "3", "10.0.0.300"}, "10.0.0.300"},
		{[]string{"hash", "--hashmode", "sourceip", "--total-nodes", "99", "10.0.0.1"}, "99"},
		{[]string{"hash", "--hashmode", "sourceip-sourceport", "--total-nodes", "3", "10.0.0.1", "70000"}, "70000"},
		{[]string{"status", "--socket", filepath.Join(c.Dir, "nobody.sock")}, "no daemon listening"},
		{[]string{"resume", vip}, "resume needs a daemon with --peers"},
		{[]string{"drain", vip}, "drain needs a daemon with --peers"},
		{[]string{"hash", "--hashmode", "sourceip-sourceport", "--total-nodes", "3", "10.0.0.1"}, "give SRC_PORT"},
		{[]string{"hash", "--hashmode", "sourceip-sourceport-destport", "--total-nodes", "3", "10.0.0.1", "80"}, "give SRC_PORT and DST_PORT"},
		{[]string{"hash", "--hashmode", "sourceip", "--total-nodes", "3", "--hash-compat", "clusterip", "2001:db8::1"}, "only the nftables hash covers"},
		{[]string{"hash", "--hashmode", "sourceip", "--total-nodes", "3", "--hash-compat", "nft", "10.0.0.1"}, `unknown hash compatibility "nft"`},
		{[]string{"hash", "--hashmode", "sourceip", "--total-nodes", "3", "::ffff:10.0.0.1"}, "::ffff:10.0.0.1"},
		{[]string{"hash", "--socket", "/x", "--hashmode", "sourceip", "--total-nodes", "3", "10.0.0.1"}, "unknown flag: --socket"},
		{[]string{"status", "-o", "tall"}, "-o \"tall\": want wide"},
		{[]string{"reload"}, "without --config"},
		{[]string{"daemon", "--log-format", "xml"}, "--log-format \"xml\""},
	}
	for _, tc := range cases {
		out, err := c.Clusterctl(n1, tc.args...)
		if err == nil {
			t.Errorf("clusterctl %s: succeeded, want refusal", strings.Join(tc.args, " "))
			continue
		}
		msg := strings.TrimSpace(out)
		if strings.Count(msg, "\n") != 0 || !strings.Contains(msg, tc.want) || !strings.HasPrefix(msg, "clusterctl: ") {
			t.Errorf("clusterctl %s: said %q, want one line mentioning %q", strings.Join(tc.args, " "), msg, tc.want)
		}
	}
	// Flags a command does not use are not shown on it.
	if out, _ := c.Clusterctl(n1, "hash", "--help"); strings.Contains(out, "--socket") {
		t.Errorf("hash --help shows --socket:\n%s", out)
	}
	after := status(t, c, n1)
	if len(after) != len(before) || fmt.Sprint(after[0].LocalNodes, after[0].TotalNodes) != fmt.Sprint(before[0].LocalNodes, before[0].TotalNodes) {
		t.Errorf("refused commands changed the daemon:\nbefore %v\nafter  %v", before, after)
	}
}

// A bad config file is refused whole, naming the line, before the daemon
// changes anything on the host.
func TestBadConfigRefused(t *testing.T) {
	l := newLab(t, 1, false)
	h := l.Nodes[0]
	before := readHost(t, l, h)
	good := "new --vip 192.0.2.100 --interface eth0 --hashmode sourceip --total-nodes 2 --local-node 1\n"
	for _, tc := range []struct{ text, want string }{
		{good + "new --vip 192.0.2.101 --interface eth0 --hashmode sourceip --total-nodes 2 --local-node 7\n", ":2: --local-node 7"},
		{"# comment\n\n" + good + good, ":4: VIP 192.0.2.100 already declared on line 3"},
		{good + "add --vip 192.0.2.102\n", ":2: expected \"new"},
		{good + "new --vip 192.0.2.103 --interface eth9 --hashmode sourceip --total-nodes 2\n", "eth9"},
	} {
		file := filepath.Join(l.Dir, "bad.conf")
		if err := os.WriteFile(file, []byte(tc.text), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := l.Run(h, clusterctl, "daemon", "--config", file, "--socket", l.Socket(h), "--control-dir", l.ControlDir(h))
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("config %q: err %v, said %q, want mention of %q", tc.text, err, out, tc.want)
		}
		if after := readHost(t, l, h); !after.equal(before) {
			t.Errorf("refused config changed the host: %+v", after)
		}
	}
}

// Truncated and malformed frames sent to the cluster MAC are counted and
// dropped; the daemon keeps running and serving. User space's parser is
// checked with --datapath user; with the kernel path, the kernel's own
// checks judge the whole frames it takes.
func TestMalformedFramesDropped(t *testing.T) {
	for _, dp := range []string{"user", "auto"} {
		t.Run(dp, func(t *testing.T) { testMalformedFrames(t, dp) })
	}
}

func testMalformedFrames(t *testing.T, datapath string) {
	c := newCluster(t, 1, "sourceip-sourceport", false, "--datapath", datapath)
	n1 := c.Nodes[0]
	raw := c.rawSender()
	vip := lab.VIP.As4()
	ipFrame := func(mutate func(ip []byte) []byte) []byte {
		ip := make([]byte, 20+8)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:4], 28)
		ip[8], ip[9] = 64, 17
		copy(ip[12:16], lab.ClientAddr.AsSlice())
		copy(ip[16:20], vip[:])
		return raw.frame(mutate(ip))
	}
	frames := [][]byte{
		ipFrame(func(ip []byte) []byte { return ip[:20] }),                                                   // ports missing
		ipFrame(func(ip []byte) []byte { binary.BigEndian.PutUint16(ip[2:4], 9000); return ip }),             // total length past the frame
		ipFrame(func(ip []byte) []byte { ip[0] = 0x43; return ip }),                                          // header length 12
		ipFrame(func(ip []byte) []byte { ip[0] = 0x4f; return ip }),                                          // header length 60 > frame
		ipFrame(func(ip []byte) []byte { ip[0] = 0x65; return ip }),                                          // version 6
		ipFrame(func(ip []byte) []byte { ip[9] = 1; ip[20] = 3; return ip }),                                 // ICMP error, inner header cut
		ipFrame(func(ip []byte) []byte { binary.BigEndian.PutUint16(ip[6:8], 0x0010); return ip }),           // orphan later fragment
		ipFrame(func(ip []byte) []byte { binary.BigEndian.PutUint16(ip[2:4], 0); return ip }),                // total length 0
		append(ipFrame(func(ip []byte) []byte { return ip }), make([]byte, 1400)...),                         // trailing junk
		ipFrame(func(ip []byte) []byte { ip[0] = 0x46; binary.BigEndian.PutUint16(ip[2:4], 24); return ip }), // options, no L4
	}
	before := status(t, c, n1)[0].Packets
	for round := 0; round < 20; round++ {
		for _, f := range frames {
			if err := raw.send(f); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Some never leave the kernel (the socket filter drops what it cannot
	// read); the rest are counted as malformed in user space. Of the ten
	// kinds, three are valid IPv4 (trailing bytes, options without L4, an
	// ICMP error with a cut quote) and go to the stack, which judges them;
	// the later fragment is held for a first fragment that never comes.
	if datapath == "user" {
		eventually(t, 3*time.Second, "malformed frames counted", func() (bool, string) {
			st := status(t, c, n1)[0].Packets
			return st.Malformed >= before.Malformed+3*20, fmt.Sprintf("%+v", st)
		})
		if after := status(t, c, n1)[0].Packets; after.UserAnswered-before.UserAnswered != 3*20 {
			t.Errorf("delivered %d frames, want the 60 valid ones", after.UserAnswered-before.UserAnswered)
		}
	} else {
		// The orphan fragments still go to user space, to be held.
		eventually(t, 3*time.Second, "fragments held", func() (bool, string) {
			st := status(t, c, n1)[0].Packets
			return st.FragmentsHeld >= before.FragmentsHeld+20, fmt.Sprintf("%+v", st)
		})
	}
	if err := c.WaitServing(context.Background()); err != nil {
		t.Fatalf("daemon stopped serving after malformed frames: %v", err)
	}
	if out, err := exec.Command("kill", "-0", strconv.Itoa(c.daemons["n1"].Cmd.Process.Pid)).CombinedOutput(); err != nil {
		t.Fatalf("daemon died: %s", out)
	}
}
