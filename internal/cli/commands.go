package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/internal/buildinfo"
	"github.com/clusterip/clusterip/internal/daemon"
	"github.com/clusterip/clusterip/internal/lab"
	"github.com/clusterip/clusterip/internal/membership"
	"github.com/spf13/cobra"
)

// Root is the clusterctl command tree: the CLI, the daemon and the demo.
func Root() *cobra.Command {
	root := &cobra.Command{
		Use:   "clusterctl",
		Short: "A userspace CLUSTERIP: many nodes share one IP, a hash picks who answers",
		Long: `clusterctl runs and drives clusterip, a userspace replacement for the iptables CLUSTERIP
target: every node of a cluster holds the same virtual IP (VIP) and one multicast MAC, the switch
floods each frame to every node, and each node hashes the packet's source, exactly as the kernel
target did, so that only the owner of its node number answers.

"clusterctl daemon" runs the daemon (systemd runs it as clusterip.service, with its clusters in
/etc/clusterip/clusters.conf and its options in /etc/default/clusterip). The other commands talk
to it over its control socket (/run/clusterip.sock): new, delete, status, save, reload, drain and
resume. Each cluster has a control file, /run/clusterip/VIP, that behaves as
/proc/net/ipt_CLUSTERIP/VIP did: cat shows the node numbers held, "echo +N" and "echo -N" change
them. With --peers the daemons watch each other and move node numbers by themselves.

The README (/usr/share/doc/clusterip/README.md) covers set-up, failover, metrics, hooks and the
status document.`,
		Version:       buildinfo.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("clusterctl {{.Version}}\n")
	root.AddCommand(
		daemonCommand(),
		newCommand(),
		deleteCommand(),
		statusCommand(),
		saveCommand(),
		reloadCommand(),
		checkCommand(),
		drainCommand(),
		resumeCommand(),
		hashCommand(),
		importCommand(),
		genkeyCommand(),
		versionCommand(),
		demoCommand(),
	)
	return root
}

// socketFlag adds --socket to a command that talks to the daemon (or is
// the daemon) and returns the client for it.
func socketFlag(cmd *cobra.Command) func() daemon.Client {
	socket := os.Getenv("CLUSTERIP_SOCKET")
	if socket == "" {
		socket = daemon.DefaultSocket
	}
	cmd.Flags().StringVar(&socket, "socket", socket, "daemon control socket (env CLUSTERIP_SOCKET)")
	return func() daemon.Client { return daemon.Client{Socket: socket} }
}

func daemonCommand() *cobra.Command {
	var controlDir, config, bind, logFormat string
	var m daemon.MembershipOptions
	var debug bool
	var workers int
	var dpMode string
	var opts daemon.Options
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the daemon in the foreground (systemd runs it)",
		Long: `Run the daemon in the foreground (systemd runs it). It serves any number of clusters,
created from --config at start and with "clusterctl new" at run time, and stops on SIGTERM or
SIGINT, restoring the host. SIGHUP (or "clusterctl reload") re-reads --config.`,
		Args: cobra.NoArgs,
	}
	client := socketFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if workers < 0 || workers > 256 {
			return fmt.Errorf("--workers %d: want 0 (one per CPU)..256", workers)
		}
		if dpMode != "auto" && dpMode != "user" {
			return fmt.Errorf("--datapath %q: want auto or user", dpMode)
		}
		if opts.NotifyTimeout <= 0 {
			return fmt.Errorf("--notify-timeout %s: must be positive", opts.NotifyTimeout)
		}
		log, err := newLogger(logFormat, debug, os.Stderr)
		if err != nil {
			return err
		}
		opts.ControlDir, opts.Socket, opts.ConfigFile = controlDir, client().Socket, config
		opts.Workers, opts.UserOnly, opts.Log = workers, dpMode == "user", log
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
			if cmd.Flags().Changed("node-name") && (m.Name == "" || len(m.Name) > 64 || strings.ContainsFunc(m.Name, func(r rune) bool { return r < 0x21 || r == 0x7f })) {
				return fmt.Errorf("--node-name %q: want 1 to 64 printable bytes without spaces", m.Name)
			}
			opts.NodeName = m.Name
			for _, f := range []string{"bind", "gossip-port", "gossip-key", "gossip-insecure", "alone-after"} {
				if cmd.Flags().Changed(f) {
					return fmt.Errorf("--%s needs --peers", f)
				}
			}
		}
		if path := os.Getenv("CLUSTERIP_CPUPROFILE"); path != "" {
			// For profiling; written when the daemon stops. "%p" is the
			// daemon's PID, for labs of many daemons.
			f, err := os.Create(strings.ReplaceAll(path, "%p", strconv.Itoa(os.Getpid())))
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
		return daemon.Run(ctx, opts)
	}
	f := cmd.Flags()
	f.StringVar(&controlDir, "control-dir", daemon.DefaultControlDir, "directory of the control files (one per VIP)")
	f.StringVar(&dpMode, "datapath", "auto", "auto: the kernel answers settled connections itself (eBPF on TCX, Linux 6.6+), user space the rest; user: every packet through user space")
	f.StringVar(&config, "config", "", "create the clusters this file declares at start, and again on reload (see clusterctl save)")
	f.StringSliceVar(&m.Peers, "peers", nil, "turn on heartbeats and automatic failover, joining these nodes (ADDR[:PORT],...; may include this node)")
	f.StringVar(&bind, "bind", "", "address to gossip on (default: this host's address towards the first peer)")
	f.IntVar(&m.Port, "gossip-port", 7946, "gossip port, TCP and UDP")
	f.StringVar(&m.KeyFile, "gossip-key", "", "file holding the shared gossip key, mode 0600 (clusterctl genkey FILE)")
	f.BoolVar(&m.Insecure, "gossip-insecure", false, "gossip without encryption or authentication")
	f.StringVar(&m.Name, "node-name", "", "this node's name in the membership and to the other nodes' flood checks (default: the host name)")
	f.DurationVar(&m.AloneAfter, "alone-after", 0, "serve every number alone if no peer was met within this time (0: never; a node that met no peer serves nothing)")
	f.BoolVar(&debug, "debug", false, "log at debug level (includes memberlist's probes)")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	f.IntVar(&workers, "workers", 0, "datapath readers per cluster, each with its own socket and TAP queue (0: one per CPU)")
	f.StringVar(&opts.MetricsAddress, "metrics-address", "", "serve Prometheus metrics on ADDR:PORT at /metrics (off by default; 9787 is the documented port)")
	f.StringVar(&opts.Notify, "notify", "", "run this program when the numbers served for a VIP change, and when a member goes up or down (see README, Hooks)")
	f.DurationVar(&opts.NotifyTimeout, "notify-timeout", 10*time.Second, "kill a --notify program still running after this long")
	cmd.RegisterFlagCompletionFunc("datapath", fixedCompletions("auto", "user"))
	cmd.RegisterFlagCompletionFunc("log-format", fixedCompletions("text", "json"))
	return cmd
}

