package daemon

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// The journal takes sysctl paths, so regular files in a temporary directory
// stand in for /proc/sys.

// sysctl creates a fake sysctl holding value, as /proc prints it.
func sysctl(t *testing.T, dir, name, value string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(value+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// value reads a fake sysctl, trimmed as readSysctl trims it.
func value(t *testing.T, path string) string {
	t.Helper()
	v, err := readSysctl(path)
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
	j, err := openHostJournal(path)
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
	if v := value(t, ignore); v != "2" {
		t.Fatalf("sysctl = %q, want 2", v)
	}
	if got := journaled(t, jpath); got[ignore] != "0" {
		t.Fatalf("journal = %v after a second set, want the original 0 kept", got)
	}

	if err := j.restore(ignore); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if v := value(t, ignore); v != "0" {
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
	if v := value(t, ignore); v != "8" {
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
	ifdir := filepath.Join(dir, "veth0")
	if err := os.Mkdir(ifdir, 0o755); err != nil {
		t.Fatal(err)
	}
	announce := sysctl(t, ifdir, "arp_announce", "0")
	j := openJournal(t, jpath)
	if err := j.set(announce, "2"); err != nil {
		t.Fatalf("set: %v", err)
	}
	if err := os.RemoveAll(ifdir); err != nil {
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
	paths := map[string]string{
		sysctl(t, dir, "drop_unicast_in_l2_multicast", "0"): "1",
		sysctl(t, dir, "arp_ignore", "0"):                   "1",
		sysctl(t, dir, "arp_announce", "1"):                 "2",
	}
	j := openJournal(t, jpath)
	for p, v := range paths {
		if err := j.set(p, v); err != nil {
			t.Fatalf("set: %v", err)
		}
	}
	if got := journaled(t, jpath); len(got) != len(paths) {
		t.Fatalf("journal = %v, want %d entries", got, len(paths))
	}
	if err := j.restoreAll(); err != nil {
		t.Fatalf("restoreAll: %v", err)
	}
	for p, want := range map[string]string{
		filepath.Join(dir, "drop_unicast_in_l2_multicast"): "0",
		filepath.Join(dir, "arp_ignore"):                   "0",
		filepath.Join(dir, "arp_announce"):                 "1",
	} {
		if v := value(t, p); v != want {
			t.Errorf("%s = %q after restoreAll, want %q", filepath.Base(p), v, want)
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

	if v := value(t, drop); v != "0" {
		t.Errorf("drop_unicast_in_l2_multicast = %q after restart, want 0", v)
	}
	if v := value(t, announce); v != "1" {
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
	if err := os.Remove(stuck); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(stuck, 0o755); err != nil {
		t.Fatal(err)
	}

	j, err := openHostJournal(jpath)
	if err == nil {
		t.Fatal("openHostJournal hid a failed restore")
	}
	if j == nil {
		t.Fatal("openHostJournal returned no journal with its restore error")
	}
	if v := value(t, ok); v != "1" {
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
	j, err := openHostJournal(jpath)
	if err == nil {
		t.Fatal("openHostJournal of a directory succeeded")
	}
	// Run carries on after logging err, so j must be usable.
	if j == nil {
		t.Fatal("openHostJournal returned a nil journal that Run goes on to use")
	}
}
