package test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clusterip/clusterip/internal/lab"
)

// strongSwan's ha plugin, a real charon, pointed at the daemon's control
// files by dist/strongswan/charon-clusterip: at start it takes every
// segment away (its disable_all), and with no peer heard it takes them all
// (segment_count 2 of a cluster of 2), writing -N and +N as on CLUSTERIP.
func TestStrongSwanHAPlugin(t *testing.T) {
	const charon = "/usr/lib/ipsec/charon"
	if _, err := os.Stat(charon); err != nil {
		t.Skip("strongSwan's charon not installed (apt-get install strongswan-charon libcharon-extra-plugins)")
	}
	if _, err := os.Stat("/usr/lib/ipsec/plugins/libstrongswan-ha.so"); err != nil {
		t.Skip("strongSwan's ha plugin not installed (apt-get install libcharon-extra-plugins)")
	}
	wrapper, _ := filepath.Abs("../dist/strongswan/charon-clusterip")
	c := newDaemonsOnly(t, 1)
	n1 := c.Nodes[0]
	c.ctl(n1, "new", "--vip", lab.VIP.String(), "--interface", "eth0", "--hashmode", "sourceip", "--hash-init", "0",
		"--total-nodes", "2", "--local-node", "1")
	conf := filepath.Join(c.Dir, "strongswan.conf")
	if err := os.WriteFile(conf, []byte(`charon {
  load_modular = no
  load = random nonce sha1 sha2 hmac kernel-netlink socket-default ha
  port = 0
  port_nat_t = 0
  plugins {
    ha {
      local = `+n1.Addr.String()+`
      remote = 192.0.2.250
      segment_count = 2
      heartbeat_delay = 300
      heartbeat_timeout = 1000
    }
  }
  filelog {
    stderr {
      default = 1
      cfg = 2
    }
  }
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	// charon keeps its pid file and sockets under /run: give it a /run of
	// its own so the host's stays untouched.
	p, err := c.Start(n1, "charon", "unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount -t tmpfs none /run && exec env STRONGSWAN_CONF="$1" CLUSTERIP_CONTROL_DIR="$2" CHARON="$3" "$4"`,
		"sh", conf, c.ControlDir(n1), charon, wrapper)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(15, 5*time.Second) })
	file := c.ControlFileOf(n1, lab.VIP)
	eventually(t, 15*time.Second, "charon's ha plugin takes both segments", func() (bool, string) {
		return c.serving(n1) == "1,2", c.serving(n1) + "\n" + c.Log("charon")
	})
	log := c.Log("charon")
	if strings.Contains(log, "CLUSTERIP file") && strings.Contains(log, "failed") {
		t.Errorf("charon could not use %s:\n%s", file, log)
	}
	d := c.Log("daemon-" + n1.Name)
	if !strings.Contains(d, "command=-1") || !strings.Contains(d, "command=+2") {
		t.Errorf("the daemon did not see charon's -1 (disable_all) and +2:\n%s", d)
	}
}
