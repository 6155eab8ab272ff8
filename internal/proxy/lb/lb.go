// Package lb picks an upstream endpoint of a cluster: weighted round robin
// (Envoy's default; a gateway standing for three pods gets three turns),
// least request (power of two choices over in-flight requests), or random.
// Unhealthy endpoints are skipped, and locality priorities fail over: all
// traffic goes to the best priority that has a healthy endpoint left.
// Picking takes no lock.
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
	levels []*level // by priority, best first
}

// level is the healthy endpoints of one priority.
type level struct {
	eps []*config.Endpoint
	// cum[i] is the total weight of eps[0..i].
	cum    []uint64
	total  uint64
	next   atomic.Uint64
	active []atomic.Int64
}

// New builds a picker over the healthy endpoints of c.
func New(c *config.Cluster) *Picker {
	p := &Picker{policy: c.LB}
	byPrio := map[uint32]*level{}
	var prios []uint32
	for _, e := range c.Endpoints {
		if !e.Healthy {
			continue
		}
		l := byPrio[e.Priority]
		if l == nil {
			l = &level{}
			byPrio[e.Priority] = l
			prios = append(prios, e.Priority)
		}
		l.eps = append(l.eps, e)
	}
	sort.Slice(prios, func(i, j int) bool { return prios[i] < prios[j] })
	for _, pr := range prios {
		l := byPrio[pr]
		l.cum = make([]uint64, len(l.eps))
		for i, e := range l.eps {
			l.total += uint64(e.Weight)
			l.cum[i] = l.total
		}
		l.active = make([]atomic.Int64, len(l.eps))
		p.levels = append(p.levels, l)
	}
	return p
}

// Lease is an endpoint in use; Release it when the request or connection ends.
type Lease struct {
	l *level
	i int
}

// Release ends the use (a no-op on the zero Lease).
func (l Lease) Release() {
	if l.l != nil {
		l.l.active[l.i].Add(-1)
	}
}

// Pick returns an endpoint and its lease; skip (may be nil) excludes
// endpoints already tried. It returns nil when no endpoint is left.
func (p *Picker) Pick(skip func(*config.Endpoint) bool) (*config.Endpoint, Lease) {
	for _, l := range p.levels {
		if e, lease := l.pick(p.policy, skip); e != nil {
			return e, lease
		}
	}
	return nil, Lease{}
}

func (l *level) pick(policy config.LBPolicy, skip func(*config.Endpoint) bool) (*config.Endpoint, Lease) {
	n := len(l.eps)
	var i int
	switch policy {
	case config.LeastRequest:
		a, b := rand.IntN(n), rand.IntN(n)
		if l.active[b].Load() < l.active[a].Load() {
			a = b
		}
		i = a
	case config.Random:
		i = l.weighted(rand.Uint64N(l.total))
	default:
		i = l.weighted(l.next.Add(1) % l.total)
	}
	for tries := 0; skip != nil && skip(l.eps[i]); tries++ {
		if tries == n {
			return nil, Lease{}
		}
		i = (i + 1) % n
	}
	l.active[i].Add(1)
	return l.eps[i], Lease{l: l, i: i}
}

// weighted finds the endpoint owning slot s of the weight line.
func (l *level) weighted(s uint64) int {
	return sort.Search(len(l.cum), func(i int) bool { return l.cum[i] > s })
}
