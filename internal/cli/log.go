package cli

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// newLogger makes the daemon's logger: text or JSON on w, at debug level
// with debug. Under journald (stderr is the stream JOURNAL_STREAM names),
// lines carry no time of their own: the journal stamps each one.
func newLogger(format string, debug bool, w *os.File) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if debug {
		opts.Level = slog.LevelDebug
	}
	if underJournal(w) {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	var h slog.Handler
	switch format {
	case "text":
		h = slog.NewTextHandler(w, opts)
	case "json":
		h = slog.NewJSONHandler(w, opts)
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
	return slog.New(h), nil
}

// underJournal tells whether w is the journal stream systemd connected:
// JOURNAL_STREAM holds its device and inode ("DEV:INO").
func underJournal(w *os.File) bool {
	devIno := os.Getenv("JOURNAL_STREAM")
	dev, ino, ok := strings.Cut(devIno, ":")
	if !ok {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(w.Fd()), &st); err != nil {
		return false
	}
	return strconv.FormatUint(uint64(st.Dev), 10) == dev && strconv.FormatUint(st.Ino, 10) == ino
}
