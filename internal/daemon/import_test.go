package daemon_test

import (
	"os"
	"strings"
	"testing"

	"github.com/clusterip/clusterip/internal/daemon"
)

// Rule sets as iptables-save and iptables -S print them with the CLUSTERIP
// extension (libxt_CLUSTERIP saves " --new --hashmode M --clustermac
// XX:XX:XX:XX:XX:XX --total-nodes N --local-node L --hash-init S", the MAC in
// capitals), in every hash mode, with a secondary rule, a comment match and
// other rules around them.
func TestImportIptables(t *testing.T) {
	for _, tc := range []struct {
		file    string
		want    []string // the new lines
		rules   int
		ignored int
		notes   int
	}{
		{"testdata/iptables-save-clusterip.txt", []string{
			"--vip 192.168.10.100 --interface eth0 --hashmode sourceip-sourceport --clustermac 01:00:5e:7f:01:64 --total-nodes 2 --local-node 1 --hash-init 0",
			"--vip 192.168.10.101 --interface eth0 --hashmode sourceip --clustermac 01:00:5e:00:00:20 --total-nodes 3 --local-node 2 --hash-init 1234",
			"--vip 192.168.20.5 --interface bond0.20 --hashmode sourceip-sourceport-destport --clustermac 01:00:5e:00:14:05 --total-nodes 16 --local-node 16 --hash-init 4294967295",
		}, 4, 3, 2},
		{"testdata/iptables-S-clusterip.txt", []string{
			"--vip 10.0.0.100 --interface eth1 --hashmode sourceip-sourceport --clustermac 71:51:25:4f:68:ce --total-nodes 3 --local-node 1 --hash-init 0",
		}, 1, 2, 0},
	} {
		t.Run(tc.file, func(t *testing.T) {
			f, err := os.Open(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			imp, err := daemon.ImportIptables(f)
			if err != nil || len(imp.Problems) != 0 {
				t.Fatalf("ImportIptables: %v, problems %q", err, imp.Problems)
			}
			if imp.Rules != tc.rules || imp.Ignored != tc.ignored || len(imp.Notes) != tc.notes {
				t.Errorf("%d rules, %d ignored, notes %q; want %d, %d, %d notes", imp.Rules, imp.Ignored, imp.Notes, tc.rules, tc.ignored, tc.notes)
			}
			var got []string
			for _, s := range imp.Specs {
				got = append(got, strings.Join(s.Args(), " "))
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("specs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			// What import prints, the daemon reads.
			specs, err := daemon.ParseConfig("imported", strings.NewReader(daemon.FormatConfig(imp.Specs)))
			if err != nil || len(specs) != len(tc.want) {
				t.Errorf("the config does not read back: %v, %d specs", err, len(specs))
			}
		})
	}
}

// Rules that cannot be translated faithfully are reported by line, and the
// rest still translated.
func TestImportIptablesProblems(t *testing.T) {
	good := "-A INPUT -d 10.0.0.1/32 -i eth0 -j CLUSTERIP --new --hashmode sourceip --clustermac 01:00:5E:00:00:01 --total-nodes 2 --local-node 1 --hash-init 0"
	for _, tc := range []struct{ name, rule, want string }{
		{"network", "-A INPUT -d 10.0.0.0/24 -i eth0 -j CLUSTERIP --new --hashmode sourceip --clustermac 01:00:5E:00:00:02 --total-nodes 2 --local-node 1", "not a network"},
		{"no -d", "-A INPUT -i eth0 -j CLUSTERIP --new --hashmode sourceip --clustermac 01:00:5E:00:00:02 --total-nodes 2 --local-node 1", "no -d"},
		{"no -i", "-A INPUT -d 10.0.0.2/32 -j CLUSTERIP --new --hashmode sourceip --clustermac 01:00:5E:00:00:02 --total-nodes 2 --local-node 1", "no -i"},
		{"wildcard", "-A INPUT -d 10.0.0.2/32 -i eth+ -j CLUSTERIP --new --hashmode sourceip --clustermac 01:00:5E:00:00:02 --total-nodes 2 --local-node 1", "wildcard"},
		{"negated", "-A INPUT ! -s 10.9.0.0/16 -d 10.0.0.2/32 -i eth0 -j CLUSTERIP --new --hashmode sourceip --clustermac 01:00:5E:00:00:02 --total-nodes 2 --local-node 1", "negated"},
		{"source match", "-A INPUT -s 10.9.0.0/16 -d 10.0.0.2/32 -i eth0 -j CLUSTERIP --new --hashmode sourceip --clustermac 01:00:5E:00:00:02 --total-nodes 2 --local-node 1", "more than the rule did"},
		{"bad mode", "-A INPUT -d 10.0.0.2/32 -i eth0 -j CLUSTERIP --new --hashmode sourceport --clustermac 01:00:5E:00:00:02 --total-nodes 2 --local-node 1", "--hashmode"},
		{"unicast MAC", "-A INPUT -d 10.0.0.2/32 -i eth0 -j CLUSTERIP --new --hashmode sourceip --clustermac 02:00:5E:00:00:02 --total-nodes 2 --local-node 1", "unicast"},
		{"no MAC", "-A INPUT -d 10.0.0.2/32 -i eth0 -j CLUSTERIP --new --hashmode sourceip --total-nodes 2 --local-node 1", "without --clustermac"},
		{"too many nodes", "-A INPUT -d 10.0.0.2/32 -i eth0 -j CLUSTERIP --new --hashmode sourceip --clustermac 01:00:5E:00:00:02 --total-nodes 65 --local-node 1", "out of range"},
		{"local beyond total", "-A INPUT -d 10.0.0.2/32 -i eth0 -j CLUSTERIP --new --hashmode sourceip --clustermac 01:00:5E:00:00:02 --total-nodes 2 --local-node 3", "out of range"},
		{"seed too big", "-A INPUT -d 10.0.0.2/32 -i eth0 -j CLUSTERIP --new --hashmode sourceip --clustermac 01:00:5E:00:00:02 --total-nodes 2 --hash-init 4294967296", "--hash-init"},
		{"unknown option", "-A INPUT -d 10.0.0.2/32 -i eth0 -j CLUSTERIP --new --hashmode sourceip --clustermac 01:00:5E:00:00:02 --total-nodes 2 --frobnicate 1", "unknown CLUSTERIP option"},
		{"twice", "-A INPUT -d 10.0.0.2/32 -i eth0 -j CLUSTERIP --new --hashmode sourceip --hashmode sourceip --clustermac 01:00:5E:00:00:02 --total-nodes 2", "twice"},
		{"value missing", "-A INPUT -d 10.0.0.2/32 -i eth0 -j CLUSTERIP --new --hashmode", "without a value"},
		{"reference without --new", "-A INPUT -d 10.0.0.3/32 -i eth0 -p tcp --dport 80 -j CLUSTERIP", "no --new rule for it"},
		{"conflicting --new", "-A INPUT -d 10.0.0.1/32 -i eth0 -j CLUSTERIP --new --hashmode sourceip --clustermac 01:00:5E:00:00:01 --total-nodes 3 --local-node 1", "other parameters"},
		{"unterminated quote", `-A INPUT -d 10.0.0.2/32 -m comment --comment "web -j CLUSTERIP`, "quote"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := "*filter\n" + good + "\n" + tc.rule + "\nCOMMIT\n"
			imp, err := daemon.ImportIptables(strings.NewReader(in))
			if err != nil {
				t.Fatal(err)
			}
			if len(imp.Problems) != 1 || !strings.HasPrefix(imp.Problems[0], "line 3: ") || !strings.Contains(imp.Problems[0], tc.want) {
				t.Errorf("problems %q, want one for line 3 containing %q", imp.Problems, tc.want)
			}
			if len(imp.Specs) != 1 || imp.Specs[0].VIP.String() != "10.0.0.1" {
				t.Errorf("the good rule was not translated: %+v", imp.Specs)
			}
		})
	}
}

func FuzzImportIptables(f *testing.F) {
	for _, name := range []string{"testdata/iptables-save-clusterip.txt", "testdata/iptables-S-clusterip.txt"} {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, in string) {
		imp, err := daemon.ImportIptables(strings.NewReader(in))
		if err != nil {
			return
		}
		for _, s := range imp.Specs {
			if err := s.Validate(); err != nil {
				t.Fatalf("import made an invalid spec %+v: %v", s, err)
			}
		}
		if _, err := daemon.ParseConfig("fuzz", strings.NewReader(daemon.FormatConfig(imp.Specs))); err != nil {
			t.Fatalf("import's config does not read back: %v", err)
		}
	})
}
