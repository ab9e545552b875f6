package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"syscall"
	"time"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/internal/daemon"
	"github.com/clusterip/clusterip/internal/lab"
	"github.com/clusterip/clusterip/internal/membership"
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
		drainCommand(client),
		resumeCommand(client),
		hashCommand(),
		genkeyCommand(),
		demoCommand(),
	)
	return root
}

func daemonCommand(socket *string) *cobra.Command {
	var controlDir, config, bind string
	var m daemon.MembershipOptions
	var debug bool
	var workers int
	var dpMode string
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the daemon in the foreground (systemd runs it)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if workers < 0 || workers > 256 {
				return fmt.Errorf("--workers %d: want 0 (one per CPU)..256", workers)
			}
			if dpMode != "auto" && dpMode != "user" {
				return fmt.Errorf("--datapath %q: want auto or user", dpMode)
			}
			opts := daemon.Options{ControlDir: controlDir, Socket: *socket, ConfigFile: config, Workers: workers, UserOnly: dpMode == "user"}
			if cmd.Flags().Changed("peers") {
				if bind != "" {
					b, err := netip.ParseAddr(bind)
					if err != nil || !b.Is4() {
						return fmt.Errorf("--bind %q: not an IPv4 address", bind)
					}
					m.Bind = b
				}
				opts.Membership = &m
			} else {
				for _, f := range []string{"bind", "gossip-port", "gossip-key", "gossip-insecure", "node-name", "alone-after"} {
					if cmd.Flags().Changed(f) {
						return fmt.Errorf("--%s needs --peers", f)
					}
				}
			}
			level := slog.LevelInfo
			if debug {
				level = slog.LevelDebug
			}
			opts.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			if path := os.Getenv("CLUSTERIP_CPUPROFILE"); path != "" {
				// For profiling the datapath; written when the daemon stops.
				f, err := os.Create(path)
				if err != nil {
					return err
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			// SIGHUP's default action would kill the daemon without
			// restoring the host, and systemd counts that death as a clean
			// exit. Until it reloads the config, the daemon says so and
			// carries on.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			go func() {
				for range hup {
					opts.Log.Warn("SIGHUP ignored: reloading the config is not supported yet; restart the daemon to apply a changed --config")
				}
			}()
			return daemon.Run(ctx, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&controlDir, "control-dir", daemon.DefaultControlDir, "directory of the control files (one per VIP)")
	f.StringVar(&dpMode, "datapath", "auto", "auto: the kernel answers settled connections itself (eBPF on TCX, Linux 6.6+), user space the rest; user: every packet through user space")
	f.StringVar(&config, "config", "", "create the clusters this file declares at start (see clusterctl save)")
	f.StringSliceVar(&m.Peers, "peers", nil, "turn on heartbeats and automatic failover, joining these nodes (ADDR[:PORT],...; may include this node)")
	f.StringVar(&bind, "bind", "", "address to gossip on (default: this host's address towards the first peer)")
	f.IntVar(&m.Port, "gossip-port", 7946, "gossip port, TCP and UDP")
	f.StringVar(&m.KeyFile, "gossip-key", "", "file holding the shared gossip key, mode 0600 (clusterctl genkey FILE)")
	f.BoolVar(&m.Insecure, "gossip-insecure", false, "gossip without encryption or authentication")
	f.StringVar(&m.Name, "node-name", "", "this node's name in the membership (default: the host name)")
	f.DurationVar(&m.AloneAfter, "alone-after", 0, "serve every number alone if no peer was met within this time (0: never; a node that met no peer serves nothing)")
	f.BoolVar(&debug, "debug", false, "log at debug level (includes memberlist's probes)")
	f.IntVar(&workers, "workers", 0, "datapath readers per cluster, each with its own socket and TAP queue (0: one per CPU)")
	return cmd
}

func drainCommand(client func() daemon.Client) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "drain VIP",
		Short: "Hand this node's numbers to the others, keeping its open connections until they end",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := checkVIP(args[0]); err != nil {
				return err
			}
			return client().Drain(args[0], timeout)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "drop connections still open after this long (0: wait until they end)")
	return cmd
}

func resumeCommand(client func() daemon.Client) *cobra.Command {
	return &cobra.Command{
		Use:   "resume VIP",
		Short: "Take a drained node's numbers back",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := checkVIP(args[0]); err != nil {
				return err
			}
			return client().Resume(args[0])
		},
	}
}

func genkeyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "genkey FILE",
		Short: "Write a new gossip key to FILE, mode 0600 (copy the same file to every node); - prints it",
		Long: `Write a new gossip key to FILE, readable by its owner only. The daemon refuses a
key file that group or others can read or write: whoever can read it can join the
gossip and take node numbers away from real nodes. FILE "-" prints the key to
standard output instead, for piping to a secret store.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] == "-" {
				k, err := membership.GenerateKey()
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(cmd.OutOrStdout(), k)
				return err
			}
			return membership.WriteKeyFile(args[0])
		},
	}
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
			if err := checkVIP(args[0]); err != nil {
				return err
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
			return printStatus(out, st)
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

// checkVIP refuses a VIP argument that is not an IPv4 address before the
// daemon is asked anything.
func checkVIP(s string) error {
	if a, err := netip.ParseAddr(s); err != nil || !a.Is4() {
		return fmt.Errorf("VIP %q: not an IPv4 address", s)
	}
	return nil
}
