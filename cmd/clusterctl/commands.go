package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"text/tabwriter"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/internal/daemon"
	"github.com/clusterip/clusterip/internal/lab"
	"github.com/spf13/cobra"
)

func rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "clusterctl",
		Short:         "A userspace CLUSTERIP: many nodes share one IP, a hash picks who answers",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	socket := os.Getenv("CLUSTERIP_SOCKET")
	if socket == "" {
		socket = daemon.DefaultSocket
	}
	root.PersistentFlags().StringVar(&socket, "socket", socket, "daemon control socket (env CLUSTERIP_SOCKET)")
	client := func() daemon.Client { return daemon.Client{Socket: socket} }

	root.AddCommand(
		daemonCommand(&socket),
		newCommand(client),
		deleteCommand(client),
		statusCommand(client),
		saveCommand(client),
		hashCommand(),
		demoCommand(),
	)
	root.AddCommand(labCommands()...)
	return root
}

func daemonCommand(socket *string) *cobra.Command {
	var controlDir, config string
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the daemon in the foreground (systemd runs it)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			return daemon.Run(ctx, daemon.Options{ControlDir: controlDir, Socket: *socket, ConfigFile: config, Log: log})
		},
	}
	cmd.Flags().StringVar(&controlDir, "control-dir", daemon.DefaultControlDir, "directory of the control files (one per VIP)")
	cmd.Flags().StringVar(&config, "config", "", "create the clusters this file declares at start (see clusterctl save)")
	return cmd
}

func newCommand(client func() daemon.Client) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "new --vip IP --interface IFACE --hashmode MODE --total-nodes N --local-node K [flags]",
		Short: "Create a cluster (iptables ... -j CLUSTERIP --new)",
		Args:  cobra.NoArgs,
	}
	build := daemon.SpecFlags(cmd.Flags())
	cmd.RunE = func(*cobra.Command, []string) error {
		spec, err := build()
		if err != nil {
			return err
		}
		return client().New(spec)
	}
	return cmd
}

func deleteCommand(client func() daemon.Client) *cobra.Command {
	return &cobra.Command{
		Use:   "delete VIP",
		Short: "Remove a cluster",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if _, err := netip.ParseAddr(args[0]); err != nil {
				return fmt.Errorf("VIP %q: not an IPv4 address", args[0])
			}
			return client().Delete(args[0])
		},
	}
}

func statusCommand(client func() daemon.Client) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "List the clusters: VIP, interface, mode, nodes held, packets owned / not owned",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := client().Status()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "VIP\tINTERFACE\tMODE\tCLUSTERMAC\tTOTAL\tNODES\tOWNED\tNOT-OWNED\tMALFORMED\tTAP")
			for _, c := range st {
				s, err := c.Spec()
				if err != nil {
					return fmt.Errorf("daemon sent a bad cluster: %w", err)
				}
				nodes := s.LocalNodes.String()
				if nodes == "" {
					nodes = "-"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%d\t%d\t%d\t%s\n", s.VIP, s.Interface, s.Mode, s.ClusterMAC,
					s.TotalNodes, nodes, c.Stats.Owned, c.Stats.NotOwned, c.Stats.Malformed, c.Tap)
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func saveCommand(client func() daemon.Client) *cobra.Command {
	return &cobra.Command{
		Use:   "save",
		Short: "Print the running clusters as a config file (clusterctl save > FILE)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			text, err := client().Save()
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), text)
			return err
		},
	}
}

func hashCommand() *cobra.Command {
	var mode string
	var total, seed uint32
	cmd := &cobra.Command{
		Use:   "hash --hashmode MODE --total-nodes N [--hash-init SEED] SRC_IP [SRC_PORT [DST_PORT]]",
		Short: "Print the node that owns a packet, as the kernel's CLUSTERIP would pick it",
		Args:  cobra.RangeArgs(1, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := hash.ParseMode(mode)
			if err != nil {
				return fmt.Errorf("--hashmode: %w", err)
			}
			cfg := hash.Config{Mode: m, TotalNodes: total, Seed: seed}
			if err := cfg.Validate(); err != nil {
				return err
			}
			src, err := netip.ParseAddr(args[0])
			if err != nil || !src.Is4() {
				return fmt.Errorf("SRC_IP %q: not an IPv4 address", args[0])
			}
			var ports [2]uint16
			for i, a := range args[1:] {
				p, err := strconv.ParseUint(a, 10, 16)
				if err != nil {
					return fmt.Errorf("port %q: not a number 0..65535", a)
				}
				ports[i] = uint16(p)
			}
			node, err := cfg.NodeForPorts(src, ports[0], ports[1])
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), node)
			return err
		},
	}
	cmd.Flags().StringVar(&mode, "hashmode", "", "sourceip, sourceip-sourceport or sourceip-sourceport-destport")
	cmd.Flags().Uint32Var(&total, "total-nodes", 0, "number of nodes")
	cmd.Flags().Uint32Var(&seed, "hash-init", 0, "hash seed")
	cmd.MarkFlagRequired("hashmode")
	cmd.MarkFlagRequired("total-nodes")
	return cmd
}

func demoCommand() *cobra.Command {
	var conns int
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Build a throw-away lab (a client and three nodes in network namespaces) and show the cluster at work",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return lab.Demo(ctx, cmd.OutOrStdout(), conns)
		},
	}
	cmd.Flags().IntVar(&conns, "connections", 300, "connections the client opens in each round")
	return cmd
}
