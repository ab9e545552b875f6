// Package test holds the end-to-end tests: real daemons, real TAPs, real
// FUSE control files and real clients (curl, ping, UDP sockets) in a lab of
// network namespaces. They need root; without it they skip.
package test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/clusterip/clusterip/internal/daemon"
	"github.com/clusterip/clusterip/internal/lab"
	"github.com/mdlayher/packet"
)

var clusterctl string // the binary under test

// labctl is the lab harness: the test service and the client load.
var labctl string

// tempDirMode is the system temporary directory's mode when the tests
// began: every lab's cleanup checks that its test left it so (apt and
// every other user of /tmp break without its sticky, open mode).
var tempDirMode os.FileMode

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Println("end-to-end tests need root (network namespaces, TAP, FUSE); skipping")
		os.Exit(0)
	}
	fi, err := os.Stat(os.TempDir())
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	tempDirMode = fi.Mode()
	dir, err := os.MkdirTemp("", "clusterctl-e2e-")
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	// Tests run the binary as other users too.
	os.Chmod(dir, 0o755)
	clusterctl = filepath.Join(dir, "clusterctl")
	labctl = filepath.Join(dir, "labctl")
	// CIP_E2E_RACE=1 builds the daemon with the race detector, which then
	// stops it at the first race (GORACE=halt_on_error=1), failing the test.
	race := os.Getenv("CIP_E2E_RACE") != ""
	if race {
		os.Setenv("GORACE", "halt_on_error=1")
	}
	for bin, pkg := range map[string]string{clusterctl: "../cmd/clusterctl", labctl: "./labctl"} {
		args := []string{"build", "-o", bin}
		if race && bin == clusterctl {
			args = append(args, "-race")
		}
		build := exec.Command("go", append(args, pkg)...)
		build.Stdout, build.Stderr = os.Stdout, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Println("build", pkg+":", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// floodBrokenLog is what a daemon logs when its flood check finds that
// frames to the cluster MAC do not reach it.
const floodBrokenLog = "frames sent to the cluster MAC do not reach this node"

// floodBrokenExpected names the tests whose labs break flooding on purpose.
var floodBrokenExpected = map[string]bool{
	"TestMACModesOnSnoopingBridge/IPv4": true,
	"TestMACModesOnSnoopingBridge/IPv6": true,
	"TestFloodCheckWithoutPeers":        true,
}

// newLab builds a lab of n nodes that is removed when the test ends.
func newLab(t *testing.T, n int, router bool) *lab.Lab {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	b := make([]byte, 3)
	rand.Read(b)
	l, err := lab.New(lab.Options{Prefix: "cipt" + hex.EncodeToString(b), Nodes: n, Router: router, Exe: clusterctl, Tool: labctl})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The flood check runs in every test: in a lab whose bridge
		// floods, it must never find that it does not.
		if !floodBrokenExpected[t.Name()] {
			for _, h := range l.Nodes {
				if strings.Contains(l.Log("daemon-"+h.Name), floodBrokenLog) {
					t.Errorf("%s: the flood check reported a flooding bridge as broken", h.Name)
				}
			}
		}
		if t.Failed() {
			for _, h := range l.Nodes {
				t.Logf("daemon log of %s:\n%s", h.Name, l.Log("daemon-"+h.Name))
			}
		}
		if err := l.Close(); err != nil {
			t.Errorf("lab cleanup: %v", err)
		}
		if fi, err := os.Stat(os.TempDir()); err == nil && fi.Mode() != tempDirMode {
			t.Errorf("the test changed %s from %v to %v", os.TempDir(), tempDirMode, fi.Mode())
			os.Chmod(os.TempDir(), tempDirMode) // the sticky bit included
		}
	})
	return l
}

// cluster is a lab whose every node runs a daemon with the lab VIP and a
// server; node k holds node number k.
type cluster struct {
	*lab.Lab
	t          *testing.T
	vip        netip.Addr // lab.VIP or lab.VIP6
	client     netip.Addr // the client's address of the VIP's family
	mode       string
	daemons    map[string]*lab.Proc
	daemonArgs []string // added to every failover daemon's command line
}

