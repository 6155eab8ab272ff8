// Package network builds the sandbox's networks out of Linux network
// namespaces: one node namespace per cluster (that cluster's private
// network, where its control plane and later its pods live) and one
// "internet" namespace that routes between the clusters' public addresses
// and the host. The host gets a single veth with a route for 198.18.0.0/15
// (the range reserved for network tests), so nothing ever routes to the
// host's real network.
//
//	host (198.18.0.1) ── isthmus0 ═ host ── [isthmus-inet 198.18.0.2] ── cN ═ uplink ── [isthmus-<cluster> 198.18.N.1]
//
// Cluster N owns 198.18.N.0/24 and is reached through its node namespace.
package network
