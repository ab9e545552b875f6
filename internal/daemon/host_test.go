package daemon

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// The journal's keys are relative to a root that is /proc/sys/net on a
// host; a temporary directory of regular files stands in for it here.

// sysctl creates a fake per-interface sysctl of eth0 holding value, as /proc
// prints it, and returns its journal key.
func sysctl(t *testing.T, root, name, value string) string {
	t.Helper()
	return ifaceSetting(t, root, "eth0", name, value)
}

func ifaceSetting(t *testing.T, root, iface, name, value string) string {
	t.Helper()
	key := ifaceSysctl(iface, name)
	path := filepath.Join(root, key)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(value+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return key
}

// value reads a fake sysctl by key, trimmed as readSysctl trims it.
func value(t *testing.T, root, key string) string {
	t.Helper()
	v, err := readSysctl(filepath.Join(root, key))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// journaled returns the journal file's contents, or nil when there is none.
func journaled(t *testing.T, path string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]string
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("journal %s: %v", data, err)
	}
	return m
}

func openJournal(t *testing.T, path string) *hostJournal {
	t.Helper()
	j, err := openHostJournalAt(path, filepath.Dir(path))
	if err != nil {
		t.Fatalf("openHostJournal: %v", err)
	}
	return j
}

func TestHostJournalSetRecordsOriginalOnce(t *testing.T) {
	dir := t.TempDir()
	jpath := filepath.Join(dir, "clusterip.sock.journal")
	ignore := sysctl(t, dir, "arp_ignore", "0")
	j := openJournal(t, jpath)

	if err := j.set(ignore, "1"); err != nil {
		t.Fatalf("set: %v", err)
	}
	if got := journaled(t, jpath); got[ignore] != "0" || len(got) != 1 {
		t.Fatalf("journal = %v, want only %s: 0", got, ignore)
	}
	if err := j.set(ignore, "2"); err != nil {
		t.Fatalf("second set: %v", err)
	}
	if v := value(t, dir, ignore); v != "2" {
		t.Fatalf("sysctl = %q, want 2", v)
	}
	if got := journaled(t, jpath); got[ignore] != "0" {
		t.Fatalf("journal = %v after a second set, want the original 0 kept", got)
	}

	if err := j.restore(ignore); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if v := value(t, dir, ignore); v != "0" {
		t.Fatalf("sysctl = %q after restore, want 0", v)
	}
	if _, err := os.Stat(jpath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("journal still there with nothing to restore: %v", err)
	}
	// Once restored, the value is forgotten: a later change by someone
	// else is not undone by another restore.
	sysctl(t, dir, "arp_ignore", "8")
	if err := j.restore(ignore); err != nil {
		t.Fatalf("second restore: %v", err)
	}
	if v := value(t, dir, ignore); v != "8" {
		t.Fatalf("sysctl = %q after a second restore, want it untouched (8)", v)
	}
}

func TestHostJournalSetMissingSysctl(t *testing.T) {
	dir := t.TempDir()
	jpath := filepath.Join(dir, "journal")
	j := openJournal(t, jpath)
	missing := filepath.Join(dir, "no-such-interface", "arp_ignore")
	if err := j.set(missing, "1"); err == nil {
		t.Fatal("set of a missing sysctl succeeded")
	}
	if got := journaled(t, jpath); got != nil {
		t.Fatalf("journal = %v after a failed set, want none", got)
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("set created the missing sysctl: %v", err)
	}
}

func TestHostJournalRestoreGoneSysctl(t *testing.T) {
	// The interface went away with the daemon's changes: nothing to do.
	dir := t.TempDir()
	jpath := filepath.Join(dir, "journal")
	announce := ifaceSetting(t, dir, "veth0", "arp_announce", "0")
	j := openJournal(t, jpath)
	if err := j.set(announce, "2"); err != nil {
		t.Fatalf("set: %v", err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "ipv4/conf/veth0")); err != nil {
		t.Fatal(err)
	}
	if err := j.restore(announce); err != nil {
		t.Fatalf("restore of a vanished sysctl: %v", err)
	}
	if got := journaled(t, jpath); got != nil {
		t.Fatalf("journal = %v, want the vanished sysctl forgotten", got)
	}
}

