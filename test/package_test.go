package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// `make deb` builds a package holding the program, the unit, man pages,
// completions, documentation and the example configuration as conffiles; it
// installs with apt and leaves nothing behind when purged.
func TestDebianPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and installs a package")
	}
	for _, tool := range []string{"dpkg-deb", "apt-get", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
	if out, err := exec.Command("dpkg-query", "-W", "clusterip").CombinedOutput(); err == nil {
		t.Skipf("clusterip is installed on this host already: %s", out)
	}
	build := exec.Command("make", "--no-print-directory", "-C", "..", "deb")
	out, err := build.CombinedOutput()
	if err != nil {
		t.Fatalf("make deb: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	deb, _ := filepath.Abs(filepath.Join("..", lines[len(lines)-1]))
	t.Cleanup(func() { os.RemoveAll(filepath.Join("..", "build")) })

	contents, err := exec.Command("dpkg-deb", "-c", deb).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"./usr/sbin/clusterctl",
		"./lib/systemd/system/clusterip.service",
		"./usr/share/man/man8/clusterctl.8.gz",
		"./usr/share/man/man8/clusterctl-daemon.8.gz",
		"./usr/share/man/man8/clusterctl-reload.8.gz",
		"./usr/share/bash-completion/completions/clusterctl",
		"./usr/share/zsh/vendor-completions/_clusterctl",
		"./usr/share/fish/vendor_completions.d/clusterctl.fish",
		"./usr/share/doc/clusterip/README.md",
		"./usr/lib/ocf/resource.d/clusterip/ClusterIP",
		"./usr/lib/clusterip/charon-clusterip",
		"./usr/share/doc/clusterip/copyright",
		"./usr/share/doc/clusterip/examples/grafana-dashboard.json",
		"./usr/share/doc/clusterip/examples/alerts.yml",
		"./etc/clusterip/clusters.conf",
		"./etc/default/clusterip",
	}
	for _, w := range want {
		if !strings.Contains(string(contents), " "+w+"\n") {
			t.Errorf("package lacks %s", w)
		}
	}
	if strings.Contains(string(contents), "labctl") {
		t.Errorf("package ships the lab harness")
	}
	conffiles, _ := exec.Command("dpkg-deb", "-I", deb, "conffiles").Output()
	if string(conffiles) != "/etc/clusterip/clusters.conf\n/etc/default/clusterip\n" {
		t.Errorf("conffiles %q", conffiles)
	}

	install := exec.Command("apt-get", "install", "-y", "-q", "--no-install-recommends", deb)
	install.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	t.Cleanup(func() { exec.Command("dpkg", "--purge", "clusterip").Run() })
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("apt-get install %s: %v\n%s", deb, err, out)
	}
	if out, err := exec.Command("/usr/sbin/clusterctl", "version").CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "clusterctl ") {
		t.Errorf("installed clusterctl version: %v %s", err, out)
	}
	unit, _ := os.ReadFile("/lib/systemd/system/clusterip.service")
	if !strings.Contains(string(unit), "ExecStart=/usr/sbin/clusterctl daemon --config /etc/clusterip/clusters.conf $CLUSTERIP_OPTS") {
		t.Errorf("installed unit:\n%s", unit)
	}
	// The shipped config loads: the daemon would start with it.
	if out, err := exec.Command("/usr/sbin/clusterctl", "check", "/etc/clusterip/clusters.conf").CombinedOutput(); err != nil {
		t.Errorf("check of the shipped config: %v %s", err, out)
	}
	if out, err := exec.Command("dpkg", "--purge", "clusterip").CombinedOutput(); err != nil {
		t.Fatalf("purge: %v %s", err, out)
	}
	for _, w := range want {
		if _, err := os.Stat(strings.TrimPrefix(w, ".")); err == nil {
			t.Errorf("%s left after purge", w)
		}
	}
}
