// Package cli is clusterctl's command tree: it parses flags and calls into
// the daemon, the datapath's hash and the lab. cmd/clusterctl runs it, and
// the documentation generator (tools/gendocs) renders its man pages and
// shell completions from it.
package cli
