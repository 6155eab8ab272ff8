package xds

import (
	"context"
	"maps"
	"reflect"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
)

// Incremental (delta) watches are answered here rather than by the
// snapshot cache, which diffs every resource of a type against every
// stream's state on every snapshot, copying maps of all resources as it
// goes: with a thousand proxies and a thousand load assignments, one
// changed endpoint cost two CPU-seconds of map work. Here a watch knows
// which version of its type the client holds, so a push compares
// versions (O(1) per stream when the type did not change) and otherwise
// applies the difference between the two versions, computed once per
// pair for all streams.

// deltaWatch is one open incremental watch.
type deltaWatch struct {
	req *cachev3.DeltaRequest
	sub cachev3.Subscription
	out chan cachev3.DeltaResponse
	// ctx ends when the watch is cancelled: the client sent its next
	// request for the type, or the stream closed.
	ctx  context.Context
	stop context.CancelFunc
	// at is the version of the type the client's state equals ("" when
	// not known, e.g. before the node has a snapshot).
	at string
}

// deltaSent is what the cache last handed a node for a type: the version
// and the very map the server keeps as the stream's state.
type deltaSent struct {
	version  string
	returned map[string]string
}

type versionPair struct{ url, from, to string }

// versionDiff is what changed between two versions of a type: names
// added or changed, and names removed.
type versionDiff struct{ changed, removed []string }

// deltaState is the delta side of sharedCache; guarded by sharedCache.dmu.
type deltaState struct {
	snaps   map[string]*cachev3.Snapshot
	watches map[string]map[*deltaWatch]struct{}
	sent    map[string]deltaSent // node + " " + type URL
	diffs   map[versionPair]*versionDiff
}

func newDeltaState() deltaState {
	return deltaState{snaps: map[string]*cachev3.Snapshot{}, watches: map[string]map[*deltaWatch]struct{}{},
		sent: map[string]deltaSent{}, diffs: map[versionPair]*versionDiff{}}
}

// CreateDeltaWatch answers at once when the client lacks something of
// the node's snapshot, else parks the watch until a snapshot changes it.
func (c *sharedCache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, out chan cachev3.DeltaResponse) (func(), error) {
	node, url := req.GetNode().GetId(), req.GetTypeUrl()
	w := &deltaWatch{req: req, sub: sub, out: out}
	w.ctx, w.stop = context.WithCancel(context.Background())
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if snap, ok := c.delta.snaps[node]; ok {
		version := snap.GetVersion(url)
		last, ok := c.delta.sent[node+" "+url]
		unchanged := ok && last.version == version && sameMap(last.returned, sub.ReturnedResources()) &&
			len(req.GetResourceNamesSubscribe()) == 0 && len(req.GetResourceNamesUnsubscribe()) == 0
		if unchanged {
			w.at = version // an acknowledgement of what is current: nothing to send
		} else {
			resp, _, err := c.respondDelta(node, w, snap, nil, false)
			if err != nil {
				return nil, err
			}
			if resp != nil || (sub.IsWildcard() && req.GetResponseNonce() == "") {
				if resp == nil {
					resp = c.deltaResponse(node, w, version, nil, nil, sub.ReturnedResources())
				}
				c.send(w, resp)
				return w.cancel, nil
			}
			w.at = version
		}
	}
	set := c.delta.watches[node]
	if set == nil {
		set = map[*deltaWatch]struct{}{}
		c.delta.watches[node] = set
	}
	set[w] = struct{}{}
	return func() {
		c.dmu.Lock()
		delete(c.delta.watches[node], w)
		c.dmu.Unlock()
		w.cancel()
	}, nil
}

func (w *deltaWatch) cancel() { w.stop() }

// setDelta installs a node's snapshot for delta watches and answers the
// parked ones whose type changed.
func (c *sharedCache) setDelta(node string, snap *cachev3.Snapshot) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.delta.snaps[node] = snap
	for w := range c.delta.watches[node] {
		url := w.req.GetTypeUrl()
		if w.at != "" && w.at == snap.GetVersion(url) {
			continue
		}
		var d *versionDiff
		if w.at != "" {
			d = c.diff(url, w.at, snap.GetVersion(url))
		}
		// The stream's state is changed in place (a copy per stream was
		// most of a push's cost) and handed back with the response; if
		// the stream cannot take the response at once it is undone and
		// the response built on a copy, since the watch may be cancelled
		// before it is delivered.
		resp, undo, err := c.respondDelta(node, w, snap, d, true)
		if err != nil || resp == nil {
			w.at = snap.GetVersion(url)
			continue
		}
		delete(c.delta.watches[node], w)
		if deltaSize(resp) < largeResponse {
			select {
			case w.out <- resp:
				continue
			default:
			}
		}
		if undo != nil {
			undo()
			if resp, _, err = c.respondDelta(node, w, snap, d, false); err != nil || resp == nil {
				continue
			}
		}
		c.send(w, resp)
	}
}

// clearDelta forgets a node.
func (c *sharedCache) clearDelta(node string) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	delete(c.delta.snaps, node)
	for w := range c.delta.watches[node] {
		w.cancel()
	}
	delete(c.delta.watches, node)
	for k := range c.delta.sent {
		if len(k) > len(node) && k[:len(node)] == node && k[len(node)] == ' ' {
			delete(c.delta.sent, k)
		}
	}
}

