package proxy

import (
	"net"
	"net/http"
	"net/netip"
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

// retirePools closes the pools snap no longer reaches. A request still
// running on the previous configuration may make a pool of a key just
// retired; the next configuration's pass finds it.
func (p *Proxy) retirePools(snap *config.Snapshot) {
	p.h1Pools.Range(func(k, v any) bool {
		if key := k.(upstreamKey); !reaches(snap, key.pool, key.addr) {
			p.h1Pools.Delete(k)
			v.(*h1Idle).retire()
		}
		return true
	})
	p.h2Pools.Range(func(k, v any) bool {
		if key := k.(upstreamKey); !reaches(snap, key.pool, key.addr) {
			p.h2Pools.Delete(k)
			v.(*h2Pool).retire()
		}
		return true
	})
	p.pools.Range(func(k, v any) bool {
		if key := k.(upstreamKey); !reaches(snap, key.pool, key.addr) {
			p.pools.Delete(k)
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
	key.h2 = false
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
	i.conns, i.retired = nil, true
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
