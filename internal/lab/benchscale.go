package lab

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/internal/daemon"
)

// scaleVIP is the i-th VIP of the scale benchmark: the lab's VIP first,
// then addresses of 10.64.0.0/10, which nothing in the lab uses.
func scaleVIP(i int) netip.Addr {
	if i == 0 {
		return VIP
	}
	return netip.AddrFrom4([4]byte{10, 64 + byte(i>>16), byte(i >> 8), byte(i)})
}

// vipScaleResult is what BenchScale measures of one daemon.
type vipScaleResult struct {
	clusters          int
	peers             bool          // the daemons run with --peers
	converge          time.Duration // with peers: from the start until every cluster serves at home
	rejoin            time.Duration // with peers: from n2's restart after a kill -9 until every cluster serves at home again
	ready, status     time.Duration
	rssMB             float64
	kernelMB          float64 // unreclaimable kernel memory the start added, per daemon (TAPs, maps, sockets)
	fds, threads      int
	idleCPU           float64       // seconds of CPU per second, at rest
	pathCPUPerMframe  float64       // the sender's CPU per million frames: the kernel's whole path on a veth lab
	daemonCPUPerMfram float64       // both daemons' CPU per million frames
	stop              time.Duration // n1, SIGTERM until it exited
}

// BenchScale measures a daemon with each of counts clusters on one
// interface: time from start to ready, time for status, RSS, the kernel
// memory it made the kernel keep, file descriptors, threads and CPU at
// rest, how long SIGTERM takes, and what a flood of frames to one
// cluster's MAC costs, frames whose number the other node serves (so that
// this node's programs judge each and leave it). In a
// lab of veths the receiving side's kernel work runs in the sender's
// context, so the sender's CPU time is the whole path's; its growth with
// the number of clusters is the per-frame cost of having them. The counts
// in peerCounts are measured again with --peers, with the time until every
// cluster serves at home on both nodes, and after a rejoin.
func BenchScale(ctx context.Context, w io.Writer, clusterctl string, counts, peerCounts []int, frames int) error {
	if len(counts)+len(peerCounts) == 0 {
		return nil
	}
	tool, err := os.Executable()
	if err != nil {
		return err
	}
	var results []vipScaleResult
	base, err := benchScaleOne(ctx, clusterctl, tool, 0, frames, false)
	if err != nil {
		return fmt.Errorf("no clusters: %w", err)
	}
	for _, n := range counts {
		r, err := benchScaleOne(ctx, clusterctl, tool, n, frames, false)
		if err != nil {
			return fmt.Errorf("%d clusters: %w", n, err)
		}
		results = append(results, r)
	}
	for _, n := range peerCounts {
		r, err := benchScaleOne(ctx, clusterctl, tool, n, frames, true)
		if err != nil {
			return fmt.Errorf("%d clusters with --peers: %w", n, err)
		}
		results = append(results, r)
	}
	fmt.Fprintf(w, "Many VIPs: one daemon per node, 2 nodes, N IPv4 clusters on eth0 (kernel path), %d frames flooded to one cluster's MAC\n", frames)
	fmt.Fprintf(w, "%-10s %9s %9s %9s %10s %6s %8s %10s %14s %14s %9s %9s %9s\n", "clusters", "ready", "status", "RSS MiB", "kernel MiB", "fds", "threads", "idle CPU", "path CPU/Mfr", "daemons/Mfr", "stop", "converge", "rejoin")
	fmt.Fprintf(w, "%-10s %9s %9s %9s %10s %6s %8s %10s %13.3fs %14s %9s\n", "none", "", "", "", "", "", "", "", base.pathCPUPerMframe, "", "")
	for _, r := range results {
		name, converge, rejoin := strconv.Itoa(r.clusters), "", ""
		if r.peers {
			name, converge, rejoin = name+" peers", r.converge.Round(time.Millisecond).String(), r.rejoin.Round(time.Millisecond).String()
		}
		fmt.Fprintf(w, "%-10s %9s %9s %9.1f %10.0f %6d %8d %9.3fs %13.3fs %13.3fs %9s %9s %9s\n", name,
			r.ready.Round(time.Millisecond), r.status.Round(time.Millisecond), r.rssMB, r.kernelMB, r.fds, r.threads,
			r.idleCPU, r.pathCPUPerMframe, r.daemonCPUPerMfram, r.stop.Round(time.Millisecond), converge, rejoin)
	}
	fmt.Fprintf(w, "(peers: the same with --peers; converge: from the start until every cluster serves its home number on both nodes;\n")
	fmt.Fprintf(w, " rejoin: n2 killed, and once n1 serves both numbers of every cluster, started again: until every cluster is at home again;\n")
	fmt.Fprintf(w, " kernel MiB: what /proc/meminfo's SUnreclaim grew by from before the start to after ready, per daemon: the host's other work moves it too)\n")
	return nil
}