// vipCommand is a command that asks the daemon to do something to one
// cluster, named by its VIP (completed from the daemon's).
func vipCommand(use, short string, do func(cmd *cobra.Command, c daemon.Client, vip string) error) *cobra.Command {
	cmd := &cobra.Command{
		Use:               use,
		Short:             short,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: vipCompletions,
	}
	client := socketFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := checkVIP(args[0]); err != nil {
			return err
		}
		return do(cmd, client(), args[0])
	}
	return cmd
}

func drainCommand() *cobra.Command {
	var timeout time.Duration
	cmd := vipCommand("drain VIP", "Hand this node's numbers to the others, keeping its open connections until they end",
		func(cmd *cobra.Command, c daemon.Client, vip string) error {
			var t *time.Duration
			if cmd.Flags().Changed("timeout") {
				t = &timeout
			}
			return c.Drain(vip, t)
		})
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "drop connections still open after this long (0: wait until they end; left out, a drain in progress keeps its own)")
	return cmd
}

func resumeCommand() *cobra.Command {
	return vipCommand("resume VIP", "Take a drained node's numbers back",
		func(_ *cobra.Command, c daemon.Client, vip string) error { return c.Resume(vip) })
}

func deleteCommand() *cobra.Command {
	return vipCommand("delete VIP", "Remove a cluster",
		func(_ *cobra.Command, c daemon.Client, vip string) error { return c.Delete(vip) })
}

func genkeyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "genkey FILE",
		Short: "Write a new gossip key to FILE, mode 0600 (copy the same file to every node); - prints it",
		Long: `Write a new gossip key to FILE, readable by its owner only. The daemon refuses a
key file that group or others can read or write: whoever can read it can join the gossip and
take node numbers away from real nodes. FILE "-" prints the key to standard output instead, for
piping to a secret store.`,
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

func newCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "new --vip IP --interface IFACE --hashmode MODE --total-nodes N --local-node K [flags]",
		Short: "Create a cluster (iptables ... -j CLUSTERIP --new)",
		Args:  cobra.NoArgs,
	}
	build := daemon.SpecFlags(cmd.Flags())
	client := socketFlag(cmd)
	cmd.RunE = func(*cobra.Command, []string) error {
		spec, err := build()
		if err != nil {
			return err
		}
		return client().New(spec)
	}
	cmd.RegisterFlagCompletionFunc("hashmode", fixedCompletions(hashModes()...))
	cmd.RegisterFlagCompletionFunc("hash-compat", fixedCompletions(hash.CLUSTERIP.String(), hash.NFTables.String()))
	return cmd
}

func statusCommand() *cobra.Command {
	var asJSON bool
	var output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "List the clusters: what each serves, how, and what it answered",
		Long: `List the clusters: what each serves, how, and what it answered. The table fits 100
columns; -o wide adds the rest. --json prints the status document, whose schema is stable and
documented in the README.`,
		Args: cobra.NoArgs,
	}
	client := socketFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if output != "" && output != "wide" {
			return fmt.Errorf("-o %q: want wide", output)
		}
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
		return printStatus(out, st, output == "wide")
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status document as JSON")
	cmd.Flags().StringVarP(&output, "output", "o", "", "wide: every column")
	cmd.RegisterFlagCompletionFunc("output", fixedCompletions("wide"))
	return cmd
}

func importCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "import < RULES",
		Short: "Translate iptables-save (or iptables -S) output with CLUSTERIP rules into a config file",
		Long: `Read iptables-save or iptables -S output on standard input and print the equivalent config
file (see clusterctl save): every CLUSTERIP rule with --new becomes one "new" line, with its
interface, VIP, cluster MAC, hash mode, total nodes, local node and hash-init. Rules without
--new refer to their VIP's cluster; other rules are ignored and counted. A rule that cannot be
translated faithfully (a negated match, a network instead of one address, a wildcard interface,
an unknown option) is reported with its line number, and the command then exits non-zero.

  iptables-save | clusterctl import > /etc/clusterip/clusters.conf`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			imp, err := daemon.ImportIptables(cmd.InOrStdin())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			text := daemon.FormatConfig(imp.Specs)
			head, body, _ := strings.Cut(text, "\n# Load with")
			fmt.Fprintf(out, "%s\n# Imported: %d CLUSTERIP rules, %d clusters; %d other rules ignored.\n", head, imp.Rules, len(imp.Specs), imp.Ignored)
			for _, n := range imp.Notes {
				fmt.Fprintf(out, "# %s\n", n)
			}
			fmt.Fprint(out, "# Load with"+body)
			for _, p := range imp.Problems {
				fmt.Fprintf(cmd.ErrOrStderr(), "clusterctl import: %s\n", p)
			}
			if len(imp.Problems) > 0 {
				return fmt.Errorf("import: %d CLUSTERIP rules could not be translated (above); the output lacks them", len(imp.Problems))
			}
			return nil
		},
	}
}

func saveCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "save",
		Short: "Print the running clusters as a config file (clusterctl save > FILE)",
		Args:  cobra.NoArgs,
	}
	client := socketFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		text, err := client().Save()
		if err != nil {
			return err
		}
		_, err = fmt.Fprint(cmd.OutOrStdout(), text)
		return err
	}
	return cmd
}

func reloadCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "reload",
		Short: "Have the daemon re-read its --config and apply the difference (as SIGHUP does)",
		Long: `Have the daemon re-read its --config and apply the difference, as SIGHUP does: clusters
added to the file are created, those removed deleted, a changed node set moves numbers (through
handoffs, with --peers), and any other change recreates the cluster. A file with an error changes
nothing, and the error is printed here.`,
		Args: cobra.NoArgs,
	}
	client := socketFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		summary, err := client().Reload()
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(cmd.OutOrStdout(), summary)
		return err
	}
	return cmd
}

func checkCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "check FILE",
		Short: "Validate a config file without touching the host (exit 0 if the daemon would load it)",
		Long: `Validate a config file as the daemon would load it: its grammar, every value, that the
interfaces exist and are Ethernet, that no VIP is declared twice or is already an address of this
host. Nothing on the host changes. Exit status 0 when the file is good, 1 otherwise, with one line
per problem.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			specs, err := daemon.CheckConfig(args[0])
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: %d clusters, OK\n", args[0], len(specs))
			return err
		},
	}
}

func versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), "clusterctl", buildinfo.String())
			return err
		},
	}
}

func hashCommand() *cobra.Command {
	var mode, compat string
	var total, seed uint32
	cmd := &cobra.Command{
		Use:   "hash --hashmode MODE --total-nodes N [--hash-init SEED] [--hash-compat clusterip|nftables] SRC_IP [SRC_PORT [DST_PORT]]",
		Short: "Print the node that owns a packet, as the kernel's CLUSTERIP (or nftables' jhash) would pick it",
		Long: `Print the node that owns a packet from SRC_IP (and ports), as a cluster with these settings
picks it. --hash-compat clusterip (the default for IPv4) is the iptables CLUSTERIP target's hash;
nftables is that of "jhash ip saddr [. th sport [. th dport]] mod N seed S offset 1", and the only
hash for an IPv6 SRC_IP, so it is the default there.`,
		Args: cobra.RangeArgs(1, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := hash.ParseMode(mode)
			if err != nil {
				return fmt.Errorf("--hashmode: %w", err)
			}
			src, err := netip.ParseAddr(args[0])
			switch {
			case err != nil:
				return fmt.Errorf("SRC_IP %q: not an IPv4 or IPv6 address", args[0])
			case src.Zone() != "":
				return fmt.Errorf("SRC_IP %q: a zone is not part of an address the hash sees", args[0])
			case src.Is4In6():
				return fmt.Errorf("SRC_IP %q: write an IPv4-mapped address as IPv4", args[0])
			}
			c, err := hashCompat(compat, src)
			if err != nil {
				return err
			}
			cfg := hash.Config{Mode: m, TotalNodes: total, Seed: seed, Compat: c}
			if err := cfg.Validate(); err != nil {
				return err
			}
			switch {
			case m == hash.SourceIPSourcePort && len(args) < 2:
				return fmt.Errorf("--hashmode %s hashes the source port: give SRC_PORT", m)
			case m == hash.SourceIPSourcePortDestPort && len(args) < 3:
				return fmt.Errorf("--hashmode %s hashes both ports: give SRC_PORT and DST_PORT", m)
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
	cmd.Flags().StringVar(&compat, "hash-compat", "", "whose hash: clusterip (default for IPv4) or nftables (default and only choice for IPv6)")
	cmd.MarkFlagRequired("hashmode")
	cmd.MarkFlagRequired("total-nodes")
	cmd.RegisterFlagCompletionFunc("hashmode", fixedCompletions(hashModes()...))
	cmd.RegisterFlagCompletionFunc("hash-compat", fixedCompletions(hash.CLUSTERIP.String(), hash.NFTables.String()))
	return cmd
}

// hashCompat parses --hash-compat for an address of addr's family: empty
// means the family's default, and IPv6 has no CLUSTERIP hash.
func hashCompat(flag string, addr netip.Addr) (hash.Compat, error) {
	if flag == "" {
		if addr.Is6() {
			return hash.NFTables, nil
		}
		return hash.CLUSTERIP, nil
	}
	c, err := hash.ParseCompat(flag)
	if err != nil {
		return 0, fmt.Errorf("--hash-compat: %w", err)
	}
	if c == hash.CLUSTERIP && addr.Is6() {
		return 0, fmt.Errorf("--hash-compat clusterip: %s is IPv6, which only the nftables hash covers", addr)
	}
	return c, nil
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

// checkVIP refuses a VIP argument that is not an IP address before the
// daemon is asked anything.
func checkVIP(s string) error {
	if a, err := netip.ParseAddr(s); err != nil || a.Zone() != "" || a.Is4In6() {
		return fmt.Errorf("VIP %q: not an IPv4 or IPv6 address", s)
	}
	return nil
}

func hashModes() []string {
	return []string{hash.SourceIP.String(), hash.SourceIPSourcePort.String(), hash.SourceIPSourcePortDestPort.String()}
}

// fixedCompletions completes a flag from a fixed list.
func fixedCompletions(values ...string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return values, cobra.ShellCompDirectiveNoFileComp
	}
}

// vipCompletions completes a VIP argument from the running daemon.
func vipCompletions(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	socket, _ := cmd.Flags().GetString("socket")
	st, err := daemon.Client{Socket: socket}.Status()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var vips []string
	for _, c := range st.Clusters {
		vips = append(vips, c.VIP)
	}
	return vips, cobra.ShellCompDirectiveNoFileComp
}
