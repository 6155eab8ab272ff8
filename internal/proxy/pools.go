package proxy

import (
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
)

// Connection pools are keyed by cluster, TLS identity and endpoint
// address, and made on first use. Without retiring them, every endpoint
// that ever left (a pod replaced in a rolling update), every removed
// cluster and every changed SAN list would keep its pool and its idle
// connections for the life of the proxy. As Envoy drains a host's pools
// when EDS removes it, retirePools closes what the new configuration no
// longer reaches: idle connections at once, busy ones when their
// exchange ends.

// transportPool is net/http's pool of one upstreamKey and how many of its
// connections are open, so a retired one knows when it is empty.
type transportPool struct {
	tr   *http.Transport
	open atomic.Int64
	// last is when a request last took it (Unix nanoseconds).
	last atomic.Int64
}

// pooledConn is a connection of a transportPool: closing it counts it out.
type pooledConn struct {
	net.Conn
	open *atomic.Int64
	once sync.Once
}

func (c *pooledConn) Close() error {
	c.once.Do(func() { c.open.Add(-1) })
	return c.Conn.Close()
}

// retireEvery is how often a retired net/http pool closes the
// connections that went idle since. After CloseIdleConnections a
// Transport closes connections as they come back, until it is asked for
// a new one: a request that raced the retirement makes it pool again.
const retireEvery = 5 * time.Second

// upstreamPool is the proxy's own pools of one upstream address: HTTP/1.1
// idle connections (h1Idle) and HTTP/2 connections (h2Pool).
type upstreamPool interface {
	// retire closes what is idle and what is busy once done.
	retire()
	// sweep closes connections idle for timeout (0: never) and tells
	// whether the pool, empty and unused for as long, retired itself.
	sweep(now time.Time, timeout time.Duration) bool
}

var _, _ upstreamPool = (*h1Idle)(nil), (*h2Pool)(nil)

// retirePools closes the pools snap no longer reaches. A request still
// running on the previous configuration may make a pool of a key just
// retired; the next configuration's pass finds it.
func (p *Proxy) retirePools(snap *config.Snapshot) {
	for _, m := range []*sync.Map{&p.h1Pools, &p.h2Pools} {
		m.Range(func(k, v any) bool {
			if key := k.(upstreamKey); !reaches(snap, key.pool, key.addr) {
				m.CompareAndDelete(k, v)
				v.(upstreamPool).retire()
			}
			return true
		})
	}
	p.pools.Range(func(k, v any) bool {
		if key := k.(upstreamKey); !reaches(snap, key.pool, key.addr) {
			p.pools.CompareAndDelete(k, v)
			go v.(*transportPool).retire()
		}
		return true
	})
}

// reaches tells whether snap still has a pool's cluster with the same
// TLS identity and the address among its endpoints (any address of an
// original-destination cluster: they are the clients' own destinations).
func reaches(snap *config.Snapshot, key poolKey, addr string) bool {
	c := snap.Clusters[key.cluster]
	if c == nil {
		return false
	}
	if c.Type == config.OriginalDst {
		return poolKeyFor(c, nil) == key
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return false
	}
	for _, ep := range c.Endpoints {
		if ep.Addr == ap && poolKeyFor(c, ep) == key {
			return true
		}
	}
	return false
}

// retire closes the idle connections; put closes the others as they
// come back.
func (i *h1Idle) retire() {
	i.mu.Lock()
	conns := i.conns
	i.conns = nil
	i.retired.Store(true)
	i.mu.Unlock()
	for _, pc := range conns {
		pc.Close()
	}
}

// retire stops new streams on the pool's connections and closes the idle
// ones; a busy one closes with its last stream (done), a dial under way
// when it attaches its waiters (dial).
func (pl *h2Pool) retire() {
	pl.mu.Lock()
	pl.retired = true
	var idle []*h2Conn
	for _, c := range pl.conns {
		c.goaway = true
		if c.active == 0 {
			idle = append(idle, c)
		}
	}
	pl.mu.Unlock()
	for _, c := range idle {
		c.conn.Close()
	}
}

