package main

import (
	"context"
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
	serve := &cobra.Command{
		Use:    "lab-serve",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return lab.Serve(ctx, name, tcpAddr, udpAddr, healthFile)
		},
	}
	serve.Flags().StringVar(&name, "name", "", "name to answer with")
	serve.Flags().StringVar(&tcpAddr, "tcp", ":80", "HTTP listen address")
	serve.Flags().StringVar(&udpAddr, "udp", ":7", "echo listen address, UDP and TCP")
	serve.Flags().StringVar(&healthFile, "health-file", "", "/health fails while this file exists")

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
	return []*cobra.Command{serve, probe}
}
