package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// hostJournal records every sysctl the daemon changes, with the value it
// found, in a file next to the control socket. The record is written before
// the change, so a daemon killed at any point leaves enough behind for the
// next start to put the host back as it was.
type hostJournal struct {
	path string

	mu    sync.Mutex
	found map[string]string // sysctl path -> value before the daemon touched it
}

// openHostJournal restores whatever a crashed predecessor left in the
// journal at path, then starts an empty one.
func openHostJournal(path string) (*hostJournal, error) {
	j := &hostJournal{path: path, found: map[string]string{}}
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return j, nil
	case err != nil:
		// Nothing can be restored from it, but the daemon still needs a
		// journal for the changes it makes from now on.
		return j, fmt.Errorf("host journal: %w", err)
	}
	var left map[string]string
	if err := json.Unmarshal(data, &left); err != nil || left == nil {
		// A torn write can only lose the newest entry, whose change had not
		// been made yet; nothing to restore from an unreadable file.
		os.Remove(path)
		return j, nil
	}
	j.found = left
	var errs []error
	for _, key := range j.keys() {
		errs = append(errs, j.restore(key))
	}
	return j, errors.Join(errs...)
}

func (j *hostJournal) keys() []string {
	keys := make([]string, 0, len(j.found))
	for k := range j.found {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// set writes value to the sysctl at path, journaling the value found first
// unless an earlier set already did.
func (j *hostJournal) set(path, value string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, ok := j.found[path]; !ok {
		old, err := readSysctl(path)
		if err != nil {
			return err
		}
		j.found[path] = old
		if err := j.save(); err != nil {
			delete(j.found, path)
			return err
		}
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s: %w", path, err)
	}
	return nil
}

// restore puts the sysctl at path back to the value found and forgets it.
// A sysctl whose interface is gone needs nothing.
func (j *hostJournal) restore(path string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.restoreLocked(path)
}

func (j *hostJournal) restoreLocked(path string) error {
	old, ok := j.found[path]
	if !ok {
		return nil
	}
	err := os.WriteFile(path, []byte(old), 0o644)
	if errors.Is(err, os.ErrNotExist) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("restore sysctl %s: %w", path, err)
	}
	delete(j.found, path)
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
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("host journal: %w", err)
	}
	if err := os.Rename(tmp, j.path); err != nil {
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

// ifaceSysctl is the path of an IPv4 per-interface setting.
func ifaceSysctl(iface, name string) string {
	return filepath.Join("/proc/sys/net/ipv4/conf", iface, name)
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
func applyInterfaceSettings(j *hostJournal, iface string) error {
	if err := j.set(ifaceSysctl(iface, "drop_unicast_in_l2_multicast"), "1"); err != nil {
		return err
	}
	ignore, err := readSysctl(ifaceSysctl(iface, "arp_ignore"))
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

func restoreInterfaceSettings(j *hostJournal, iface string) error {
	return errors.Join(
		j.restore(ifaceSysctl(iface, "drop_unicast_in_l2_multicast")),
		j.restore(ifaceSysctl(iface, "arp_ignore")),
		j.restore(ifaceSysctl(iface, "arp_announce")),
	)
}
