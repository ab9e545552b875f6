// Package membership tells every node which nodes are alive and what each
// one serves, and from that, deterministically, which node should serve each
// node number of each cluster.
//
// It runs on hashicorp/memberlist (SWIM gossip with Lifeguard, as in Consul
// and Serf), encrypted and authenticated with a shared key. Each node
// publishes per cluster: its home numbers, the numbers it serves now, the
// ones it is handing off, the ones it still keeps connections for, and
// whether it drains or fails its health check. The states travel in
// messages of their own, each cluster's versioned, and memberlist's node
// metadata carries only their summary (see sync.go), so a node may have
// thousands of clusters. Every node runs Assign over the same view and
// reaches the same answer.
package membership