// diff returns what changed between two versions of a type, computed
// once for every stream that moves between them; nil if either version
// is no longer known.
func (c *sharedCache) diff(url, from, to string) *versionDiff {
	k := versionPair{url, from, to}
	if d, ok := c.delta.diffs[k]; ok {
		return d
	}
	a, b := c.hashesAt(url, from), c.hashesAt(url, to)
	if a == nil || b == nil {
		return nil
	}
	d := &versionDiff{}
	for n, h := range b {
		if a[n] != h {
			d.changed = append(d.changed, n)
		}
	}
	for n := range a {
		if _, ok := b[n]; !ok {
			d.removed = append(d.removed, n)
		}
	}
	c.delta.diffs[k] = d
	return d
}

// respondDelta builds the response that brings the watch's client to the
// snapshot, or nil if it has everything already. With d, the client is
// known to hold the version d starts from; without, its whole state is
// compared, as the snapshot cache does. With d and inPlace, the stream's
// state map itself becomes the next state, and undo restores it.
func (c *sharedCache) respondDelta(node string, w *deltaWatch, snap *cachev3.Snapshot, d *versionDiff, inPlace bool) (resp cachev3.DeltaResponse, undo func(), err error) {
	url := w.req.GetTypeUrl()
	items := snap.GetResourcesAndTTL(url)
	vm := snap.GetVersionMap(url)
	sub := w.sub
	returned, subscribed, wildcard := sub.ReturnedResources(), sub.SubscribedResources(), sub.IsWildcard()
	var send, removed []string
	var next map[string]string
	if d != nil {
		type prior struct {
			name, version string
			had           bool
		}
		var priors []prior
		if inPlace && returned != nil {
			next = returned
		} else {
			inPlace = false
			next = maps.Clone(returned)
			if next == nil {
				next = map[string]string{}
			}
		}
		for _, n := range d.changed {
			if _, ok := subscribed[n]; wildcard || ok {
				if inPlace {
					v, had := next[n]
					priors = append(priors, prior{n, v, had})
				}
				next[n] = vm[n]
				send = append(send, n)
			}
		}
		for _, n := range d.removed {
			if v, ok := next[n]; ok {
				if inPlace {
					priors = append(priors, prior{n, v, true})
				}
				delete(next, n)
				removed = append(removed, n)
			}
		}
		if inPlace && len(priors) > 0 {
			undo = func() {
				for _, p := range priors {
					if p.had {
						next[p.name] = p.version
					} else {
						delete(next, p.name)
					}
				}
			}
		}
	} else if wildcard {
		next = make(map[string]string, len(items))
		for n := range items {
			next[n] = vm[n]
			if v, ok := returned[n]; !ok || v != vm[n] {
				send = append(send, n)
			}
		}
		for n := range returned {
			if _, ok := items[n]; !ok {
				removed = append(removed, n)
			}
		}
	} else {
		next = make(map[string]string, len(subscribed))
		for n := range subscribed {
			v, had := returned[n]
			if _, ok := items[n]; ok {
				next[n] = vm[n]
				if !had || v != vm[n] {
					send = append(send, n)
				}
			} else if had {
				removed = append(removed, n)
			}
		}
	}
	if len(send) == 0 && len(removed) == 0 {
		return nil, nil, nil
	}
	rs := make([]*discovery.Resource, 0, len(send))
	for _, n := range send {
		a, err := c.marshalled(items[n].Resource)
		if err != nil {
			if undo != nil {
				undo()
			}
			return nil, nil, err
		}
		rs = append(rs, &discovery.Resource{Name: n, Version: vm[n], Resource: a})
	}
	return c.deltaResponse(node, w, snap.GetVersion(url), rs, removed, next), undo, nil
}

// deltaResponse wraps a response and remembers what it leaves the
// client with.
func (c *sharedCache) deltaResponse(node string, w *deltaWatch, version string, rs []*discovery.Resource, removed []string, next map[string]string) cachev3.DeltaResponse {
	url := w.req.GetTypeUrl()
	c.delta.sent[node+" "+url] = deltaSent{version: version, returned: next}
	return &cachev3.DeltaPassthroughResponse{
		DeltaRequest:   w.req,
		NextVersionMap: next,
		DeltaDiscoveryResponse: &discovery.DeltaDiscoveryResponse{Resources: rs, RemovedResources: removed,
			TypeUrl: url, SystemVersionInfo: version},
	}
}

// send hands a response to the stream without blocking the cache, once
// the send budget allows it.
func (c *sharedCache) send(w *deltaWatch, resp cachev3.DeltaResponse) {
	n := deltaSize(resp)
	if n < largeResponse {
		select {
		case w.out <- resp:
			return
		default:
		}
	}
	go func() {
		if !c.budget.take(w.ctx, n) {
			return
		}
		select {
		case w.out <- resp:
		case <-w.ctx.Done():
		}
	}()
}

func deltaSize(resp cachev3.DeltaResponse) int {
	d, _ := resp.GetDeltaDiscoveryResponse()
	n := 0
	for _, r := range d.GetResources() {
		n += len(r.GetResource().GetValue())
	}
	return n
}

// sameMap tells whether two maps are the same map (not equal contents).
func sameMap(a, b map[string]string) bool {
	return a != nil && b != nil && reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

// versionMapped makes sure a snapshot carries per-resource versions (the
// control plane's do; a hand-made one may not).
func versionMapped(snap *cachev3.Snapshot) {
	if snap.VersionMap == nil {
		_ = snap.ConstructVersionMap()
	}
}