func TestHostJournalRestoreAll(t *testing.T) {
	dir := t.TempDir()
	jpath := filepath.Join(dir, "journal")
	want := map[string]string{}
	set := map[string]string{}
	for _, s := range []struct{ name, found, set string }{
		{"drop_unicast_in_l2_multicast", "0", "1"},
		{"arp_ignore", "0", "1"},
		{"arp_announce", "1", "2"},
	} {
		k := sysctl(t, dir, s.name, s.found)
		want[k], set[k] = s.found, s.set
	}
	j := openJournal(t, jpath)
	for k, v := range set {
		if err := j.set(k, v); err != nil {
			t.Fatalf("set: %v", err)
		}
	}
	if got := journaled(t, jpath); len(got) != len(set) {
		t.Fatalf("journal = %v, want %d entries", got, len(set))
	}
	if err := j.restoreAll(); err != nil {
		t.Fatalf("restoreAll: %v", err)
	}
	for k, w := range want {
		if v := value(t, dir, k); v != w {
			t.Errorf("%s = %q after restoreAll, want %q", k, v, w)
		}
	}
	if _, err := os.Stat(jpath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("journal still there after restoreAll: %v", err)
	}
	// restoreAll with nothing journaled and no file is fine.
	if err := j.restoreAll(); err != nil {
		t.Fatalf("second restoreAll: %v", err)
	}
}

func TestHostJournalCrash(t *testing.T) {
	dir := t.TempDir()
	jpath := filepath.Join(dir, "clusterip.sock.journal")
	drop := sysctl(t, dir, "drop_unicast_in_l2_multicast", "0")
	announce := sysctl(t, dir, "arp_announce", "1")

	crashed := openJournal(t, jpath)
	if err := crashed.set(drop, "1"); err != nil {
		t.Fatal(err)
	}
	if err := crashed.set(announce, "2"); err != nil {
		t.Fatal(err)
	}
	// The daemon dies here: no restore. The next one opens the journal.
	j := openJournal(t, jpath)

	if v := value(t, dir, drop); v != "0" {
		t.Errorf("drop_unicast_in_l2_multicast = %q after restart, want 0", v)
	}
	if v := value(t, dir, announce); v != "1" {
		t.Errorf("arp_announce = %q after restart, want 1", v)
	}
	if _, err := os.Stat(jpath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("journal still there after recovery: %v", err)
	}
	// The new journal starts empty and works.
	if err := j.set(announce, "2"); err != nil {
		t.Fatalf("set after recovery: %v", err)
	}
	if got := journaled(t, jpath); len(got) != 1 || got[announce] != "1" {
		t.Fatalf("journal = %v, want only %s: 1", got, announce)
	}
}

func TestHostJournalCrashRestoreFails(t *testing.T) {
	// A sysctl that cannot be written back keeps its entry, and the error
	// is reported; the others are restored.
	dir := t.TempDir()
	jpath := filepath.Join(dir, "journal")
	ok := sysctl(t, dir, "arp_announce", "1")
	stuck := sysctl(t, dir, "arp_ignore", "0")

	crashed := openJournal(t, jpath)
	for _, p := range []string{ok, stuck} {
		if err := crashed.set(p, "2"); err != nil {
			t.Fatal(err)
		}
	}
	// A directory in its place makes the write fail with EISDIR, even
	// for root.
	if err := os.Remove(filepath.Join(dir, stuck)); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, stuck), 0o755); err != nil {
		t.Fatal(err)
	}

	j, err := openHostJournalAt(jpath, dir)
	if err == nil {
		t.Fatal("openHostJournal hid a failed restore")
	}
	if j == nil {
		t.Fatal("openHostJournal returned no journal with its restore error")
	}
	if v := value(t, dir, ok); v != "1" {
		t.Errorf("arp_announce = %q, want 1", v)
	}
	if got := journaled(t, jpath); len(got) != 1 || got[stuck] != "0" {
		t.Fatalf("journal = %v, want only the stuck sysctl", got)
	}
}

