package lb

import (
	"net/netip"
	"strconv"
	"testing"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
)

func endpoints(weights ...uint32) []*config.Endpoint {
	var out []*config.Endpoint
	for i, w := range weights {
		out = append(out, &config.Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 8080), Weight: w, Healthy: true})
	}
	return out
}

// A gateway that stands for two pods gets twice the turns of a local pod.
func TestRoundRobinHonoursWeights(t *testing.T) {
	c := &config.Cluster{Endpoints: endpoints(1, 1, 2)}
	c.Endpoints = append(c.Endpoints, &config.Endpoint{Addr: netip.MustParseAddrPort("10.0.0.9:1"), Weight: 5, Healthy: false})
	p := New(c)
	counts := map[netip.AddrPort]int{}
	for range 400 {
		e, done := p.Pick(nil)
		counts[e.Addr]++
		done.Release()
	}
	if counts[c.Endpoints[0].Addr] != 100 || counts[c.Endpoints[1].Addr] != 100 || counts[c.Endpoints[2].Addr] != 200 {
		t.Fatalf("counts %v; want 100/100/200 and nothing for the unhealthy endpoint", counts)
	}
}

// Large weights interleave: with 200 and 800 (locality shares), every
// window of 10 picks has about 2 of the first, never a run of 200.
func TestRoundRobinInterleaves(t *testing.T) {
	c := &config.Cluster{Endpoints: endpoints(200, 800)}
	p := New(c)
	total := 0
	for w := range 100 {
		n := 0
		for range 10 {
			e, l := p.Pick(nil)
			l.Release()
			if e == c.Endpoints[0] {
				n++
			}
		}
		if n < 1 || n > 3 {
			t.Fatalf("window %d: %d of 10 picks to the weight-200 endpoint", w, n)
		}
		total += n
	}
	if total != 200 {
		t.Errorf("%d of 1000 picks to the weight-200 endpoint, want 200", total)
	}
}

func TestSkipAndEmpty(t *testing.T) {
	p := New(&config.Cluster{Endpoints: endpoints(1, 1)})
	first, _ := p.Pick(nil)
	for range 10 {
		e, _ := p.Pick(func(e *config.Endpoint) bool { return e == first })
		if e == first {
			t.Fatal("picked a skipped endpoint")
		}
	}
	if e, _ := p.Pick(func(*config.Endpoint) bool { return true }); e != nil {
		t.Fatal("picked when every endpoint is skipped")
	}
	if e, _ := New(&config.Cluster{}).Pick(nil); e != nil {
		t.Fatal("picked from no endpoints")
	}
}

func TestLeastRequestAvoidsBusyEndpoint(t *testing.T) {
	p := New(&config.Cluster{LB: config.LeastRequest, Endpoints: endpoints(1, 1)})
	busy, _ := p.Pick(nil)
	for range 50 {
		p.levels[0].active[indexOf(p, busy)].Add(1)
	}
	other := 0
	for range 100 {
		e, done := p.Pick(nil)
		if e != busy {
			other++
		}
		done.Release()
	}
	if other < 60 {
		t.Fatalf("the idle endpoint got %d of 100 picks", other)
	}
}

func indexOf(p *Picker, e *config.Endpoint) int {
	for i, x := range p.levels[0].eps {
		if x == e {
			return i
		}
	}
	return -1
}

func BenchmarkPickRoundRobin(b *testing.B) {
	p := New(&config.Cluster{Endpoints: endpoints(1, 2, 3, 1, 1, 1, 1, 1)})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_, done := p.Pick(nil)
			done.Release()
		}
	})
}

// Priority 0 takes everything while it has a healthy endpoint; then 1.
func TestLocalityFailover(t *testing.T) {
	eps := endpoints(1, 1, 1)
	eps[1].Priority, eps[2].Priority = 1, 2
	c := &config.Cluster{Endpoints: eps}
	for range 10 {
		if e, _ := New(c).Pick(nil); e != eps[0] {
			t.Fatalf("picked %s while priority 0 is healthy", e.Addr)
		}
	}
	eps[0].Healthy = false
	if e, _ := New(c).Pick(nil); e != eps[1] {
		t.Fatalf("picked %v, want the priority 1 endpoint", e)
	}
	// A retry that skips the priority-1 endpoint goes on to priority 2.
	if e, _ := New(c).Pick(func(e *config.Endpoint) bool { return e == eps[1] }); e != eps[2] {
		t.Fatalf("picked %v, want the priority 2 endpoint", e)
	}
}

// Consistent hashing: a key stays on its endpoint; keys spread by weight;
// losing an endpoint moves only its own keys; skipped endpoints are passed.
func TestRingHash(t *testing.T) {
	c := &config.Cluster{LB: config.RingHash, Endpoints: endpoints(1, 1, 2)}
	p := New(c)
	owner := map[string]netip.AddrPort{}
	counts := map[netip.AddrPort]int{}
	for i := range 4000 {
		key := "user-" + strconv.Itoa(i)
		e, l := p.PickHash(Hash(key), nil)
		l.Release()
		owner[key] = e.Addr
		counts[e.Addr]++
		if again, _ := p.PickHash(Hash(key), nil); again != e {
			t.Fatalf("%s moved from %s to %s", key, e.Addr, again.Addr)
		}
	}
	// Similar keys spread: of user1..user12 on two equal endpoints, neither gets all.
	p2eq := New(&config.Cluster{LB: config.RingHash, Endpoints: endpoints(1, 1)})
	firsts := map[netip.AddrPort]int{}
	for i := 1; i <= 12; i++ {
		e, _ := p2eq.PickHash(Hash("user"+strconv.Itoa(i)), nil)
		firsts[e.Addr]++
	}
	if len(firsts) != 2 || firsts[netip.MustParseAddrPort("10.0.0.1:8080")] < 3 || firsts[netip.MustParseAddrPort("10.0.0.2:8080")] < 3 {
		t.Errorf("user1..user12 on two endpoints: %v", firsts)
	}
	if n := counts[c.Endpoints[2].Addr]; n < 1600 || n > 2400 {
		t.Errorf("the weight-2 endpoint owns %d of 4000 keys, want about 2000 (%v)", n, counts)
	}
	gone := c.Endpoints[0]
	p2 := New(&config.Cluster{LB: config.RingHash, Endpoints: c.Endpoints[1:]})
	for key, was := range owner {
		e, _ := p2.PickHash(Hash(key), nil)
		if was != gone.Addr && e.Addr != was {
			t.Fatalf("%s moved from %s to %s though its endpoint stayed", key, was, e.Addr)
		}
	}
	e, _ := p.PickHash(Hash("user-1"), func(e *config.Endpoint) bool { return e.Addr == owner["user-1"] })
	if e == nil || e.Addr == owner["user-1"] {
		t.Error("a skipped endpoint was picked")
	}
}
