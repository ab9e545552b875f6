// Package lab builds throw-away clusters in network namespaces: a switch
// (a bridge in its own namespace), a client, N nodes and optionally a router
// with a remote client behind a narrower link. The demo and the end-to-end
// tests use it; nothing it makes touches the host's own namespace, and Close
// removes all of it.
package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Addresses inside every lab. They exist only in the lab's namespaces.
// Every lab is dual-stack: each host has an IPv4 and an IPv6 address.
var (
	VIP        = netip.MustParseAddr("192.0.2.100")
	ClientAddr = netip.MustParseAddr("192.0.2.1")
	RouterAddr = netip.MustParseAddr("192.0.2.254")
	RemoteAddr = netip.MustParseAddr("198.51.100.2")

	VIP6        = netip.MustParseAddr("2001:db8::100")
	ClientAddr6 = netip.MustParseAddr("2001:db8::1")
	RouterAddr6 = netip.MustParseAddr("2001:db8::fe")
	RemoteAddr6 = netip.MustParseAddr("2001:db8:1::2")
)

const (
	lanPrefix     = 24
	lanPrefix6    = 64
	remoteNet     = "198.51.100.0/24"
	routerRemote  = "198.51.100.1"
	remoteNet6    = "2001:db8:1::/64"
	routerRemote6 = "2001:db8:1::1"
	// RemoteMTU is the MTU of the router's link to the remote client: below
	// the LAN's 1500, so full-size segments to the remote client need
	// path-MTU discovery.
	RemoteMTU = 1280
)

// Host is one namespace of the lab.
type Host struct {
	Name  string // short name: client, n1, n2, ...
	NS    string // network namespace name
	Addr  netip.Addr
	Addr6 netip.Addr
	port  string // its switch port
}

// Options shape a lab.
type Options struct {
	Prefix string // namespace name prefix; must be unique among running labs
	Nodes  int
	Router bool   // add a router and a remote client behind a RemoteMTU link
	Exe    string // the clusterctl binary; default: this program
	// Tool is the lab tool (test/labctl: the test service, the load, the
	// latency probe) for labs that run those as programs in the
	// namespaces; the demo needs none.
	Tool string
}

// Lab is a running lab.
type Lab struct {
	Prefix string
	Dir    string // scratch directory for sockets and control files
	Exe    string // the clusterctl binary the lab runs
	Tool   string // the lab tool, if any (Options.Tool)
	Switch string
	Client *Host
	Nodes  []*Host
	Router *Host // nil without Options.Router
	Remote *Host
	// DaemonEnv is added to the environment of daemons started from now on.
	DaemonEnv []string

	mu    sync.Mutex
	procs []*Proc
	nss   []string
	// sysctls are the host's settings the lab changed, with their values
	// before, restored by Close.
	sysctls map[string]string
}

// Proc is a background process the lab started; Close stops it by PID.
type Proc struct {
	Cmd  *exec.Cmd
	done chan struct{}
}

// Exited tells whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop signals the process and waits up to timeout for it to end.
func (p *Proc) Stop(sig syscall.Signal, timeout time.Duration) error {
	if err := p.Cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("pid %d still running %s after %s", p.Cmd.Process.Pid, sig, timeout)
	}
}

