package daemon

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/clusterip/clusterip/hash"
	"github.com/clusterip/clusterip/nodeset"
)

// Imported is what ImportIptables made of a rule set.
type Imported struct {
	Specs []Spec // one per VIP, in the order of their --new rules
	// Notes say what the translation left out of a rule it translated
	// (port matches: a cluster serves every port of its VIP), by line.
	Notes []string
	// Problems are the CLUSTERIP rules it could not translate, by line.
	Problems []string
	Rules    int // CLUSTERIP rules read
	Ignored  int // other rules (-A/-I lines without -j CLUSTERIP)
}

// ImportIptables reads iptables-save or iptables -S output and translates
// every CLUSTERIP rule: a rule with --new becomes one cluster, with its
// interface, VIP, MAC, hash mode, total, local node and hash-init; a rule
// without --new refers to the cluster of its VIP and adds nothing. Anything
// it cannot carry over faithfully is a problem, never a silent guess.
func ImportIptables(r io.Reader) (Imported, error) {
	var out Imported
	byVIP := map[netip.Addr]int{}  // index into out.Specs
	refs := map[netip.Addr][]int{} // lines of rules without --new
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "[") {
			// iptables-save -c puts the counters first: "[12:3456] -A ..."
			if k := strings.IndexByte(line, ']'); k > 0 {
				line = strings.TrimSpace(line[k+1:])
			}
		}
		if !strings.HasPrefix(line, "-A ") && !strings.HasPrefix(line, "-I ") {
			continue // tables, policies, chains, COMMIT, comments
		}
		words, err := splitQuoted(line)
		if err != nil {
			out.Problems = append(out.Problems, fmt.Sprintf("line %d: %v", n, err))
			continue
		}
		j := indexOf(words, "-j")
		if j < 0 || j+1 >= len(words) || words[j+1] != "CLUSTERIP" {
			if indexOf(words, "CLUSTERIP") >= 0 && (j < 0 || j+1 >= len(words)) {
				out.Problems = append(out.Problems, fmt.Sprintf("line %d: CLUSTERIP without -j", n))
				continue
			}
			out.Ignored++
			continue
		}
		out.Rules++
		rule, err := parseClusterIPRule(words[:j], words[j+2:])
		if err != nil {
			out.Problems = append(out.Problems, fmt.Sprintf("line %d: %v", n, err))
			continue
		}
		if rule.note != "" {
			out.Notes = append(out.Notes, fmt.Sprintf("line %d: %s", n, rule.note))
		}
		if !rule.isNew {
			refs[rule.spec.VIP] = append(refs[rule.spec.VIP], n)
			continue
		}
		if i, ok := byVIP[rule.spec.VIP]; ok {
			// The kernel kept the first rule's cluster and ignored a
			// later rule's parameters: one that differs is a mistake the
			// translation must not hide. Local nodes add up.
			if !sameCluster(out.Specs[i], rule.spec) {
				out.Problems = append(out.Problems, fmt.Sprintf("line %d: a second --new rule for %s with other parameters (%s): which one the nodes meant is unclear",
					n, rule.spec.VIP, strings.Join(rule.spec.Args(), " ")))
				continue
			}
			out.Specs[i].LocalNodes |= rule.spec.LocalNodes
			continue
		}
		byVIP[rule.spec.VIP] = len(out.Specs)
		out.Specs = append(out.Specs, rule.spec)
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("reading the rules: %w", err)
	}
	for vip, lines := range refs {
		if _, ok := byVIP[vip]; !ok {
			for _, n := range lines {
				out.Problems = append(out.Problems, fmt.Sprintf("line %d: CLUSTERIP rule for %s without --new, and no --new rule for it: its parameters are unknown", n, vip))
			}
		}
	}
	return out, nil
}

type clusterIPRule struct {
	spec  Spec
	isNew bool
	note  string
}

