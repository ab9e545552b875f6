// Package buildinfo says which build of clusterip is running.
package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strings"
)

// version is set at link time by the Makefile (git describe):
//
//	-ldflags "-X github.com/clusterip/clusterip/internal/buildinfo.version=v1.2.3"
var version string

// Version is the build's version: the one set at link time, else the VCS
// revision Go recorded (a plain `go build` in a checkout), else "devel".
func Version() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if rev == "" {
		return "devel"
	}
	return "devel-" + rev[:min(12, len(rev))] + dirty
}

// String is the version with the Go version and platform, for `version`.
func String() string {
	return strings.Join([]string{Version(), runtime.Version(), runtime.GOOS + "/" + runtime.GOARCH}, " ")
}