// New builds a lab. On error everything already made is removed.
func New(opts Options) (l *Lab, err error) {
	if opts.Nodes < 1 || opts.Nodes > 200 {
		return nil, fmt.Errorf("lab: %d nodes", opts.Nodes)
	}
	if opts.Exe == "" {
		if opts.Exe, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	l = &Lab{Prefix: opts.Prefix, Exe: opts.Exe, Tool: opts.Tool, Switch: opts.Prefix + "-sw"}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	if l.Dir, err = os.MkdirTemp("", opts.Prefix+"-"); err != nil {
		return nil, err
	}
	if err = l.addNS(l.Switch); err != nil {
		return nil, err
	}
	if err = ip("-n", l.Switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"); err != nil {
		return nil, err
	}
	if err = ip("-n", l.Switch, "link", "set", "br0", "up"); err != nil {
		return nil, err
	}
	if err = l.plainSwitch(); err != nil {
		return nil, err
	}
	if opts.Nodes > 16 {
		// The kernel's neighbour tables are shared by every namespace:
		// a lab of n hosts fills them with about 2n² entries (IPv4 and
		// IPv6), past the default limit of 1,024 from 22 hosts on, and
		// then resolving a neighbour fails with ENOBUFS.
		if err = l.raiseNeighbourLimits(4 * (opts.Nodes + 3) * (opts.Nodes + 3)); err != nil {
			return nil, err
		}
	}
	l.Client = &Host{Name: "client", Addr: ClientAddr, Addr6: ClientAddr6}
	if err = l.attach(l.Client, "p0"); err != nil {
		return nil, err
	}
	for i := 1; i <= opts.Nodes; i++ {
		h := &Host{Name: fmt.Sprintf("n%d", i), Addr: netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}),
			Addr6: netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte((10 + i) >> 8), 15: byte(10 + i)})}
		if err = l.attach(h, fmt.Sprintf("p%d", i)); err != nil {
			return nil, err
		}
		l.Nodes = append(l.Nodes, h)
	}
	if opts.Router {
		if err = l.addRouter(); err != nil {
			return nil, err
		}
	}
	return l, nil
}

func (l *Lab) addNS(name string) error {
	ip("netns", "del", name) // a lab killed before Close left it; the name is ours
	if err := ip("netns", "add", name); err != nil {
		return err
	}
	l.mu.Lock()
	l.nss = append(l.nss, name)
	l.mu.Unlock()
	return ip("-n", name, "link", "set", "lo", "up")
}

// plainSwitch stops br_netfilter, where the kernel has it, from passing the
// switch's frames through iptables: it validates IPv4 headers and would drop
// what a real switch forwards, hiding malformed frames from the nodes.
func (l *Lab) plainSwitch() error {
	sw := &Host{Name: "switch", NS: l.Switch}
	for _, k := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"} {
		path := "/proc/sys/net/bridge/" + k
		if _, err := os.Stat(path); err != nil {
			continue // no br_netfilter: nothing to turn off
		}
		if _, err := l.Run(sw, "sh", "-c", "echo 0 > "+path); err != nil {
			return err
		}
	}
	return nil
}

// attach creates h's namespace and plugs its eth0 into the switch.
func (l *Lab) attach(h *Host, port string) error {
	h.NS = l.Prefix + "-" + h.Name
	if err := l.addNS(h.NS); err != nil {
		return err
	}
	h.port = port
	return l.plug(h)
}

// Unplug deletes h's eth0 (and its switch port), as when a veth or a bond
// is torn down.
func (l *Lab) Unplug(h *Host) error {
	return ip("-n", h.NS, "link", "del", "eth0")
}

// Replug creates h's eth0 anew, plugged into the switch with its address,
// as when a veth or a bond is rebuilt: a new interface under the old name.
func (l *Lab) Replug(h *Host) error { return l.plug(h) }

