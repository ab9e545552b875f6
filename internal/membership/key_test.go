package membership_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clusterip/clusterip/internal/membership"
)

func TestGenerateKeyRoundTrip(t *testing.T) {
	seen := map[string]bool{}
	for range 20 {
		s, err := membership.GenerateKey()
		if err != nil {
			t.Fatalf("GenerateKey: %v", err)
		}
		if s != strings.TrimSpace(s) {
			t.Fatalf("GenerateKey = %q, has surrounding space", s)
		}
		if seen[s] {
			t.Fatalf("GenerateKey returned %q twice", s)
		}
		seen[s] = true
		k, err := membership.ParseKey(s)
		if err != nil {
			t.Fatalf("ParseKey(GenerateKey() = %q): %v", s, err)
		}
		if len(k) != membership.KeyLen || membership.KeyLen != 32 {
			t.Fatalf("key of %d bytes, KeyLen %d; want 32 (AES-256)", len(k), membership.KeyLen)
		}
		if got := base64.StdEncoding.EncodeToString(k); got != s {
			t.Fatalf("ParseKey(%q) re-encodes to %q", s, got)
		}
	}
}

func TestParseKey(t *testing.T) {
	key := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i * 7)
		}
		return base64.StdEncoding.EncodeToString(b)
	}
	tests := []struct {
		name string
		in   string
		len  int    // wanted key length when valid
		err  string // part of the error otherwise
	}{
		{"16 bytes", key(16), 16, ""},
		{"24 bytes", key(24), 24, ""},
		{"32 bytes", key(32), 32, ""},
		{"empty", "", 0, "0 bytes"},
		{"1 byte", key(1), 0, "1 bytes"},
		{"8 bytes", key(8), 0, "8 bytes"},
		{"15 bytes", key(15), 0, "15 bytes"},
		{"17 bytes", key(17), 0, "17 bytes"},
		{"31 bytes", key(31), 0, "31 bytes"},
		{"33 bytes", key(33), 0, "33 bytes"},
		{"64 bytes", key(64), 0, "64 bytes"},
		{"not base64", "not a key!", 0, "not base64"},
		{"missing padding", strings.TrimRight(key(16), "="), 0, "not base64"},
		{"URL alphabet", strings.NewReplacer("+", "-", "/", "_").Replace(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xfb, 0xff}, 16))), 0, "not base64"},
		{"raw bytes", string(make([]byte, 32)), 0, "not base64"},
		{"hex", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", 0, "48 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := membership.ParseKey(tc.in)
			if tc.err != "" {
				if err == nil {
					t.Fatalf("ParseKey(%q) = %d bytes, want an error", tc.in, len(k))
				}
				if k != nil {
					t.Errorf("ParseKey returned a key with its error")
				}
				if !strings.Contains(err.Error(), tc.err) {
					t.Errorf("error %q does not contain %q", err, tc.err)
				}
				if !strings.Contains(err.Error(), "genkey") {
					t.Errorf("error %q does not say how to make a key", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseKey(%q): %v", tc.in, err)
			}
			if len(k) != tc.len {
				t.Fatalf("ParseKey gave %d bytes, want %d", len(k), tc.len)
			}
			for i, b := range k {
				if b != byte(i*7) {
					t.Fatalf("byte %d = %d, want %d", i, b, byte(i*7))
				}
			}
		})
	}
}

func TestLoadKey(t *testing.T) {
	s, err := membership.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	want, err := membership.ParseKey(s)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		name, content string
	}{
		{"bare", s},
		{"newline", s + "\n"},
		{"CRLF", s + "\r\n"},
		{"spaces and tabs", " \t" + s + " \n\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := membership.LoadKey(path)
			if err != nil {
				t.Fatalf("LoadKey: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("LoadKey = %x, want %x", got, want)
			}
		})
	}

	t.Run("missing file", func(t *testing.T) {
		_, err := membership.LoadKey(filepath.Join(dir, "absent"))
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("LoadKey(absent) = %v, want a not-exist error", err)
		}
		if !strings.Contains(err.Error(), "gossip key") {
			t.Errorf("error %q does not say what file it was", err)
		}
	})
	t.Run("bad content", func(t *testing.T) {
		path := filepath.Join(dir, "bad")
		if err := os.WriteFile(path, []byte("hello world\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if k, err := membership.LoadKey(path); err == nil {
			t.Fatalf("LoadKey(bad) = %x, want an error", k)
		}
	})
	t.Run("empty file", func(t *testing.T) {
		path := filepath.Join(dir, "empty")
		if err := os.WriteFile(path, []byte("\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if k, err := membership.LoadKey(path); err == nil {
			t.Fatalf("LoadKey(empty) = %x, want an error", k)
		}
	})
	t.Run("group or others can read or write", func(t *testing.T) {
		for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666} {
			path := filepath.Join(dir, fmt.Sprintf("mode%o", mode))
			if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			os.Chmod(path, mode)
			_, err := membership.LoadKey(path)
			if err == nil || !strings.Contains(err.Error(), "chmod 600 "+path) {
				t.Errorf("mode %04o: LoadKey = %v, want a refusal naming the file and the fix", mode, err)
			}
		}
	})
	t.Run("owner only", func(t *testing.T) {
		for _, mode := range []os.FileMode{0o600, 0o400} {
			path := filepath.Join(dir, fmt.Sprintf("ok%o", mode))
			if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			os.Chmod(path, mode)
			if _, err := membership.LoadKey(path); err != nil {
				t.Errorf("mode %04o: %v", mode, err)
			}
		}
	})
	t.Run("another user's", func(t *testing.T) {
		path := filepath.Join(dir, "nobody")
		if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(path, 65534, 65534); err != nil || os.Geteuid() != 0 {
			t.Skip("needs root")
		}
		if _, err := membership.LoadKey(path); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
			t.Errorf("LoadKey = %v, want a refusal", err)
		}
	})
}

func TestWriteKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "gossip.key")
	if err := membership.WriteKeyFile(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v, %v; want mode 0600", fi, err)
	}
	if _, err := membership.LoadKey(path); err != nil {
		t.Fatalf("LoadKey of a fresh key file: %v", err)
	}
	first, _ := os.ReadFile(path)
	if err := membership.WriteKeyFile(path); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("second WriteKeyFile = %v, want a refusal to overwrite", err)
	}
	if again, _ := os.ReadFile(path); !bytes.Equal(again, first) {
		t.Fatal("a refused WriteKeyFile changed the key")
	}
	// Not through a planted link either.
	victim := filepath.Join(dir, "victim")
	os.WriteFile(victim, []byte("precious"), 0o644)
	link := filepath.Join(dir, "link.key")
	os.Symlink(victim, link)
	if err := membership.WriteKeyFile(link); err == nil {
		t.Fatal("WriteKeyFile wrote through a link")
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious" {
		t.Fatalf("victim now holds %q", b)
	}
}

func FuzzParseKey(f *testing.F) {
	k, _ := membership.GenerateKey()
	f.Add(k)
	f.Add("AAAA")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		key, err := membership.ParseKey(s)
		if err != nil {
			return
		}
		if n := len(key); n != 16 && n != 24 && n != 32 {
			t.Fatalf("ParseKey(%q) accepted a %d-byte key", s, n)
		}
	})
}
