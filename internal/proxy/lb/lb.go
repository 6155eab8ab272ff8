// Package lb picks an upstream endpoint of a cluster: weighted round robin
// (Envoy's default; a gateway standing for three pods gets three turns),
// least request (power of two choices over in-flight requests), random, or
// consistent hashing on a ring (a request's hash keeps it on one endpoint
// while the endpoints stay).
// Unhealthy endpoints are skipped, and locality priorities fail over: all
// traffic goes to the best priority that has a healthy endpoint left.
// Picking takes no lock.
package lb

import (
	"hash/fnv"
	"math/rand/v2"
	"sort"
	"strconv"
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
	cum   []uint64
	total uint64
	// stride walks the weight line in steps coprime with total, about
	// total/φ apart, so round robin visits every slot once per cycle and
	// interleaves endpoints instead of serving one weight block at a time.
	stride uint64
	next   atomic.Uint64
	active []atomic.Int64
	// ring is the consistent-hash ring of a RingHash cluster, sorted by hash.
	ring []ringEntry
}

type ringEntry struct {
	hash uint64
	i    int
}

// Ring points per unit of endpoint weight, and the most points a ring has.
const (
	pointsPerWeight = 160
	maxRing         = 1 << 16
)

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
		l.stride = coprimeNear(l.total, uint64(float64(l.total)*0.6180339887))
		l.active = make([]atomic.Int64, len(l.eps))
		if c.LB == config.RingHash {
			l.buildRing()
		}
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
		i = l.weighted(l.next.Add(1) * l.stride % l.total)
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

// buildRing places each endpoint on the ring pointsPerWeight times its
// weight, at hashes of its address, so that an endpoint leaving moves only
// its own keys; very large weights are scaled down to bound the ring.
func (l *level) buildRing() {
	per := uint64(pointsPerWeight)
	if l.total*per > maxRing {
		per = max(maxRing/l.total, 1)
	}
	for i, e := range l.eps {
		n := int(max(uint64(e.Weight)*per, 1))
		addr := e.Addr.String()
		for k := range n {
			l.ring = append(l.ring, ringEntry{hash: Hash(addr + "_" + strconv.Itoa(k)), i: i})
		}
	}
	sort.Slice(l.ring, func(a, b int) bool { return l.ring[a].hash < l.ring[b].hash })
}

// Hash is the ring's hash of a key: FNV-1a, then MurmurHash3's finalizer
// so that keys differing in a byte land far apart on the ring (plain FNV
// keeps "user1" and "user2", or one endpoint's points, close together).
// The same on every proxy, so replicas agree.
func Hash(key string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(key))
	x := h.Sum64()
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// PickHash picks by consistent hashing: the first endpoint at or after
// hash on the ring of the best priority with one left. Clusters that are
// not RingHash pick as Pick does.
func (p *Picker) PickHash(hash uint64, skip func(*config.Endpoint) bool) (*config.Endpoint, Lease) {
	for _, l := range p.levels {
		if len(l.ring) == 0 {
			if e, lease := l.pick(p.policy, skip); e != nil {
				return e, lease
			}
			continue
		}
		start := sort.Search(len(l.ring), func(i int) bool { return l.ring[i].hash >= hash })
		for k := range len(l.ring) {
			i := l.ring[(start+k)%len(l.ring)].i
			if skip == nil || !skip(l.eps[i]) {
				l.active[i].Add(1)
				return l.eps[i], Lease{l: l, i: i}
			}
		}
	}
	return nil, Lease{}
}

// Keyed is Pick for one request or connection: by consistent hashing on
// key when the cluster balances on a ring and there is a key, else as
// Pick does.
func (p *Picker) Keyed(key string) func(skip func(*config.Endpoint) bool) (*config.Endpoint, Lease) {
	if key == "" || p.policy != config.RingHash {
		return p.Pick
	}
	h := Hash(key)
	return func(skip func(*config.Endpoint) bool) (*config.Endpoint, Lease) { return p.PickHash(h, skip) }
}

// coprimeNear returns the number closest to want (at least 1) that shares
// no factor with n.
func coprimeNear(n, want uint64) uint64 {
	want = max(want, 1)
	for d := uint64(0); ; d++ {
		if d < want && gcd(want-d, n) == 1 {
			return want - d
		}
		if gcd(want+d, n) == 1 {
			return want + d
		}
	}
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// weighted finds the endpoint owning slot s of the weight line.
func (l *level) weighted(s uint64) int {
	return sort.Search(len(l.cum), func(i int) bool { return l.cum[i] > s })
}