func (l *Lab) plug(h *Host) error {
	port := h.port
	if err := ip("-n", l.Switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.NS); err != nil {
		return err
	}
	// No duplicate address detection on the lab's links: while it runs,
	// the link-local address is tentative and the host cannot solicit its
	// neighbours for a second or two, which a real host long up never sees.
	if _, err := l.Run(h, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0"); err != nil {
		return err
	}
	steps := [][]string{
		{"-n", l.Switch, "link", "set", port, "master", "br0", "up"},
		{"-n", h.NS, "addr", "add", fmt.Sprintf("%s/%d", h.Addr, lanPrefix), "dev", "eth0"},
		{"-n", h.NS, "addr", "add", fmt.Sprintf("%s/%d", h.Addr6, lanPrefix6), "dev", "eth0", "nodad"},
		{"-n", h.NS, "link", "set", "eth0", "up"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) addRouter() error {
	l.Router = &Host{Name: "router", Addr: RouterAddr, Addr6: RouterAddr6}
	if err := l.attach(l.Router, "pr"); err != nil {
		return err
	}
	l.Remote = &Host{Name: "remote", Addr: RemoteAddr, Addr6: RemoteAddr6, NS: l.Prefix + "-remote"}
	if err := l.addNS(l.Remote.NS); err != nil {
		return err
	}
	steps := [][]string{
		{"-n", l.Router.NS, "link", "add", "eth1", "mtu", fmt.Sprint(RemoteMTU), "type", "veth", "peer", "name", "eth0", "netns", l.Remote.NS},
		{"netns", "exec", l.Router.NS, "sysctl", "-qw", "net.ipv6.conf.eth1.accept_dad=0"},
		{"netns", "exec", l.Remote.NS, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0"},
		{"-n", l.Router.NS, "addr", "add", routerRemote + "/24", "dev", "eth1"},
		{"-n", l.Router.NS, "link", "set", "eth1", "up"},
		{"-n", l.Remote.NS, "addr", "add", RemoteAddr.String() + "/24", "dev", "eth0"},
		{"-n", l.Remote.NS, "link", "set", "eth0", "up"},
		{"-n", l.Remote.NS, "route", "add", "default", "via", routerRemote},
		{"-n", l.Router.NS, "addr", "add", routerRemote6 + "/64", "dev", "eth1", "nodad"},
		{"-n", l.Remote.NS, "addr", "add", RemoteAddr6.String() + "/64", "dev", "eth0", "nodad"},
		{"-n", l.Remote.NS, "-6", "route", "add", "default", "via", routerRemote6},
	}
	for _, n := range l.Nodes {
		steps = append(steps, []string{"-n", n.NS, "route", "add", remoteNet, "via", RouterAddr.String()},
			[]string{"-n", n.NS, "-6", "route", "add", remoteNet6, "via", RouterAddr6.String()})
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return err
		}
	}
	_, err := l.Run(l.Router, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	return err
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Command returns a command that runs in h's network namespace only. It
// keeps the host's mount namespace (unlike `ip netns exec`), so a daemon's
// control files are visible to everyone.
func (l *Lab) Command(h *Host, name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=/run/netns/" + h.NS, "--", name}, args...)...)
}

// Run runs a command in h's namespace and returns its combined output.
func (l *Lab) Run(h *Host, name string, args ...string) (string, error) {
	out, err := l.Command(h, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %v: %s", name, strings.Join(args, " "), h.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Clusterctl runs the lab's clusterctl against h's daemon (its socket in
// CLUSTERIP_SOCKET, which every command that talks to a daemon reads).
func (l *Lab) Clusterctl(h *Host, args ...string) (string, error) {
	cmd := l.Command(h, l.Exe, args...)
	cmd.Env = append(os.Environ(), "CLUSTERIP_SOCKET="+l.Socket(h))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("clusterctl %s in %s: %v: %s", strings.Join(args, " "), h.Name, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Start starts a background process in h's namespace; Close stops it.
func (l *Lab) Start(h *Host, logName string, name string, args ...string) (*Proc, error) {
	return l.start(h, logName, nil, name, args...)
}

func (l *Lab) start(h *Host, logName string, env []string, name string, args ...string) (*Proc, error) {
	cmd := l.Command(h, name, args...)
	cmd.Env = append(os.Environ(), env...)
	logf, err := os.Create(filepath.Join(l.Dir, logName+".log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s in %s: %w", name, h.Name, err)
	}
	logf.Close()
	p := &Proc{Cmd: cmd, done: make(chan struct{})}
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	go func() { cmd.Wait(); close(p.done) }()
	return p, nil
}

// StartServer runs the lab tool's test service in h, answering with h's
// name (see Serve); args are the tool's serve flags.
func (l *Lab) StartServer(h *Host, args ...string) (*Proc, error) {
	if l.Tool == "" {
		return nil, errors.New("lab: no lab tool (Options.Tool) to serve with")
	}
	return l.Start(h, "serve-"+h.Name, l.Tool, append([]string{"serve", "--name", h.Name}, args...)...)
}

// ToolCommand returns a command running the lab tool in h.
func (l *Lab) ToolCommand(h *Host, args ...string) *exec.Cmd { return l.Command(h, l.Tool, args...) }

// Log returns what a process started with logName wrote so far.
func (l *Lab) Log(logName string) string {
	b, _ := os.ReadFile(filepath.Join(l.Dir, logName+".log"))
	return string(b)
}

// Socket is h's daemon control socket.
func (l *Lab) Socket(h *Host) string { return filepath.Join(l.Dir, h.Name+".sock") }

// ControlDir is where h's daemon mounts its control files.
func (l *Lab) ControlDir(h *Host) string { return filepath.Join(l.Dir, h.Name+"-ctl") }

// ControlFile is h's control file for the lab's VIP.
func (l *Lab) ControlFile(h *Host) string { return l.ControlFileOf(h, VIP) }

// ControlFileOf is h's control file for vip.
func (l *Lab) ControlFileOf(h *Host, vip netip.Addr) string {
	return filepath.Join(l.ControlDir(h), vip.String())
}

// StartDaemon starts clusterctl daemon in h and waits until it answers.
func (l *Lab) StartDaemon(h *Host, extra ...string) (*Proc, error) {
	args := []string{"daemon", "--socket", l.Socket(h), "--control-dir", l.ControlDir(h)}
	if !slices.Contains(extra, "--node-name") {
		// The nodes share the host's name: the lab names them.
		args = append(args, "--node-name", h.Name)
	}
	args = append(args, extra...)
	p, err := l.start(h, "daemon-"+h.Name, l.DaemonEnv, l.Exe, args...)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", l.Socket(h)); err == nil {
			c.Close()
			return p, nil
		}
		if p.Exited() || time.Now().After(deadline) {
			return nil, fmt.Errorf("daemon in %s did not come up: %s", h.Name, l.Log("daemon-"+h.Name))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Close stops every process the lab started (by PID), unmounts control
// directories a killed daemon left, and deletes the namespaces.
func (l *Lab) Close() error {
	l.mu.Lock()
	procs, nss := l.procs, l.nss
	l.procs, l.nss = nil, nil
	l.mu.Unlock()
	// All at once: a lab of 64 nodes has 128 processes, and a service
	// may take its grace period to stop.
	var errs []error
	var emu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A daemon with a thousand clusters takes seconds to stop,
			// and as long to die of SIGKILL: the kernel unregisters a
			// network device per TAP on the way.
			if p.Stop(syscall.SIGTERM, 30*time.Second) != nil {
				err := p.Stop(syscall.SIGKILL, 30*time.Second)
				emu.Lock()
				errs = append(errs, err)
				emu.Unlock()
			}
		}()
	}
	wg.Wait()
	if l.Dir != "" {
		entries, _ := os.ReadDir(l.Dir)
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), "-ctl") {
				unix.Unmount(filepath.Join(l.Dir, e.Name()), unix.MNT_DETACH)
			}
		}
	}
	for i := len(nss) - 1; i >= 0; i-- {
		if err := ip("netns", "del", nss[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if l.Dir != "" {
		errs = append(errs, os.RemoveAll(l.Dir))
	}
	for path, v := range l.sysctls {
		errs = append(errs, os.WriteFile(path, []byte(v), 0o644))
	}
	return errors.Join(errs...)
}

// raiseNeighbourLimits raises the host's neighbour table limits (IPv4 and
// IPv6) to at least n entries, for Close to restore.
func (l *Lab) raiseNeighbourLimits(n int) error {
	if l.sysctls == nil {
		l.sysctls = map[string]string{}
	}
	for _, fam := range []string{"ipv4", "ipv6"} {
		for i, name := range []string{"gc_thresh3", "gc_thresh2", "gc_thresh1"} {
			path := "/proc/sys/net/" + fam + "/neigh/default/" + name
			old, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			want := n >> i
			if cur, err := strconv.Atoi(strings.TrimSpace(string(old))); err == nil && cur >= want {
				continue
			}
			if err := os.WriteFile(path, []byte(strconv.Itoa(want)), 0o644); err != nil {
				return err
			}
			l.sysctls[path] = string(old)
		}
	}
	return nil
}

// WaitListening waits until something in h listens on port (TCP and UDP),
// as /proc/net/{tcp,udp} in h's namespace show it.
func (l *Lab) WaitListening(h *Host, port int) error {
	want := fmt.Sprintf(":%04X ", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		// A dual-stack socket is listed under tcp6/udp6 only.
		tcp, err1 := l.Run(h, "cat", "/proc/net/tcp", "/proc/net/tcp6")
		udp, err2 := l.Run(h, "cat", "/proc/net/udp", "/proc/net/udp6")
		if err1 == nil && err2 == nil && strings.Contains(tcp, want) && strings.Contains(udp, want) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on port %d in %s", port, h.Name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
