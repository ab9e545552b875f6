package cli

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/internal/daemon"
)

// ranges renders node numbers compactly ("1-3,5"), "-" when there are none.
func ranges(ns []int) string {
	if len(ns) == 0 {
		return "-"
	}
	var parts []string
	for i := 0; i < len(ns); {
		j := i
		for j+1 < len(ns) && ns[j+1] == ns[j]+1 {
			j++
		}
		switch {
		case j == i:
			parts = append(parts, strconv.Itoa(ns[i]))
		case j == i+1:
			parts = append(parts, strconv.Itoa(ns[i]), strconv.Itoa(ns[j]))
		default:
			parts = append(parts, fmt.Sprintf("%d-%d", ns[i], ns[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

// shortMode is a hash mode in a table column.
func shortMode(c daemon.ClusterStatus) string {
	m := shortModeName(c.HashMode)
	if c.HashCompat == hash.NFTables.String() {
		m += "/nft"
	}
	return m
}

func shortModeName(m string) string {
	switch m {
	case hash.SourceIP.String():
		return "ip"
	case hash.SourceIPSourcePort.String():
		return "ip+sport"
	case hash.SourceIPSourcePortDestPort.String():
		return "ip+sport+dport"
	}
	return m
}

// state sums a cluster up in one word.
func state(c daemon.ClusterStatus) string {
	switch {
	case len(c.Problems) > 0:
		return "PROBLEM"
	case c.Draining:
		return "draining"
	case c.Check != nil && !c.Check.Healthy:
		return "unhealthy"
	}
	return "ok"
}

// printStatus prints one table of clusters, one of members per cluster
// with automatic failover, and a line per problem. The clusters' table
// fits 100 columns; wide adds the rest.
func printStatus(out io.Writer, st *daemon.Status, wide bool) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	if wide {
		fmt.Fprintln(w, "VIP\tINTERFACE\tMODE\tOF\tHOME\tSERVING\tIN-KERNEL\tKERNEL-ANSWERED\tUSER-ANSWERED\tUSER-NOT-ANSWERED\tMALFORMED\tHELD\tKEPT-FLOWS\tCLUSTERMAC\tMAC-MODE\tFLOODING\tTAP\tSTATE")
	} else {
		fmt.Fprintln(w, "VIP\tINTERFACE\tMODE\tOF\tSERVING\tIN-KERNEL\tANSWERED\tKEPT-FLOWS\tSTATE")
	}
	for _, c := range st.Clusters {
		inKernel := "off"
		if c.KernelPath {
			inKernel = ranges(c.InKernel)
		}
		p := c.Packets
		if wide {
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n", c.VIP, c.Interface, shortMode(c),
				c.TotalNodes, ranges(c.LocalNodes), ranges(c.Serving), inKernel, p.KernelAnswered, p.UserAnswered, p.UserNotAnswered,
				p.Malformed, p.Held, c.Flows.Kept, c.ClusterMAC, c.MACMode, c.Flooding.State, c.Tap, state(c))
			continue
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%d\t%s\n", c.VIP, c.Interface, shortMode(c), c.TotalNodes,
			ranges(c.Serving), inKernel, p.KernelAnswered+p.UserAnswered, c.Flows.Kept, state(c))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	for _, c := range st.Clusters {
		if len(c.Members) == 0 {
			continue
		}
		fmt.Fprintf(out, "\n%s members:\n", c.VIP)
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "NAME\tADDRESS\tSTATE\tHOME\tSERVING\tHANDING-OFF\tKEEPS-FLOWS-OF")
		for _, m := range c.Members {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, m.Addr, m.State, ranges(m.Home), ranges(m.Serving), ranges(m.HandingOff), ranges(m.KeepsFlows))
		}
		if err := w.Flush(); err != nil {
			return err
		}
		if c.Check != nil && c.Check.Last != "" {
			fmt.Fprintf(out, "health check %s: %s\n", c.Check.Check, c.Check.Last)
		}
	}
	seen := map[string]bool{}
	for _, p := range st.Problems {
		seen[p] = true
		fmt.Fprintf(out, "PROBLEM: %s\n", p)
	}
	for _, c := range st.Clusters {
		for _, p := range c.Problems {
			if !seen[p] {
				fmt.Fprintf(out, "PROBLEM %s: %s\n", c.VIP, p)
			}
		}
		if f := c.Flooding; f.State == "broken" && len(f.Nodes) > 0 {
			fmt.Fprintf(out, "FLOODING %s: broken: frames to the cluster MAC do not reach %s\n", c.VIP, strings.Join(f.Nodes, ", "))
		}
	}
	return nil
}