func benchScaleOne(ctx context.Context, clusterctl, tool string, n, frames int, peers bool) (r vipScaleResult, err error) {
	r.clusters, r.peers = n, peers
	var idleAll float64 // both daemons' CPU at rest, seconds a second
	l, err := New(Options{Prefix: "cipscale", Nodes: 2, Exe: clusterctl, Tool: tool})
	if err != nil {
		return r, err
	}
	defer func() {
		if cerr := l.Close(); err == nil {
			err = cerr
		}
	}()
	var procs []*Proc
	var args []string
	if peers {
		key := filepath.Join(l.Dir, "gossip.key")
		if _, err := l.Run(l.Client, l.Exe, "genkey", key); err != nil {
			return r, err
		}
		args = []string{"--peers", l.Nodes[0].Addr.String() + "," + l.Nodes[1].Addr.String(), "--gossip-key", key}
	}
	if n > 0 {
		slab0 := unreclaimableKB()
		start := time.Now()
		for k, h := range l.Nodes {
			var cfg strings.Builder
			for i := range n {
				fmt.Fprintf(&cfg, "new --vip %s --interface eth0 --total-nodes 2 --local-node %d --hashmode sourceip\n", scaleVIP(i), k+1)
			}
			path := filepath.Join(l.Dir, h.Name+".conf")
			if err := os.WriteFile(path, []byte(cfg.String()), 0o600); err != nil {
				return r, err
			}
			p, err := l.StartDaemon(h, append([]string{"--config", path}, args...)...)
			if err != nil {
				return r, err
			}
			procs = append(procs, p)
		}
		// Ready: the control socket answers once every cluster of the
		// config exists.
		for {
			if _, err := l.Clusterctl(l.Nodes[0], "status", "--json"); err == nil {
				break
			}
			if procs[0].Exited() || time.Since(start) > 10*time.Minute {
				return r, fmt.Errorf("daemon not ready: %s", l.Log("daemon-n1"))
			}
			if err := ctx.Err(); err != nil {
				return r, err
			}
			time.Sleep(50 * time.Millisecond)
		}
		r.ready = time.Since(start)
		t := time.Now()
		out, err := l.Clusterctl(l.Nodes[0], "status", "--json")
		if err != nil {
			return r, err
		}
		r.status = time.Since(t)
		if got := strings.Count(out, `"vip":`); got < n {
			return r, fmt.Errorf("status lists %d clusters, want %d", got, n)
		}
		if peers {
			if err := waitAllHome(ctx, l, n, 5*time.Minute); err != nil {
				return r, err
			}
			r.converge = time.Since(start)
			if r.rejoin, err = benchRejoin(ctx, l, procs, n, args); err != nil {
				return r, err
			}
		}
		pid := procs[0].Cmd.Process.Pid
		time.Sleep(2 * time.Second) // past the start's work
		r.rssMB = procRSSMB(pid)
		r.kernelMB = float64(unreclaimableKB()-slab0) / 1024 / float64(len(procs))
		r.fds = countDir(fmt.Sprintf("/proc/%d/fd", pid))
		r.threads = countDir(fmt.Sprintf("/proc/%d/task", pid))
		c0 := procCPU(pid)
		var all0 float64
		for _, p := range procs {
			all0 += procCPU(p.Cmd.Process.Pid)
		}
		time.Sleep(5 * time.Second)
		r.idleCPU = (procCPU(pid) - c0) / 5
		for _, p := range procs {
			idleAll += procCPU(p.Cmd.Process.Pid)
		}
		idleAll = (idleAll - all0) / 5
	}
	// The flood: UDP to the VIP from a source whose number is n2's, so
	// that n1's programs judge every frame and leave it.
	src := ClientAddr
	for i := 10; i < 250; i++ {
		a := netip.AddrFrom4([4]byte{192, 0, 2, byte(i)})
		if node, _ := scaleHash.NodeForPorts(a, 0, 0); node == 2 {
			src = a
			break
		}
	}
	var before float64
	for _, p := range procs {
		before += procCPU(p.Cmd.Process.Pid)
	}
	blastStart := time.Now()
	out, err := l.Run(l.Client, tool, "blast", "--iface", "eth0", "--dst-mac", daemon.DefaultClusterMAC(VIP).String(),
		"--src", src.String(), "--dst", VIP.String(), "--sport", "20000", "--dport", "9",
		"--count", strconv.Itoa(frames))
	if err != nil {
		return r, err
	}
	cpu, err := strconv.ParseFloat(strings.TrimSpace(out), 64)
	if err != nil {
		return r, fmt.Errorf("blast: %q", out)
	}
	r.pathCPUPerMframe = cpu * 1e6 / float64(frames)
	var after float64
	for _, p := range procs {
		after += procCPU(p.Cmd.Process.Pid)
	}
	// What the daemons spent beyond their rest, for the frames.
	extra := after - before - idleAll*time.Since(blastStart).Seconds()
	r.daemonCPUPerMfram = max(extra, 0) * 1e6 / float64(frames)
	if n > 0 {
		t := time.Now()
		if err := procs[0].Stop(syscall.SIGTERM, 5*time.Minute); err != nil {
			return r, err
		}
		r.stop = time.Since(t)
		// The other node, which took n1's numbers meanwhile, must stop
		// too, in its own time.
		if err := procs[1].Stop(syscall.SIGTERM, 5*time.Minute); err != nil {
			return r, err
		}
	}
	return r, nil
}

