package xds

import (
	"slices"
	"sync"
	"time"
)

// How long a change takes to reach each proxy: from the first registry or
// configuration event of a push to the proxy's acknowledgement of each
// type the push changed for it. Istio's pilot_proxy_convergence_time is
// this delay per proxy; the dashboard and proxy-status show the quantiles
// of the last convergenceSamples observations.

const convergenceSamples = 1024

// convergence keeps the latest per-proxy delays.
type convergence struct {
	mu      sync.Mutex
	samples []time.Duration // ring of the latest
	next    int
	total   int
}

func (c *convergence) observe(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.samples) < convergenceSamples {
		c.samples = append(c.samples, d)
	} else {
		c.samples[c.next] = d
	}
	c.next = (c.next + 1) % convergenceSamples
	c.total++
}

// Convergence is the delay from a change to a proxy holding it, over the
// latest observations (at most 1024).
type Convergence struct {
	P50     time.Duration `json:"p50"`
	P99     time.Duration `json:"p99"`
	Samples int           `json:"samples"`
	// Total counts every observation since the control plane started.
	Total int `json:"total"`
}

func (c *convergence) summary() Convergence {
	c.mu.Lock()
	s := slices.Clone(c.samples)
	total := c.total
	c.mu.Unlock()
	out := Convergence{Samples: len(s), Total: total}
	if len(s) == 0 {
		return out
	}
	slices.Sort(s)
	q := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
	out.P50, out.P99 = q(0.50), q(0.99)
	return out
}

// Convergence summarizes how fast the latest changes reached the proxies.
func (s *Server) Convergence() Convergence { return s.converged.summary() }
