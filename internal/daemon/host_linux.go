package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
)

// hostJournal records every sysctl the daemon changes, with the value it
// found, in a file next to the control socket. The record is written before
// the change, so a daemon killed at any point leaves enough behind for the
// next start to put the host back as it was.
//
// Root acts on what the file says at the next start, so the file is trusted
// only as far as it must be: it is read without following links, only when
// root owns it and nobody else can write it, and only if every entry names a
// setting the daemon itself changes, under root's /proc/sys/net, with a
// number for a value. Keys are relative to that root ("ipv4/conf/eth0/
// arp_ignore").
type hostJournal struct {
	path string
	root string // /proc/sys/net; a temporary directory in tests

	mu    sync.Mutex
	found map[string]string // key -> value before the daemon touched it
}

const sysctlRoot = "/proc/sys/net"

// journaledSettings are the per-interface settings the daemon changes, the
// only ones a journal may name.
var journaledSettings = map[string]bool{
	"drop_unicast_in_l2_multicast": true,
	"arp_ignore":                   true,
	"arp_announce":                 true,
}

// openHostJournal restores whatever a crashed predecessor left in the
// journal at path, then starts an empty one.
func openHostJournal(path string) (*hostJournal, error) {
	return openHostJournalAt(path, sysctlRoot)
}

func openHostJournalAt(path, root string) (*hostJournal, error) {
	j := &hostJournal{path: path, root: root, found: map[string]string{}}
	data, err := readJournalFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return j, nil
	case err != nil:
		// Nothing can be restored from it, but the daemon still needs a
		// journal for the changes it makes from now on; save replaces the
		// file (or link) itself, never what a link points to.
		return j, fmt.Errorf("host journal: %w", err)
	}
	left, err := parseJournal(data)
	if err != nil {
		if errors.Is(err, errTornJournal) {
			// A torn write can only lose the newest entry, whose change
			// had not been made yet; nothing to restore from it.
			os.Remove(path)
			return j, nil
		}
		return j, fmt.Errorf("host journal %s: %w; nothing restored from it", path, err)
	}
	j.found = left
	var errs []error
	for _, key := range j.keys() {
		errs = append(errs, j.restore(key))
	}
	return j, errors.Join(errs...)
}

// readJournalFile reads the journal if it is a regular file that only the
// daemon's user owns and can write.
func readJournalFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%s is a symbolic link; not trusted", path)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("%s is not a regular file; not trusted", path)
	case st != nil && int(st.Uid) != os.Geteuid():
		return nil, fmt.Errorf("%s is owned by uid %d, not the daemon's user; not trusted", path, st.Uid)
	case fi.Mode().Perm()&0o022 != 0:
		return nil, fmt.Errorf("%s is writable by group or others (mode %04o); not trusted", path, fi.Mode().Perm())
	case fi.Size() > maxJournalBytes:
		return nil, fmt.Errorf("%s is %d bytes, more than a journal can hold; not trusted", path, fi.Size())
	}
	return io.ReadAll(io.LimitReader(f, maxJournalBytes))
}

// maxJournalBytes is far more than three settings on every interface a
// host could have.
const maxJournalBytes = 1 << 20

var errTornJournal = errors.New("journal unreadable")

// parseJournal reads a journal's contents: a JSON object of keys and the
// values found. Anything but well-formed entries naming the daemon's own
// settings refuses the whole file: a journal that was tampered with is not
// trusted in part.
func parseJournal(data []byte) (map[string]string, error) {
	var raw map[string]string
	if err := json.Unmarshal(data, &raw); err != nil || raw == nil {
		return nil, errTornJournal
	}
	out := make(map[string]string, len(raw))
	for k, v := range raw {
		key, err := journalKey(k)
		if err != nil {
			return nil, err
		}
		if !isSysctlNumber(v) {
			return nil, fmt.Errorf("entry %q: value %q is not a number", k, v)
		}
		out[key] = v
	}
	return out, nil
}

// journalKey validates a key and returns it in its relative form. Keys that
// earlier versions wrote as absolute paths are accepted.
func journalKey(k string) (string, error) {
	rel := strings.TrimPrefix(k, sysctlRoot+"/")
	parts := strings.Split(rel, "/")
	if len(parts) != 4 || parts[1] != "conf" || !validIfaceName(parts[2]) ||
		!(parts[0] == "ipv4" && journaledSettings[parts[3]] || parts[0] == "ipv6" && parts[3] == "drop_unicast_in_l2_multicast") {
		return "", fmt.Errorf("entry %q: not one of the daemon's settings under %s/ipv{4,6}/conf/IFACE", k, sysctlRoot)
	}
	return rel, nil
}

