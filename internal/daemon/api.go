package daemon

import (
	"github.com/clusterip/clusterip/internal/datapath"
)

// The control socket speaks one JSON request and one JSON response per
// connection. Clusters travel as the flags of `new` (Spec.Args), so the
// daemon validates exactly what a config file would.
type request struct {
	Op   string   `json:"op"`
	Args []string `json:"args,omitempty"`
	VIP  string   `json:"vip,omitempty"`
}

type response struct {
	Error    string          `json:"error,omitempty"`
	Clusters []ClusterStatus `json:"clusters,omitempty"`
}

// ClusterStatus is one cluster as `clusterctl status` shows it.
type ClusterStatus struct {
	Args  []string       `json:"args"` // the cluster as `new` flags, with the nodes held now
	Tap   string         `json:"tap"`
	Stats datapath.Stats `json:"stats"`
}

// Spec parses the status's cluster definition.
func (s ClusterStatus) Spec() (Spec, error) { return ParseSpec(s.Args) }

const (
	opNew    = "new"
	opDelete = "delete"
	opStatus = "status"
)
