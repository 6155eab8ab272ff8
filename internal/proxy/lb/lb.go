// Package lb picks an upstream endpoint of a cluster: weighted round robin
// (Envoy's default; a gateway standing for three pods gets three turns),
// least request (power of two choices over in-flight requests), or random.
// Unhealthy endpoints are skipped. Picking takes no lock.
package lb

import (
	"math/rand/v2"
	"sort"
	"sync/atomic"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
)

// Picker balances one cluster's endpoints.
type Picker struct {
	policy config.LBPolicy
	eps    []*config.Endpoint
	// cum[i] is the total weight of eps[0..i].
	cum    []uint64
	total  uint64
	next   atomic.Uint64
	active []atomic.Int64
}

// New builds a picker over the healthy endpoints of c.
func New(c *config.Cluster) *Picker {
	p := &Picker{policy: c.LB}
	for _, e := range c.Endpoints {
		if e.Healthy {
			p.eps = append(p.eps, e)
		}
	}
	p.cum = make([]uint64, len(p.eps))
	for i, e := range p.eps {
		p.total += uint64(e.Weight)
		p.cum[i] = p.total
	}
	p.active = make([]atomic.Int64, len(p.eps))
	return p
}

// Len is the number of healthy endpoints.
func (p *Picker) Len() int { return len(p.eps) }

// Lease is an endpoint in use; Release it when the request or connection ends.
type Lease struct {
	p *Picker
	i int
}

// Release ends the use (a no-op on the zero Lease).
func (l Lease) Release() {
	if l.p != nil {
		l.p.active[l.i].Add(-1)
	}
}

// Pick returns an endpoint and its lease; skip (may be nil) excludes
// endpoints already tried. It returns nil when no endpoint is left.
func (p *Picker) Pick(skip func(*config.Endpoint) bool) (*config.Endpoint, Lease) {
	n := len(p.eps)
	if n == 0 {
		return nil, Lease{}
	}
	var i int
	switch p.policy {
	case config.LeastRequest:
		a, b := rand.IntN(n), rand.IntN(n)
		if p.active[b].Load() < p.active[a].Load() {
			a = b
		}
		i = a
	case config.Random:
		i = p.weighted(rand.Uint64N(p.total))
	default:
		i = p.weighted(p.next.Add(1) % p.total)
	}
	for tries := 0; skip != nil && skip(p.eps[i]); tries++ {
		if tries == n {
			return nil, Lease{}
		}
		i = (i + 1) % n
	}
	p.active[i].Add(1)
	return p.eps[i], Lease{p: p, i: i}
}

// weighted finds the endpoint owning slot s of the weight line.
func (p *Picker) weighted(s uint64) int {
	return sort.Search(len(p.cum), func(i int) bool { return p.cum[i] > s })
}