// retire closes the Transport's idle connections until none is open.
func (tp *transportPool) retire() {
	for {
		tp.tr.CloseIdleConnections()
		if tp.open.Load() == 0 {
			return
		}
		time.Sleep(retireEvery)
	}
}

// Idle connections close after their cluster's idle timeout (Envoy's
// idle_timeout of HttpProtocolOptions, an hour unless the cluster says
// otherwise), and a pool unused for as long goes: without it a pool of an
// original-destination cluster (passthrough traffic, one pool per
// address a client ever called) and its connections stayed for the life
// of the proxy. Pools are swept every sweepEvery while any exists.
const sweepEvery = time.Second

// pooled is told that a pool was made: it starts the sweeps if none runs.
func (p *Proxy) pooled() {
	if p.sweeping.CompareAndSwap(false, true) {
		time.AfterFunc(sweepEvery, p.sweep)
	}
}

// sweep closes connections idle for their cluster's idle timeout and
// removes pools unused for as long.
func (p *Proxy) sweep() {
	now := time.Now()
	var clusters map[string]*config.Cluster
	if rt := p.cur.Load(); rt != nil {
		clusters = rt.snap.Clusters
	}
	timeout := func(key poolKey) time.Duration {
		if c := clusters[key.cluster]; c != nil {
			return c.IdleTimeout
		}
		return 0 // gone: retirePools retires it
	}
	left := false
	for _, m := range []*sync.Map{&p.h1Pools, &p.h2Pools} {
		m.Range(func(k, v any) bool {
			if v.(upstreamPool).sweep(now, timeout(k.(upstreamKey).pool)) {
				m.CompareAndDelete(k, v)
			} else {
				left = true
			}
			return true
		})
	}
	p.pools.Range(func(k, v any) bool {
		// Its Transport closes idle connections itself (IdleConnTimeout).
		tp := v.(*transportPool)
		if t := tp.tr.IdleConnTimeout; t > 0 && tp.open.Load() == 0 && now.Sub(time.Unix(0, tp.last.Load())) >= t {
			p.pools.CompareAndDelete(k, v)
		} else {
			left = true
		}
		return true
	})
	if left {
		time.AfterFunc(sweepEvery, p.sweep)
		return
	}
	p.sweeping.Store(false)
	// A pool made while this sweep ran found it running and started none.
	if p.anyPools() {
		p.pooled()
	}
}

func (p *Proxy) anyPools() bool {
	found := false
	for _, m := range []*sync.Map{&p.h1Pools, &p.h2Pools, &p.pools} {
		m.Range(func(_, _ any) bool { found = true; return false })
	}
	return found
}

// sweep closes the connections idle for timeout (0: never) and tells
// whether the pool, empty and unused for as long, is retired.
func (i *h1Idle) sweep(now time.Time, timeout time.Duration) bool {
	if timeout <= 0 {
		return false
	}
	i.mu.Lock()
	// put appends and get takes the last: the oldest come first.
	n := 0
	for n < len(i.conns) && now.Sub(i.conns[n].idleSince) >= timeout {
		n++
	}
	old := slices.Clone(i.conns[:n])
	i.conns = append(i.conns[:0], i.conns[n:]...)
	unused := len(i.conns) == 0 && now.Sub(i.last) >= timeout
	if unused {
		i.retired.Store(true)
	}
	i.mu.Unlock()
	for _, pc := range old {
		pc.Close()
	}
	return unused
}

// sweep closes the connections without a stream for timeout (0: never)
// and tells whether the pool, empty and unused for as long, is retired.
func (pl *h2Pool) sweep(now time.Time, timeout time.Duration) bool {
	if timeout <= 0 {
		return false
	}
	pl.mu.Lock()
	var idle []*h2Conn
	busy := false
	for _, c := range pl.conns {
		switch {
		case c.active == 0 && !c.goaway && now.Sub(c.idleSince) >= timeout:
			c.goaway = true
			idle = append(idle, c)
		case c.active > 0 || !c.goaway:
			busy = true
		}
	}
	unused := !busy && pl.dialing == 0 && len(pl.waiters) == 0 && now.Sub(pl.last) >= timeout
	pl.retired = pl.retired || unused
	pl.mu.Unlock()
	for _, c := range idle {
		c.conn.Close()
	}
	return unused
}
