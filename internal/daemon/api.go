package daemon

import (
	"time"

	"github.com/clusterip/clusterip/nodeset"
)

// The control socket speaks one JSON request and one JSON response per
// connection. Clusters travel as the flags of `new` (Spec.Args), so the
// daemon validates exactly what a config file would.
type request struct {
	Op   string   `json:"op"`
	Args []string `json:"args,omitempty"`
	VIP  string   `json:"vip,omitempty"`
	// Timeout is drain's --timeout; nil when not given, so that a second
	// drain keeps the first one's.
	Timeout *time.Duration `json:"timeout,omitempty"`
}

type response struct {
	Error  string  `json:"error,omitempty"`
	Status *Status `json:"status,omitempty"`
	Text   string  `json:"text,omitempty"` // save's config file; reload's summary
}

const (
	opNew    = "new"
	opDelete = "delete"
	opStatus = "status"
	opSave   = "save"
	opDrain  = "drain"
	opResume = "resume"
	opReload = "reload"
)

// StatusSchema is the version of the Status document. Fields may be added
// within a version; one that changes meaning or goes away makes a new one.
const StatusSchema = 1

// Status is what `clusterctl status --json` prints: a stable, documented
// schema (README, "Status"). Names are snake_case, node numbers are lists
// of integers, and lists are [] when empty, never null.
type Status struct {
	Schema  int    `json:"schema"`
	Version string `json:"version"` // the daemon's build
	// Node is this daemon's member name, "" without --peers.
	Node string `json:"node"`
	// Problems keep the whole daemon from doing its job (a member name
	// conflict); each cluster's own are in its Problems.
	Problems []string        `json:"problems"`
	Clusters []ClusterStatus `json:"clusters"`
}

// ClusterStatus is one cluster.
type ClusterStatus struct {
	// The cluster as declared.
	VIP        string       `json:"vip"`
	Interface  string       `json:"interface"`
	HashMode   string       `json:"hashmode"`
	ClusterMAC string       `json:"clustermac"`
	TotalNodes int          `json:"total_nodes"`
	HashInit   uint32       `json:"hash_init"`
	HashCompat string       `json:"hash_compat"` // "clusterip" or "nftables"
	MACMode    string       `json:"mac_mode"`    // "multicast", "unicast" or "igmp"
	LocalNodes []int        `json:"local_nodes"` // the numbers it is given: --local-node and control-file changes
	Check      *CheckStatus `json:"check"`       // null without a health check

	// What it does now.
	Serving    []int  `json:"serving"`     // numbers whose new connections it answers
	KernelPath bool   `json:"kernel_path"` // the eBPF kernel path is attached
	InKernel   []int  `json:"in_kernel"`   // numbers the kernel path answers by itself
	Draining   bool   `json:"draining"`
	DrainUntil string `json:"drain_until"` // RFC 3339, "" for a drain without --timeout
	Tap        string `json:"tap"`
	// Flooding is the flood check: whether frames sent to the cluster MAC
	// reach every node.
	Flooding FloodingStatus `json:"flooding"`

	Packets PacketCounts   `json:"packets"`
	Flows   FlowCounts     `json:"flows"`
	Members []MemberStatus `json:"members"` // [] without --peers
	// Problems keep the node from serving this cluster, one line each
	// (the interface gone or down, or the daemon's own problems).
	Problems []string `json:"problems"`
}

// FloodingStatus is the flood check's verdict (README, "Switches").
type FloodingStatus struct {
	// State is broken when frames to the cluster MAC do not reach this node
	// or, with --peers, another that says so; unknown when no other node
	// was heard long enough to tell.
	State string `json:"state"`
	// Nodes are the nodes that frames to the cluster MAC do not reach:
	// this one, and with --peers the others that say so.
	Nodes []string `json:"nodes"`
	// MissingFrom are the nodes whose probes to the cluster MAC do not
	// reach this one; Peers the other nodes heard on the link.
	MissingFrom []string `json:"missing_from"`
	Peers       []string `json:"peers"`
}

// CheckStatus is a cluster's health check.
type CheckStatus struct {
	Check    string `json:"check"` // as --check takes it: tcp:PORT, http:URL or exec:COMMAND
	Interval string `json:"interval"`
	Timeout  string `json:"timeout"`
	Fall     int    `json:"fall"`
	Rise     int    `json:"rise"`
	Healthy  bool   `json:"healthy"`
	Last     string `json:"last"` // the last change and why, "" before any
}

// PacketCounts count what the node did with the packets to the VIP since the
// cluster was created (they survive a reload). Frames the node's filters
// leave out in the kernel (other nodes' numbers) are not seen, so not
// counted: "not answered" counts only packets that reached user space and
// turned out to be another node's (a number under handoff, another node's
// connection, a fragment).
type PacketCounts struct {
	KernelAnswered   uint64 `json:"kernel_answered"`   // taken by the kernel path
	UserAnswered     uint64 `json:"user_answered"`     // handed to the stack through the TAP
	UserNotAnswered  uint64 `json:"user_not_answered"` // reached user space, another node's
	Malformed        uint64 `json:"malformed"`
	Held             uint64 `json:"held"` // held while their number moved here
	ARPReplies       uint64 `json:"arp_replies"`
	NDReplies        uint64 `json:"nd_replies"` // neighbour advertisements (IPv6)
	FragmentsHeld    uint64 `json:"fragments_held"`
	FragmentsDropped uint64 `json:"fragments_dropped"`
	TapErrors        uint64 `json:"tap_errors"`
}

// FlowCounts describe the flow table (automatic failover only), as of its
// last sweep.
type FlowCounts struct {
	Tracked     int    `json:"tracked"`
	Kept        int    `json:"kept"`    // this node's connections of numbers served elsewhere now
	Foreign     int    `json:"foreign"` // other nodes' connections it leaves alone
	Untracked   uint64 `json:"untracked"`
	Evicted     uint64 `json:"evicted"`
	HeldPackets int    `json:"held_packets"`
	KeptNumbers []int  `json:"kept_numbers"`
}

// MemberStatus is one member as this node sees it.
type MemberStatus struct {
	Name       string `json:"name"`
	Addr       string `json:"addr"`
	State      string `json:"state"` // alive, suspect, dead, draining, unhealthy
	Home       []int  `json:"home"`
	Serving    []int  `json:"serving"`
	HandingOff []int  `json:"handing_off"`
	KeepsFlows []int  `json:"keeps_flows_of"`
}

// numbers renders a set as the schema's list of integers, [] when empty.
func numbers(s nodeset.NodeSet) []int {
	n := s.Nodes()
	if n == nil {
		return []int{}
	}
	return n
}