func newCluster(t *testing.T, nodes int, mode string, router bool, daemonArgs ...string) *cluster {
	t.Helper()
	return newClusterAt(t, lab.VIP, nodes, mode, router, daemonArgs...)
}

// newClusterAt is newCluster for vip, lab.VIP or lab.VIP6.
func newClusterAt(t *testing.T, vip netip.Addr, nodes int, mode string, router bool, daemonArgs ...string) *cluster {
	t.Helper()
	c := &cluster{Lab: newLab(t, nodes, router), t: t, vip: vip, client: clientOf(vip), mode: mode, daemons: map[string]*lab.Proc{}}
	for i, h := range c.Nodes {
		p, err := c.StartDaemon(h, daemonArgs...)
		if err != nil {
			t.Fatal(err)
		}
		c.daemons[h.Name] = p
		c.ctl(h, "new", "--vip", vip.String(), "--interface", "eth0", "--hashmode", mode,
			"--total-nodes", strconv.Itoa(nodes), "--local-node", strconv.Itoa(i+1))
		if _, err := c.StartServer(h, "--tcp", ":80", "--udp", ":7"); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range c.Nodes {
		if err := c.WaitListening(h, 7); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WaitServingAt(context.Background(), vip); err != nil {
		t.Fatal(err)
	}
	return c
}

// clientOf is the client's address of vip's family.
func clientOf(vip netip.Addr) netip.Addr {
	if vip.Is6() {
		return lab.ClientAddr6
	}
	return lab.ClientAddr
}

// ctl runs clusterctl against h's daemon and fails the test on error.
func (c *cluster) ctl(h *lab.Host, args ...string) string {
	c.t.Helper()
	out, err := c.Clusterctl(h, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// predict asks `clusterctl hash` which node owns a packet from src.
func predict(t *testing.T, mode string, total int, src string, ports ...int) int {
	t.Helper()
	args := append([]string{"hash", "--hashmode"}, strings.Fields(mode)...) // mode may carry --hash-init
	args = append(args, "--total-nodes", strconv.Itoa(total), src)
	for _, p := range ports {
		args = append(args, strconv.Itoa(p))
	}
	out, err := exec.Command(clusterctl, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("clusterctl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("clusterctl hash printed %q", out)
	}
	return n
}

// inNetns runs fn on a thread inside the named network namespace.
func inNetns(name string, fn func() error) error { return lab.InNetns(name, fn) }

// rawSender is a packet socket on the client's eth0 that only sends (it is
// bound to an unused EtherType): for frames no real client would send.
type rawSender struct {
	conn *packet.Conn
	mac  net.HardwareAddr // the client's
}

func (c *cluster) rawSender() *rawSender {
	c.t.Helper()
	r := &rawSender{}
	err := inNetns(c.Client.NS, func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		r.mac = ifi.HardwareAddr
		r.conn, err = packet.Listen(ifi, packet.Raw, 0x88b5, nil)
		return err
	})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { r.conn.Close() })
	return r
}

// frame wraps an IPv4 packet in an Ethernet frame from the client to the
// cluster MAC.
func (r *rawSender) frame(ip []byte) []byte {
	f := make([]byte, 14, 14+len(ip))
	copy(f[0:6], daemon.DefaultClusterMAC(lab.VIP))
	copy(f[6:12], r.mac)
	binary.BigEndian.PutUint16(f[12:14], 0x0800)
	return append(f, ip...)
}

// send sends a whole frame to the cluster MAC.
func (r *rawSender) send(frame []byte) error {
	return r.sendTo(frame, daemon.DefaultClusterMAC(lab.VIP))
}

// sendTo sends a whole frame to dst.
func (r *rawSender) sendTo(frame []byte, dst net.HardwareAddr) error {
	_, err := r.conn.WriteTo(frame, &packet.Addr{HardwareAddr: dst})
	return err
}

// eventually polls cond until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s: %s", what, timeout, detail)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