func TestHostJournalUnreadable(t *testing.T) {
	for _, tt := range []struct{ name, data string }{
		{"torn", `{"/proc/sys/net/ipv4/conf/eth0/arp_ignore":"0`},
		{"empty", ""},
		{"not an object", `["a"]`},
		{"wrong value type", `{"a":1}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			jpath := filepath.Join(dir, "journal")
			if err := os.WriteFile(jpath, []byte(tt.data), 0o600); err != nil {
				t.Fatal(err)
			}
			j := openJournal(t, jpath)
			if _, err := os.Stat(jpath); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("unreadable journal not discarded: %v", err)
			}
			ignore := sysctl(t, dir, "arp_ignore", "0")
			if err := j.set(ignore, "1"); err != nil {
				t.Fatalf("set after discarding: %v", err)
			}
			if got := journaled(t, jpath); got[ignore] != "0" {
				t.Fatalf("journal = %v", got)
			}
		})
	}
}

func TestHostJournalNull(t *testing.T) {
	dir := t.TempDir()
	jpath := filepath.Join(dir, "journal")
	if err := os.WriteFile(jpath, []byte("null"), 0o600); err != nil {
		t.Fatal(err)
	}
	j := openJournal(t, jpath)
	ignore := sysctl(t, dir, "arp_ignore", "0")
	if err := j.set(ignore, "1"); err != nil {
		t.Fatalf("set: %v", err)
	}
	if got := journaled(t, jpath); got[ignore] != "0" {
		t.Fatalf("journal = %v", got)
	}
}

func TestHostJournalReadError(t *testing.T) {
	dir := t.TempDir()
	jpath := filepath.Join(dir, "journal")
	if err := os.Mkdir(jpath, 0o755); err != nil {
		t.Fatal(err)
	}
	j, err := openHostJournalAt(jpath, dir)
	if err == nil {
		t.Fatal("openHostJournal of a directory succeeded")
	}
	// Run carries on after logging err, so j must be usable.
	if j == nil {
		t.Fatal("openHostJournal returned a nil journal that Run goes on to use")
	}
}

// A journal is acted on by root at the next start: one that names anything
// but the daemon's own settings, holds anything but numbers, or that anyone
// else could have written, is refused whole, and nothing it says is done.
func TestHostJournalRefusesTamperedEntries(t *testing.T) {
	for _, tt := range []struct{ name, data, want string }{
		{"outside conf", `{"/etc/passwd":"0"}`, "/etc/passwd"},
		{"dot-dot", `{"ipv4/conf/eth0/../../../../../etc/cron.d/x":"0"}`, "etc/cron.d"},
		{"dot-dot interface", `{"ipv4/conf/../arp_ignore":"0"}`, "ipv4/conf/../arp_ignore"},
		{"another setting", `{"ipv4/conf/eth0/forwarding":"1"}`, "forwarding"},
		{"an IPv4 setting under ipv6", `{"ipv6/conf/eth0/arp_ignore":"1"}`, "ipv6/conf/eth0/arp_ignore"},
		{"another IPv6 setting", `{"ipv6/conf/eth0/disable_ipv6":"1"}`, "disable_ipv6"},
		{"another family", `{"ipv6/conf/eth0/disable_ipv6":"1"}`, "ipv6"},
		{"absolute elsewhere", `{"/proc/sys/kernel/core_pattern":"0"}`, "core_pattern"},
		{"not a number", `{"ipv4/conf/eth0/arp_ignore":"|/tmp/x"}`, "not a number"},
		{"newline value", `{"ipv4/conf/eth0/arp_ignore":"1\n2"}`, "not a number"},
		{"one bad among good", `{"ipv4/conf/eth0/arp_ignore":"0","/etc/shadow":"0"}`, "/etc/shadow"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			jpath := filepath.Join(dir, "journal")
			ignore := sysctl(t, dir, "arp_ignore", "5")
			if err := os.WriteFile(jpath, []byte(tt.data), 0o600); err != nil {
				t.Fatal(err)
			}
			j, err := openHostJournalAt(jpath, dir)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("openHostJournal: %v, want an error naming %q", err, tt.want)
			}
			if v := value(t, dir, ignore); v != "5" {
				t.Errorf("a refused journal was acted on: arp_ignore = %s", v)
			}
			if j == nil || len(j.found) != 0 {
				t.Fatalf("refused journal's entries were taken: %v", j)
			}
		})
	}
}

func TestHostJournalIPv6Setting(t *testing.T) {
	m, err := parseJournal([]byte(`{"ipv6/conf/eth0/drop_unicast_in_l2_multicast":"0","ipv4/conf/eth0/arp_ignore":"0"}`))
	if err != nil || m["ipv6/conf/eth0/drop_unicast_in_l2_multicast"] != "0" || len(m) != 2 {
		t.Fatalf("parseJournal = %v, %v", m, err)
	}
}

func TestHostJournalAbsoluteKeysOfEarlierVersions(t *testing.T) {
	m, err := parseJournal([]byte(`{"/proc/sys/net/ipv4/conf/eth0/arp_announce":"1"}`))
	if err != nil || m["ipv4/conf/eth0/arp_announce"] != "1" || len(m) != 1 {
		t.Fatalf("parseJournal = %v, %v", m, err)
	}
}

func TestHostJournalRefusesUntrustedFile(t *testing.T) {
	for _, tt := range []struct {
		name  string
		plant func(t *testing.T, jpath, data string)
		want  string
	}{
		{"symbolic link", func(t *testing.T, jpath, data string) {
			target := jpath + ".elsewhere"
			os.WriteFile(target, []byte(data), 0o600)
			if err := os.Symlink(target, jpath); err != nil {
				t.Fatal(err)
			}
		}, "symbolic link"},
		{"world-writable", func(t *testing.T, jpath, data string) {
			os.WriteFile(jpath, []byte(data), 0o600)
			os.Chmod(jpath, 0o666)
		}, "writable by group or others"},
		{"other owner", func(t *testing.T, jpath, data string) {
			os.WriteFile(jpath, []byte(data), 0o600)
			if err := os.Chown(jpath, 65534, 65534); err != nil {
				t.Skipf("chown: %v", err)
			}
		}, "owned by uid 65534"},
		{"fifo", func(t *testing.T, jpath, data string) {
			if err := syscall.Mkfifo(jpath, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			jpath := filepath.Join(dir, "journal")
			ignore := sysctl(t, dir, "arp_ignore", "5")
			tt.plant(t, jpath, `{"ipv4/conf/eth0/arp_ignore":"0"}`)
			j, err := openHostJournalAt(jpath, dir)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("openHostJournal: %v, want %q", err, tt.want)
			}
			if v := value(t, dir, ignore); v != "5" {
				t.Errorf("untrusted journal acted on: arp_ignore = %s", v)
			}
			// The daemon goes on with a fresh journal, which replaces the
			// planted file (or link) rather than writing through it.
			if err := j.set(ignore, "1"); err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Lstat(jpath); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
				t.Errorf("journal after set: %v %v", fi, err)
			}
		})
	}
}

// A link planted where the journal's temporary file goes is removed, not
// followed.
func TestHostJournalTempLinkNotFollowed(t *testing.T) {
	dir := t.TempDir()
	jpath := filepath.Join(dir, "journal")
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, jpath+".tmp"); err != nil {
		t.Fatal(err)
	}
	j := openJournal(t, jpath)
	if err := j.set(sysctl(t, dir, "arp_ignore", "0"), "1"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious" {
		t.Errorf("the journal wrote through a planted link: victim holds %q", b)
	}
	if got := journaled(t, jpath); got["ipv4/conf/eth0/arp_ignore"] != "0" {
		t.Errorf("journal = %v", got)
	}
}

func TestCheckPrivateDir(t *testing.T) {
	dir := t.TempDir()
	if err := checkPrivateDir(dir); err != nil {
		t.Fatalf("private directory refused: %v", err)
	}
	for _, mode := range []os.FileMode{0o777, 0o1777, 0o775, 0o757} {
		os.Chmod(dir, mode)
		if err := checkPrivateDir(dir); err == nil || !strings.Contains(err.Error(), "writable by group or others") {
			t.Errorf("mode %04o: %v, want refusal", mode, err)
		}
	}
	os.Chmod(dir, 0o755)
	if err := os.Chown(dir, 65534, 65534); err == nil {
		if err := checkPrivateDir(dir); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
			t.Errorf("directory of another user: %v, want refusal", err)
		}
	}
}

func FuzzParseJournal(f *testing.F) {
	f.Add([]byte(`{"ipv4/conf/eth0/arp_ignore":"0"}`))
	f.Add([]byte(`{"/proc/sys/net/ipv4/conf/eth0/arp_announce":"-1"}`))
	f.Add([]byte(`{"ipv4/conf/eth0/../arp_ignore":"0"}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseJournal(data)
		if err != nil {
			return
		}
		for k, v := range m {
			clean := filepath.Clean(filepath.Join(sysctlRoot, k))
			v4 := strings.HasPrefix(clean, sysctlRoot+"/ipv4/conf/") && journaledSettings[filepath.Base(clean)]
			v6 := strings.HasPrefix(clean, sysctlRoot+"/ipv6/conf/") && filepath.Base(clean) == "drop_unicast_in_l2_multicast"
			if !v4 && !v6 || strings.Count(k, "/") != 3 {
				t.Fatalf("accepted key %q (%s)", k, clean)
			}
			if _, err := strconv.Atoi(v); err != nil {
				t.Fatalf("accepted value %q", v)
			}
		}
	})
}
