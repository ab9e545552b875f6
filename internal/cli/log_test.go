package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func logTo(t *testing.T, format string, journal bool) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if journal {
		var st syscall.Stat_t
		syscall.Fstat(int(f.Fd()), &st)
		t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino))
	} else {
		t.Setenv("JOURNAL_STREAM", "")
	}
	log, err := newLogger(format, false, f)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hello", "vip", "192.0.2.1")
	log.Debug("not shown")
	b, _ := os.ReadFile(path)
	return string(b)
}

// Under journald a line carries no time of its own; elsewhere it does.
func TestNewLogger(t *testing.T) {
	if got := logTo(t, "text", false); !strings.HasPrefix(got, "time=") || !strings.Contains(got, `level=INFO msg=hello vip=192.0.2.1`) {
		t.Errorf("text: %q", got)
	}
	if got := logTo(t, "text", true); strings.Contains(got, "time=") || !strings.HasPrefix(got, "level=INFO msg=hello") {
		t.Errorf("text under journald: %q", got)
	}
	if got := logTo(t, "json", false); !strings.HasPrefix(got, `{"time":`) || !strings.Contains(got, `"msg":"hello","vip":"192.0.2.1"`) {
		t.Errorf("json: %q", got)
	}
	if got := logTo(t, "json", true); strings.Contains(got, `"time"`) {
		t.Errorf("json under journald: %q", got)
	}
	if _, err := newLogger("xml", false, os.Stderr); err == nil {
		t.Error("--log-format xml accepted")
	}
}