// benchRejoin kills n2's daemon, waits until n1 serves both numbers of
// every cluster, starts n2's daemon again (procs[1] becomes the new one),
// and returns the time from that start until every cluster is back at
// home on both nodes: n1 hands number 2 of every cluster back at once.
func benchRejoin(ctx context.Context, l *Lab, procs []*Proc, n int, args []string) (time.Duration, error) {
	if err := procs[1].Stop(syscall.SIGKILL, 5*time.Minute); err != nil {
		return 0, err
	}
	err := waitClusters(ctx, l, l.Nodes[:1], n, 5*time.Minute, "taken over", func(_ int, c daemon.ClusterStatus) bool {
		return len(c.Serving) == 2
	})
	if err != nil {
		return 0, err
	}
	start := time.Now()
	p, err := l.StartDaemon(l.Nodes[1], append([]string{"--config", filepath.Join(l.Dir, l.Nodes[1].Name+".conf")}, args...)...)
	if err != nil {
		return 0, err
	}
	procs[1] = p
	if err := waitAllHome(ctx, l, n, 5*time.Minute); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// waitAllHome waits until both nodes' n clusters each serve exactly the
// node's own number.
func waitAllHome(ctx context.Context, l *Lab, n int, timeout time.Duration) error {
	return waitClusters(ctx, l, l.Nodes, n, timeout, "at home", func(k int, c daemon.ClusterStatus) bool {
		return len(c.Serving) == 1 && c.Serving[0] == k+1
	})
}

// waitClusters waits until each of nodes has n clusters, every one of
// which is as ok says (k: the node's index in nodes); what names that
// state in the error.
func waitClusters(ctx context.Context, l *Lab, nodes []*Host, n int, timeout time.Duration, what string, ok func(k int, c daemon.ClusterStatus) bool) error {
	// Each look is a status of every cluster.
	return waitStatus(ctx, l, nodes, timeout, 500*time.Millisecond, func(k int, st daemon.Status) string {
		bad := n - len(st.Clusters)
		for _, c := range st.Clusters {
			if !ok(k, c) {
				bad++
			}
		}
		if bad != 0 {
			return fmt.Sprintf("%d clusters of %d not %s", bad, n, what)
		}
		return ""
	})
}

// scaleHash is the hash of the scale benchmark's clusters.
var scaleHash = hash.Config{Mode: hash.SourceIP, TotalNodes: 2}

// unreclaimableKB is the kernel's unreclaimable slab memory, in KiB: where
// network devices, their queues, BPF maps and sockets live.
func unreclaimableKB() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "SUnreclaim:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb
		}
	}
	return 0
}

func countDir(path string) int {
	es, err := os.ReadDir(path)
	if err != nil {
		return 0
	}
	return len(es)
}

// Blast sends count copies of one UDP datagram from src:sport to
// dst:dport, in a frame to dstMAC, out of iface, as fast as it can, and
// returns the CPU time it took (user and system): on a veth, the receiving
// side's kernel work included.
func Blast(iface string, dstMAC net.HardwareAddr, src, dst netip.Addr, sport, dport uint16, count int) (time.Duration, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return 0, err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	frame := make([]byte, 14+20+8+18)
	copy(frame[0:6], dstMAC)
	copy(frame[6:12], ifi.HardwareAddr)
	binary.BigEndian.PutUint16(frame[12:14], 0x0800)
	ip := frame[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(len(frame)-14))
	ip[8], ip[9] = 64, 17
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:12], ^uint16(sum))
	udp := frame[34:]
	binary.BigEndian.PutUint16(udp[0:2], sport)
	binary.BigEndian.PutUint16(udp[2:4], dport)
	binary.BigEndian.PutUint16(udp[4:6], uint16(len(udp)))
	to := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Protocol: 0x0008, Halen: 6}
	copy(to.Addr[:], dstMAC)
	var before, after unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &before)
	for range count {
		if err := unix.Sendto(fd, frame, 0, to); err != nil && err != unix.ENOBUFS {
			return 0, err
		}
	}
	unix.Getrusage(unix.RUSAGE_SELF, &after)
	cpu := func(r unix.Rusage) time.Duration {
		return time.Duration(r.Utime.Nano() + r.Stime.Nano())
	}
	return cpu(after) - cpu(before), nil
}
