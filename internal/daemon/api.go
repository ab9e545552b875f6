package daemon

import (
	"time"

	"github.com/clusterip/clusterip/internal/datapath"
	"github.com/clusterip/clusterip/nodeset"
)

// The control socket speaks one JSON request and one JSON response per
// connection. Clusters travel as the flags of `new` (Spec.Args), so the
// daemon validates exactly what a config file would.
type request struct {
	Op      string        `json:"op"`
	Args    []string      `json:"args,omitempty"`
	VIP     string        `json:"vip,omitempty"`
	Timeout time.Duration `json:"timeout,omitempty"`
}

type response struct {
	Error    string          `json:"error,omitempty"`
	Clusters []ClusterStatus `json:"clusters,omitempty"`
}

// ClusterStatus is one cluster as `clusterctl status` shows it.
type ClusterStatus struct {
	// Args is the cluster as `new` flags, as `save` writes it: with the
	// numbers held now, or with automatic failover the home numbers.
	Args    []string        `json:"args"`
	Serving nodeset.NodeSet `json:"serving"` // numbers answered now
	Tap     string          `json:"tap"`
	// Kernel is what the kernel path answers now; KernelPath tells
	// whether it is attached at all.
	Kernel     nodeset.NodeSet    `json:"kernel"`
	KernelPath bool               `json:"kernel_path"`
	Stats      datapath.Stats     `json:"stats"`
	Flows      datapath.FlowStats `json:"flows"`
	Draining   bool               `json:"draining,omitempty"`
	Health     string             `json:"health,omitempty"` // last health-check change
	Members    []MemberStatus     `json:"members,omitempty"`
	// Problems are what keeps the node from doing its job for this
	// cluster right now, each in one line (a name conflict, the interface
	// gone); empty when all is well.
	Problems []string `json:"problems,omitempty"`
}

// Spec parses the status's cluster definition.
func (s ClusterStatus) Spec() (Spec, error) { return ParseSpec(s.Args) }

const (
	opNew    = "new"
	opDelete = "delete"
	opStatus = "status"
	opDrain  = "drain"
	opResume = "resume"
)
