// Command labctl is the test harness that runs inside the labs' network
// namespaces: the test service, the failover benchmark's client load, the
// latency probe, and the benchmarks themselves. It is built by the tests
// and by `make bench` and `make bench-failover`, and never installed.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/clusterip/clusterip/internal/lab"
	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{Use: "labctl", Short: "clusterip's lab harness (tests and benchmarks only)", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(serveCommand(), loadCommand(), latencyCommand(), benchCommand(), benchFailoverCommand(), benchScaleCommand(), blastCommand())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "labctl:", err)
		os.Exit(1)
	}
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}

func serveCommand() *cobra.Command {
	var name, tcpAddr, udpAddr, healthFile string
	var grace time.Duration
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the test service: HTTP, and an echo service on UDP and TCP, answering with --name",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			ctx, stop := signalContext()
			defer stop()
			ls, err := lab.Listen(tcpAddr, udpAddr)
			if err != nil {
				return err
			}
			return lab.Serve(ctx, name, ls, healthFile, grace)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name to answer with")
	cmd.Flags().StringVar(&tcpAddr, "tcp", ":80", "HTTP listen address")
	cmd.Flags().StringVar(&udpAddr, "udp", ":7", "echo listen address, UDP and TCP")
	cmd.Flags().StringVar(&healthFile, "health-file", "", "/health fails while this file exists")
	cmd.Flags().DurationVar(&grace, "grace", 0, "on SIGTERM, fail /health and keep serving this long, then let open connections finish")
	return cmd
}

func loadCommand() *cobra.Command {
	var cfg lab.LoadConfig
	cmd := &cobra.Command{
		Use:   "load",
		Short: "Open new connections and keep long-lived ones to the VIP; print a JSON report",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep, err := lab.RunLoad(context.Background(), cfg)
			if err != nil {
				return err
			}
			return json.NewEncoder(cmd.OutOrStdout()).Encode(rep)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Addr, "addr", lab.VIP.String(), "VIP")
	f.IntVar(&cfg.HTTPPort, "http-port", 80, "HTTP port")
	f.IntVar(&cfg.EchoPort, "echo-port", 7, "echo port")
	f.DurationVar(&cfg.NewEvery, "new-every", 10*time.Millisecond, "time between new connections")
	f.IntVar(&cfg.Long, "long", 24, "long-lived connections")
	f.DurationVar(&cfg.LongEvery, "long-every", 100*time.Millisecond, "time between exchanges on each long-lived connection")
	f.DurationVar(&cfg.Duration, "duration", 8*time.Second, "how long")
	f.StringVar(&cfg.Iface, "iface", "eth0", "interface to watch replies on")
	return cmd
}

func latencyCommand() *cobra.Command {
	var addr string
	var rate int
	var dur time.Duration
	cmd := &cobra.Command{
		Use:   "latency",
		Short: "Open connections at a fixed rate; print the p50 and p99 connect+request time in ms",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p50, p99, err := lab.Latency(context.Background(), addr, rate, dur)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%.3f %.3f\n", p50.Seconds()*1000, p99.Seconds()*1000)
			return err
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "", "host:port")
	cmd.Flags().IntVar(&rate, "rate", 500, "new connections per second")
	cmd.Flags().DurationVar(&dur, "duration", 5*time.Second, "how long")
	return cmd
}

// clusterctlFlag is the daemon binary the benchmarks run: by default the
// clusterctl next to this program (bin/ after `make`).
func clusterctlFlag(cmd *cobra.Command) *string {
	def := "clusterctl"
	if self, err := os.Executable(); err == nil {
		def = filepath.Join(filepath.Dir(self), "clusterctl")
	}
	return cmd.Flags().String("clusterctl", def, "the clusterctl binary to benchmark")
}

func benchCommand() *cobra.Command {
	var dur time.Duration
	var workers int
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Compare direct, the kernel's nftables recipe and the daemon, side by side in a lab",
		Args:  cobra.NoArgs,
	}
	clusterctl := clusterctlFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx, stop := signalContext()
		defer stop()
		return lab.BenchDatapath(ctx, cmd.OutOrStdout(), *clusterctl, dur, workers)
	}
	cmd.Flags().DurationVar(&dur, "duration", 5*time.Second, "length of each measurement")
	cmd.Flags().IntVar(&workers, "workers", 0, "the daemons' --workers (0: one per CPU)")
	return cmd
}

