package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os/signal"
	"syscall"
	"time"

	"github.com/clusterip/clusterip/internal/lab"
	"github.com/spf13/cobra"
)

// labCommands are the hidden helpers the demo and the end-to-end tests run
// inside the lab's namespaces: a server and a probing client.
func labCommands() []*cobra.Command {
	var name, tcpAddr, udpAddr, healthFile string
	var grace time.Duration
	serve := &cobra.Command{
		Use:    "lab-serve",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return lab.Serve(ctx, name, tcpAddr, udpAddr, healthFile, grace)
		},
	}
	serve.Flags().StringVar(&name, "name", "", "name to answer with")
	serve.Flags().StringVar(&tcpAddr, "tcp", ":80", "HTTP listen address")
	serve.Flags().StringVar(&udpAddr, "udp", ":7", "echo listen address, UDP and TCP")
	serve.Flags().StringVar(&healthFile, "health-file", "", "/health fails while this file exists")
	serve.Flags().DurationVar(&grace, "grace", 0, "on SIGTERM, fail /health and keep serving this long, then let open connections finish")

	var addr string
	var count int
	var timeout time.Duration
	probe := &cobra.Command{
		Use:    "lab-probe",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res := lab.Probe(context.Background(), addr, count, timeout)
			_, err := fmt.Fprint(cmd.OutOrStdout(), lab.FormatProbeReport(res))
			return err
		},
	}
	probe.Flags().StringVar(&addr, "addr", "", "host:port to connect to")
	probe.Flags().IntVar(&count, "count", 1, "connections to open")
	probe.Flags().DurationVar(&timeout, "timeout", 2*time.Second, "per-connection timeout")
	var cfg lab.LoadConfig
	load := &cobra.Command{
		Use:    "lab-load",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep, err := lab.RunLoad(context.Background(), cfg)
			if err != nil {
				return err
			}
			return json.NewEncoder(cmd.OutOrStdout()).Encode(rep)
		},
	}
	load.Flags().StringVar(&cfg.Addr, "addr", lab.VIP.String(), "VIP")
	load.Flags().IntVar(&cfg.HTTPPort, "http-port", 80, "HTTP port")
	load.Flags().IntVar(&cfg.EchoPort, "echo-port", 7, "echo port")
	load.Flags().DurationVar(&cfg.NewEvery, "new-every", 10*time.Millisecond, "time between new connections")
	load.Flags().IntVar(&cfg.Long, "long", 24, "long-lived connections")
	load.Flags().DurationVar(&cfg.LongEvery, "long-every", 100*time.Millisecond, "time between exchanges on each long-lived connection")
	load.Flags().DurationVar(&cfg.Duration, "duration", 8*time.Second, "how long")
	load.Flags().StringVar(&cfg.Iface, "iface", "eth0", "interface to watch replies on")

	var failoverDatapath string
	bench := &cobra.Command{
		Use:    "lab-bench-failover",
		Short:  "Measure failover, drain, health-check and rejoin under load in a lab",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return lab.BenchFailover(ctx, cmd.OutOrStdout(), failoverDatapath)
		},
	}
	bench.Flags().StringVar(&failoverDatapath, "datapath", "auto", "the daemons' --datapath")
	var rate int
	var dur time.Duration
	latency := &cobra.Command{
		Use:    "lab-latency",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p50, p99, err := lab.Latency(context.Background(), addr, rate, dur)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%.3f %.3f\n", p50.Seconds()*1000, p99.Seconds()*1000)
			return err
		},
	}
	latency.Flags().StringVar(&addr, "addr", "", "host:port")
	latency.Flags().IntVar(&rate, "rate", 500, "new connections per second")
	latency.Flags().DurationVar(&dur, "duration", 5*time.Second, "how long")

	var benchDur time.Duration
	var benchWorkers int
	perf := &cobra.Command{
		Use:    "lab-bench",
		Short:  "Compare direct, the kernel nftables recipe and the daemon, side by side in a lab",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return lab.BenchDatapath(ctx, cmd.OutOrStdout(), benchDur, benchWorkers)
		},
	}
	perf.Flags().DurationVar(&benchDur, "duration", 5*time.Second, "length of each measurement")
	perf.Flags().IntVar(&benchWorkers, "workers", 0, "the daemons' --workers (0: one per CPU)")
	return []*cobra.Command{serve, probe, load, bench, latency, perf}
}
