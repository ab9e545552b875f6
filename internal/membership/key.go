package membership

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"
)

// KeyLen is the length of a gossip key: AES-256-GCM.
const KeyLen = 32

// GenerateKey returns a new gossip key in the text form key files hold.
func GenerateKey() (string, error) {
	k := make([]byte, KeyLen)
	if _, err := rand.Read(k); err != nil {
		return "", fmt.Errorf("generate key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(k), nil
}

// WriteKeyFile writes a new key to path, readable and writable by its owner
// only. It never overwrites a file, nor writes through a link: a key is
// made once and copied.
func WriteKeyFile(path string) error {
	k, err := GenerateKey()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("gossip key %s: file exists; remove it first, or copy it to the nodes as it is", path)
		}
		return fmt.Errorf("gossip key: %w", err)
	}
	_, err = fmt.Fprintln(f, k)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("gossip key %s: %w", path, err)
	}
	return nil
}

// LoadKey reads a key file written by WriteKeyFile. Whoever can read the
// key can join the gossip as a member and take node numbers away from real
// ones, so, as ssh does with private keys, a file that group or others can
// read or write, or that another user owns, is refused.
func LoadKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	if err := checkKeyFile(path, fi); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	return ParseKey(strings.TrimSpace(string(b)))
}

func checkKeyFile(path string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("gossip key %s: not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("gossip key %s: mode %04o lets group or others read or write it; run: chmod 600 %s", path, perm, path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() && st.Uid != 0 {
		return fmt.Errorf("gossip key %s: owned by uid %d, not by root or the daemon's user; run: chown root %s", path, st.Uid, path)
	}
	return nil
}

// ParseKey decodes a key's text form.
func ParseKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("gossip key: not base64 (make one with: clusterctl genkey)")
	}
	switch len(k) {
	case 16, 24, 32:
		return k, nil
	}
	return nil, fmt.Errorf("gossip key: %d bytes, want 16, 24 or 32 (make one with: clusterctl genkey)", len(k))
}