// isSysctlNumber accepts the integers the journaled settings hold.
func isSysctlNumber(v string) bool {
	v = strings.TrimPrefix(v, "-")
	if v == "" || len(v) > 10 {
		return false
	}
	for _, c := range v {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func (j *hostJournal) keys() []string {
	keys := make([]string, 0, len(j.found))
	for k := range j.found {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// file is the sysctl file of a key.
func (j *hostJournal) file(key string) string { return filepath.Join(j.root, key) }

// set writes value to the sysctl key, journaling the value found first
// unless an earlier set already did.
func (j *hostJournal) set(key, value string) error {
	if _, err := journalKey(key); err != nil {
		return fmt.Errorf("sysctl %s: %w", key, err)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, ok := j.found[key]; !ok {
		old, err := readSysctl(j.file(key))
		if err != nil {
			return err
		}
		j.found[key] = old
		if err := j.save(); err != nil {
			delete(j.found, key)
			return err
		}
	}
	if err := os.WriteFile(j.file(key), []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s: %w", j.file(key), err)
	}
	return nil
}

// restore puts the sysctl key back to the value found and forgets it.
// A sysctl whose interface is gone needs nothing.
func (j *hostJournal) restore(key string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.restoreLocked(key)
}

func (j *hostJournal) restoreLocked(key string) error {
	old, ok := j.found[key]
	if !ok {
		return nil
	}
	err := os.WriteFile(j.file(key), []byte(old), 0o644)
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("restore sysctl %s: %w", j.file(key), err)
	}
	delete(j.found, key)
	return j.save()
}

// forget drops the entries of an interface that is gone: its settings went
// with it, and a new interface of the same name starts from its own.
func (j *hostJournal) forget(iface string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	for k := range j.found {
		if strings.HasPrefix(k, "ipv4/conf/"+iface+"/") || strings.HasPrefix(k, "ipv6/conf/"+iface+"/") {
			delete(j.found, k)
		}
	}
	return j.save()
}

// restoreAll restores every journaled sysctl and removes the journal.
func (j *hostJournal) restoreAll() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	var errs []error
	for _, k := range j.keys() {
		errs = append(errs, j.restoreLocked(k))
	}
	if len(j.found) == 0 {
		if err := os.Remove(j.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// save writes the journal through a temporary file created afresh (never
// one somebody left, never through a link) and renamed over the journal.
func (j *hostJournal) save() error {
	if len(j.found) == 0 {
		if err := os.Remove(j.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("host journal: %w", err)
		}
		return nil
	}
	data, err := json.Marshal(j.found)
	if err != nil {
		return fmt.Errorf("host journal: %w", err)
	}
	tmp := j.path + ".tmp"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("host journal: %w", err)
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("host journal: %w", err)
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, j.path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("host journal: %w", err)
	}
	return nil
}

func readSysctl(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("sysctl %s: %w", path, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// ifaceSysctl is the journal key of an IPv4 per-interface setting.
func ifaceSysctl(iface, name string) string {
	return "ipv4/conf/" + iface + "/" + name
}

// ifaceSysctl6 is the journal key of an IPv6 per-interface setting.
func ifaceSysctl6(iface, name string) string {
	return "ipv6/conf/" + iface + "/" + name
}

// interfaceSettings are what an interface carrying a VIP needs, measured on
// this kernel:
//   - drop_unicast_in_l2_multicast=1: the node's own stack must not take the
//     VIP's frames from the NIC (they are sent to the multicast cluster MAC);
//     only the owner's copy through the TAP may reach it, else every node
//     answers pings and UDP;
//   - arp_ignore>=1: the VIP lives on the TAP, so the kernel must not answer
//     ARP for it on this interface with the NIC's own MAC;
//   - arp_announce=2: nor use the VIP as the sender of its own ARP requests,
//     which would teach neighbours the NIC's MAC for the VIP.
//
// For an IPv6 VIP only the first is needed, as
// net.ipv6.conf.IFACE.drop_unicast_in_l2_multicast: without it every node's
// stack takes the VIP's frames to the cluster MAC (33:33:...) and answers.
// The other two have no IPv6 counterpart to set: the kernel answers a
// neighbour solicitation only for an address on the interface it came in
// on (ndisc_recv_ns looks the target up strictly), and solicits from an
// address of the outgoing interface (ndisc_solicit), never the TAP's VIP.
func applyInterfaceSettings(j *hostJournal, iface string, v6 bool) error {
	if v6 {
		return j.set(ifaceSysctl6(iface, "drop_unicast_in_l2_multicast"), "1")
	}
	if err := j.set(ifaceSysctl(iface, "drop_unicast_in_l2_multicast"), "1"); err != nil {
		return err
	}
	ignore, err := readSysctl(j.file(ifaceSysctl(iface, "arp_ignore")))
	if err != nil {
		return err
	}
	if ignore == "0" {
		if err := j.set(ifaceSysctl(iface, "arp_ignore"), "1"); err != nil {
			return err
		}
	}
	return j.set(ifaceSysctl(iface, "arp_announce"), "2")
}

func restoreInterfaceSettings(j *hostJournal, iface string, v6 bool) error {
	if v6 {
		return j.restore(ifaceSysctl6(iface, "drop_unicast_in_l2_multicast"))
	}
	return errors.Join(
		j.restore(ifaceSysctl(iface, "drop_unicast_in_l2_multicast")),
		j.restore(ifaceSysctl(iface, "arp_ignore")),
		j.restore(ifaceSysctl(iface, "arp_announce")),
	)
}
