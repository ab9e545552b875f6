package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/clusterip/clusterip/internal/daemon"
	"github.com/clusterip/clusterip/nodeset"
)

func dash(s nodeset.NodeSet) string {
	if s.Len() == 0 {
		return "-"
	}
	return s.String()
}

// printStatus prints one table of clusters and, with automatic failover,
// one table of members per cluster.
func printStatus(out io.Writer, st []daemon.ClusterStatus) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "VIP\tINTERFACE\tMODE\tCLUSTERMAC\tTOTAL\tNODES\tIN-KERNEL\tOWNED\tKERNEL-OWNED\tNOT-OWNED\tMALFORMED\tKEPT-FLOWS\tTAP")
	for _, c := range st {
		s, err := c.Spec()
		if err != nil {
			return fmt.Errorf("daemon sent a bad cluster: %w", err)
		}
		inKernel := "off"
		if c.KernelPath {
			inKernel = dash(c.Kernel)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", s.VIP, s.Interface, s.Mode, s.ClusterMAC,
			s.TotalNodes, dash(c.Serving), inKernel, c.Stats.Owned, c.Stats.KernelTaken, c.Stats.NotOwned, c.Stats.Malformed, c.Flows.Kept, c.Tap)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	for _, c := range st {
		if len(c.Members) == 0 {
			continue
		}
		fmt.Fprintf(out, "\n%s members:\n", c.Args[1])
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "NAME\tADDRESS\tSTATE\tHOME\tSERVING\tHANDING-OFF\tKEEPS-FLOWS-OF")
		for _, m := range c.Members {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, m.Addr, m.State, dash(m.Home), dash(m.Serving), dash(m.Leaving), dash(m.Kept))
		}
		if err := w.Flush(); err != nil {
			return err
		}
		if c.Health != "" {
			fmt.Fprintf(out, "health check: %s\n", c.Health)
		}
	}
	for _, c := range st {
		for _, p := range c.Problems {
			fmt.Fprintf(out, "PROBLEM %s: %s\n", c.Args[1], p)
		}
	}
	return nil
}