func benchFailoverCommand() *cobra.Command {
	var datapath string
	cmd := &cobra.Command{
		Use:   "bench-failover",
		Short: "Measure failover, drain, health-check and rejoin under load in a lab",
		Args:  cobra.NoArgs,
	}
	clusterctl := clusterctlFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx, stop := signalContext()
		defer stop()
		return lab.BenchFailover(ctx, cmd.OutOrStdout(), *clusterctl, datapath)
	}
	cmd.Flags().StringVar(&datapath, "datapath", "auto", "the daemons' --datapath")
	return cmd
}

func benchScaleCommand() *cobra.Command {
	var counts, peerCounts, nodes []int
	var frames, gossipMembers, gossipClusters int
	cmd := &cobra.Command{
		Use:   "bench-scale",
		Short: "Measure many clusters on a daemon, many nodes in a cluster, and the gossip of many of both",
		Args:  cobra.NoArgs,
	}
	clusterctl := clusterctlFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx, stop := signalContext()
		defer stop()
		w := cmd.OutOrStdout()
		counts = slices.DeleteFunc(counts, func(n int) bool { return n <= 0 })
		peerCounts = slices.DeleteFunc(peerCounts, func(n int) bool { return n <= 0 })
		nodes = slices.DeleteFunc(nodes, func(n int) bool { return n <= 0 })
		if err := lab.BenchScale(ctx, w, *clusterctl, counts, peerCounts, frames); err != nil {
			return err
		}
		fmt.Fprintln(w)
		if err := lab.BenchNodes(ctx, w, *clusterctl, nodes); err != nil {
			return err
		}
		fmt.Fprintln(w)
		return lab.GossipScale(w, gossipMembers, gossipClusters)
	}
	cmd.Flags().IntSliceVar(&counts, "clusters", []int{1, 100, 1000}, "numbers of clusters on one daemon to measure (0: skip)")
	cmd.Flags().IntSliceVar(&peerCounts, "peers-clusters", []int{1000}, "numbers of clusters measured again with --peers (0: skip)")
	cmd.Flags().IntVar(&frames, "frames", 1000000, "frames to flood per measurement")
	cmd.Flags().IntSliceVar(&nodes, "nodes", []int{3, 16, 64}, "cluster sizes to measure")
	cmd.Flags().IntVar(&gossipMembers, "gossip-members", 64, "members of the gossip-only measurement")
	cmd.Flags().IntVar(&gossipClusters, "gossip-clusters", 1000, "clusters each member publishes in it")
	return cmd
}

func blastCommand() *cobra.Command {
	var iface, dstMAC, src, dst string
	var sport, dport uint16
	var count int
	cmd := &cobra.Command{
		Use:   "blast",
		Short: "Send one UDP datagram many times as raw frames; print the CPU seconds it took",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			mac, err := net.ParseMAC(dstMAC)
			if err != nil {
				return err
			}
			s, err := netip.ParseAddr(src)
			if err != nil {
				return err
			}
			d, err := netip.ParseAddr(dst)
			if err != nil {
				return err
			}
			cpu, err := lab.Blast(iface, mac, s, d, sport, dport, count)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%.3f\n", cpu.Seconds())
			return nil
		},
	}
	cmd.Flags().StringVar(&iface, "iface", "eth0", "interface to send on")
	cmd.Flags().StringVar(&dstMAC, "dst-mac", "", "destination MAC")
	cmd.Flags().StringVar(&src, "src", "", "source IPv4 address")
	cmd.Flags().StringVar(&dst, "dst", "", "destination IPv4 address")
	cmd.Flags().Uint16Var(&sport, "sport", 20000, "source port")
	cmd.Flags().Uint16Var(&dport, "dport", 9, "destination port")
	cmd.Flags().IntVar(&count, "count", 1000000, "frames to send")
	return cmd
}
