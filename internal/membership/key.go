package membership

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
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

// LoadKey reads a key file written from GenerateKey's output.
func LoadKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	return ParseKey(strings.TrimSpace(string(b)))
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
