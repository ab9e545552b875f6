// Command gendocs writes clusterctl's man pages and shell completions,
// generated from its command tree, for `make install` and `make deb`:
//
//	go run ./tools/gendocs DIR
//
// writes DIR/man8/clusterctl*.8, DIR/completions/clusterctl.bash, _clusterctl
// (zsh) and clusterctl.fish.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/clusterip/clusterip/internal/buildinfo"
	"github.com/clusterip/clusterip/internal/cli"
	"github.com/spf13/cobra/doc"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gendocs DIR")
		os.Exit(2)
	}
	if err := generate(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
}

func generate(dir string) error {
	root := cli.Root()
	root.DisableAutoGenTag = true
	man := filepath.Join(dir, "man8")
	comp := filepath.Join(dir, "completions")
	for _, d := range []string{man, comp} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// A fixed date keeps the pages the same from build to build of one
	// version.
	date := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if epoch := os.Getenv("SOURCE_DATE_EPOCH"); epoch != "" {
		var s int64
		if _, err := fmt.Sscan(epoch, &s); err == nil {
			date = time.Unix(s, 0).UTC()
		}
	}
	header := &doc.GenManHeader{Title: "CLUSTERCTL", Section: "8", Source: "clusterip " + buildinfo.Version(),
		Manual: "System Manager's Manual", Date: &date}
	if err := doc.GenManTree(root, header, man); err != nil {
		return fmt.Errorf("man pages: %w", err)
	}
	for name, gen := range map[string]func(string) error{
		"clusterctl.bash": func(p string) error { return root.GenBashCompletionFileV2(p, true) },
		"_clusterctl":     root.GenZshCompletionFile,
		"clusterctl.fish": func(p string) error { return root.GenFishCompletionFile(p, true) },
	} {
		if err := gen(filepath.Join(comp, name)); err != nil {
			return fmt.Errorf("completion %s: %w", name, err)
		}
	}
	return nil
}
