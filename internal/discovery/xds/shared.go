package xds

import (
	"sync"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// sharedCache is go-control-plane's snapshot cache with responses (state
// of the world and delta) built from resources marshalled once and shared
// by every stream: proxies of one view get the same resource objects, and
// the snapshot cache would marshal them again for each stream and response
// (a thousand sidecars, a thousand copies of every cluster).
type sharedCache struct {
	cachev3.SnapshotCache

	mu sync.Mutex
	// cur and prev map a resource (by identity) to its Any; rotate drops
	// what two pushes no longer use.
	cur, prev map[types.Resource]*anypb.Any
}

func newSharedCache(inner cachev3.SnapshotCache) *sharedCache {
	return &sharedCache{SnapshotCache: inner, cur: map[types.Resource]*anypb.Any{}, prev: map[types.Resource]*anypb.Any{}}
}

// rotate starts a push: resources of the push before last are forgotten.
func (c *sharedCache) rotate() {
	c.mu.Lock()
	c.prev, c.cur = c.cur, make(map[types.Resource]*anypb.Any, len(c.cur))
	c.mu.Unlock()
}

// marshalled returns the shared Any of a resource.
func (c *sharedCache) marshalled(r types.Resource) (*anypb.Any, error) {
	c.mu.Lock()
	a, ok := c.cur[r]
	if !ok {
		if a, ok = c.prev[r]; ok {
			c.cur[r] = a
		}
	}
	c.mu.Unlock()
	if ok {
		return a, nil
	}
	b, err := cachev3.MarshalResource(r)
	if err != nil {
		return nil, err
	}
	a = &anypb.Any{TypeUrl: "type.googleapis.com/" + string(r.ProtoReflect().Descriptor().FullName()), Value: b}
	c.mu.Lock()
	if prior, ok := c.cur[r]; ok {
		a = prior // another stream marshalled it meanwhile
	} else {
		c.cur[r] = a
	}
	c.mu.Unlock()
	return a, nil
}

// CreateWatch answers through the snapshot cache and swaps each response
// for one made of shared Anys.
func (c *sharedCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, out chan cachev3.Response) (func(), error) {
	return relay(func(in chan cachev3.Response) (func(), error) { return c.SnapshotCache.CreateWatch(req, sub, in) }, out, c.share)
}

// relay opens a watch on a channel of its own and passes its one response
// on to out through share (or unchanged if share fails), until cancelled.
func relay[R any](open func(chan R) (func(), error), out chan R, share func(R) (R, error)) (func(), error) {
	in := make(chan R, 1)
	cancel, err := open(in)
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	var once sync.Once
	go func() {
		select {
		case r := <-in:
			if shared, err := share(r); err == nil {
				r = shared
			}
			select {
			case out <- r:
			case <-done:
			}
		case <-done:
		}
	}()
	return func() {
		once.Do(func() { close(done) })
		if cancel != nil {
			cancel()
		}
	}, nil
}

// share rebuilds a raw response from shared Anys.
func (c *sharedCache) share(r cachev3.Response) (cachev3.Response, error) {
	raw, ok := r.(*cachev3.RawResponse)
	if !ok || raw.Heartbeat {
		return r, nil
	}
	rs := raw.GetRawResources()
	anys := make([]*anypb.Any, 0, len(rs))
	for _, res := range rs {
		a, err := c.marshalled(res.Resource)
		if err != nil {
			return nil, err
		}
		anys = append(anys, a)
	}
	return &cachev3.PassthroughResponse{
		Request:           raw.Request,
		DiscoveryResponse: &discovery.DiscoveryResponse{VersionInfo: raw.Version, Resources: anys, TypeUrl: raw.Request.GetTypeUrl()},
		ReturnedResources: raw.GetReturnedResources(),
	}, nil
}

// CreateDeltaWatch does for incremental streams what CreateWatch does.
func (c *sharedCache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, out chan cachev3.DeltaResponse) (func(), error) {
	open := func(in chan cachev3.DeltaResponse) (func(), error) {
		return c.SnapshotCache.CreateDeltaWatch(req, sub, in)
	}
	share := func(r cachev3.DeltaResponse) (cachev3.DeltaResponse, error) { return c.shareDelta(r, sub) }
	return relay(open, out, share)
}

// shareDelta rebuilds a raw delta response from shared Anys: the changed
// resources at their next versions, and as removed what the client has
// (of what it subscribes to) that the next state lacks, as the snapshot
// cache computes it.
func (c *sharedCache) shareDelta(r cachev3.DeltaResponse, sub cachev3.Subscription) (cachev3.DeltaResponse, error) {
	raw, ok := r.(*cachev3.RawDeltaResponse)
	if !ok {
		return r, nil
	}
	next := raw.GetNextVersionMap()
	rs := raw.GetRawResources()
	out := make([]*discovery.Resource, 0, len(rs))
	for _, res := range rs {
		a, err := c.marshalled(res.Resource)
		if err != nil {
			return nil, err
		}
		name := cachev3.GetResourceName(res.Resource)
		out = append(out, &discovery.Resource{Name: name, Version: next[name], Resource: a})
	}
	var removed []string
	for name := range sub.ReturnedResources() {
		if _, ok := next[name]; ok {
			continue
		}
		if _, subscribed := sub.SubscribedResources()[name]; sub.IsWildcard() || subscribed {
			removed = append(removed, name)
		}
	}
	return &cachev3.DeltaPassthroughResponse{
		DeltaRequest:   raw.GetDeltaRequest(),
		NextVersionMap: next,
		DeltaDiscoveryResponse: &discovery.DeltaDiscoveryResponse{Resources: out, RemovedResources: removed,
			TypeUrl: raw.GetDeltaRequest().GetTypeUrl(), SystemVersionInfo: raw.SystemVersionInfo},
	}, nil
}