// parseClusterIPRule reads the match part (before -j) and the target
// options (after -j CLUSTERIP) of one rule.
func parseClusterIPRule(match, opts []string) (clusterIPRule, error) {
	var r clusterIPRule
	var left []string                 // matches the cluster cannot express
	for i := 2; i < len(match); i++ { // past "-A CHAIN"
		w := match[i]
		val := func() (string, error) {
			if i+1 >= len(match) {
				return "", fmt.Errorf("%s without a value", w)
			}
			i++
			return match[i], nil
		}
		switch w {
		case "!":
			return r, fmt.Errorf("a negated match (! %s): a cluster has no such exception", strings.Join(match[i+1:min(i+3, len(match))], " "))
		case "-d", "--destination", "--dst":
			v, err := val()
			if err != nil {
				return r, err
			}
			p, err := netip.ParsePrefix(v)
			if err != nil {
				a, aerr := netip.ParseAddr(v)
				if aerr != nil {
					return r, fmt.Errorf("-d %q: not an address", v)
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			if p.Bits() != p.Addr().BitLen() {
				return r, fmt.Errorf("-d %s: CLUSTERIP needs one address, not a network", v)
			}
			r.spec.VIP = p.Addr()
		case "-i", "--in-interface":
			v, err := val()
			if err != nil {
				return r, err
			}
			if strings.HasSuffix(v, "+") {
				return r, fmt.Errorf("-i %s: a wildcard interface; a cluster needs one", v)
			}
			r.spec.Interface = v
		case "-p", "--protocol", "--dport", "--sport", "--dports", "--sports", "--destination-port", "--source-port":
			v, err := val()
			if err != nil {
				return r, err
			}
			left = append(left, w+" "+v)
		case "-m", "--match", "--comment":
			if _, err := val(); err != nil {
				return r, err
			}
		default:
			return r, fmt.Errorf("match %s: the cluster would serve more than the rule did", w)
		}
	}
	if !r.spec.VIP.IsValid() {
		return r, fmt.Errorf("no -d: CLUSTERIP needs the VIP as the destination")
	}
	if len(left) > 0 {
		r.note = fmt.Sprintf("%s: the rule matched only %s; the cluster serves every protocol and port of the VIP", r.spec.VIP, strings.Join(left, " "))
	}
	seen := map[string]bool{}
	for i := 0; i < len(opts); i++ {
		w := opts[i]
		if seen[w] {
			return r, fmt.Errorf("%s given twice", w)
		}
		seen[w] = true
		if w == "--new" {
			r.isNew = true
			continue
		}
		if i+1 >= len(opts) {
			return r, fmt.Errorf("%s without a value", w)
		}
		i++
		v := opts[i]
		var err error
		switch w {
		case "--hashmode":
			r.spec.Mode, err = hash.ParseMode(v)
		case "--clustermac":
			r.spec.ClusterMAC, err = net.ParseMAC(v)
		case "--total-nodes":
			r.spec.TotalNodes, err = strconv.Atoi(v)
		case "--local-node":
			var n int
			if n, err = strconv.Atoi(v); err == nil {
				if n < 1 || n > nodeset.Max {
					err = fmt.Errorf("out of range 1..%d", nodeset.Max)
				} else {
					r.spec.LocalNodes = r.spec.LocalNodes.Add(n)
				}
			}
		case "--hash-init":
			var s uint64
			s, err = strconv.ParseUint(v, 0, 32)
			r.spec.HashInit = uint32(s)
		default:
			return r, fmt.Errorf("unknown CLUSTERIP option %s", w)
		}
		if err != nil {
			return r, fmt.Errorf("%s %s: %v", w, v, err)
		}
	}
	if !r.isNew {
		if len(seen) > 0 {
			return r, fmt.Errorf("CLUSTERIP options without --new")
		}
		return r, nil
	}
	if r.spec.Interface == "" {
		return r, fmt.Errorf("%s: no -i: a cluster needs its interface", r.spec.VIP)
	}
	for _, need := range []string{"--hashmode", "--clustermac", "--total-nodes"} {
		if !seen[need] {
			return r, fmt.Errorf("%s: --new without %s", r.spec.VIP, need)
		}
	}
	if err := r.spec.Validate(); err != nil {
		return r, fmt.Errorf("%s: %v", r.spec.VIP, err)
	}
	return r, nil
}

func indexOf(words []string, w string) int {
	for i, x := range words {
		if x == w {
			return i
		}
	}
	return -1
}
