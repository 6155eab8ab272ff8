package xds

import (
	"context"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// When every proxy of a mesh connects at once (the control plane
// restarted, a node pool came up), each stream's first configuration is
// the largest thing the control plane sends it and the client's answer to
// it the largest thing it receives: a sidecar's first load-assignment
// request names every cluster it was just sent. Serving them all at once
// held a quarter of 5000 clients' requests in memory, read and not yet
// decoded, and nearly doubled the peak (BENCHMARKS.md, issue 27). So
// streams receive their first configuration a bounded number at a time,
// first come first served, as istiod bounds new streams
// (PILOT_MAX_REQUESTS_PER_SECOND) but by how many are being served, not
// by a rate: a fast control plane lets the next in at once.

// ConnectingStreams is how many streams may be receiving their first
// configuration at once.
var ConnectingStreams = 16 * runtime.GOMAXPROCS(0)

// ConnectingHold bounds how long one stream holds its place: a client
// that never acknowledges, or asks for no load assignments after its
// clusters, lets the next one in after it.
var ConnectingHold = 5 * time.Second

// admission is the bound: a place per stream being served its first
// configuration (a channel's waiting senders are served in order).
type admission struct {
	places  chan struct{}
	hold    time.Duration
	waiting atomic.Int64
}

func newAdmission() *admission {
	return &admission{places: make(chan struct{}, max(1, ConnectingStreams)), hold: ConnectingHold}
}

// enter waits for a place; false if ctx ended first.
func (a *admission) enter(ctx context.Context) bool {
	select {
	case a.places <- struct{}{}:
		return true
	default:
	}
	a.waiting.Add(1)
	defer a.waiting.Add(-1)
	select {
	case a.places <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (a *admission) leave() { <-a.places }

// place is one stream's passage through admission: entered before its
// first response, left once its client holds its first configuration
// (settled), after ConnectingHold, or when the stream ends.
type place struct {
	a       *admission
	entered bool
	held    bool
	timer   *time.Timer
	expired <-chan time.Time
}

// enter waits for the stream's place, once; false if the stream ended.
func (p *place) enter(ctx context.Context) bool {
	if p.entered {
		return true
	}
	if !p.a.enter(ctx) {
		return false
	}
	p.entered, p.held = true, true
	p.timer = time.NewTimer(p.a.hold)
	p.expired = p.timer.C
	return true
}

func (p *place) leave() {
	if !p.held {
		return
	}
	p.held, p.expired = false, nil
	p.timer.Stop()
	p.a.leave()
}

// settled tells whether a stream's client holds what it asked for: every
// type it watches answered and acknowledged, and a client of clusters
// has asked for their load assignments too (it does so only once it has
// the clusters, and that request is the large one) unless it has none
// to ask for (a Sidecar resource can leave a proxy no service at all).
func (c *adsConn) settled() bool {
	if len(c.watches) == 0 {
		return false
	}
	for _, w := range c.watches {
		if w.first || w.waiting {
			return false
		}
	}
	if _, ok := c.watches[resource.ClusterType]; ok {
		if _, ok := c.watches[resource.EndpointType]; !ok {
			snap := c.snap.Load()
			return snap != nil && len(snap.GetResourcesAndTTL(resource.EndpointType)) == 0
		}
	}
	return true
}
