package xds

import (
	"context"
	"fmt"
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
	// vcur and vprev map a type URL and version to the content versions
	// of its resources, so that a state-of-the-world response of a type
	// other than Listener and Cluster (which must carry the whole state)
	// leaves out what the client already has, as the xDS protocol allows:
	// one changed load assignment is then one resource to every client,
	// not all of them.
	vcur, vprev map[string]map[string]string

	dmu   sync.Mutex // guards delta; taken before mu, never after
	delta deltaState

	budget *sendBudget
}

func newSharedCache(inner cachev3.SnapshotCache) *sharedCache {
	return &sharedCache{SnapshotCache: inner, cur: map[types.Resource]*anypb.Any{}, prev: map[types.Resource]*anypb.Any{},
		vcur: map[string]map[string]string{}, vprev: map[string]map[string]string{}, delta: newDeltaState(), budget: newSendBudget(sendBudgetBytes)}
}

// rotate starts a push: resources of the push before last are forgotten.
func (c *sharedCache) rotate() {
	c.mu.Lock()
	c.prev, c.cur = c.cur, make(map[types.Resource]*anypb.Any, len(c.cur))
	c.vprev, c.vcur = c.vcur, make(map[string]map[string]string, len(c.vcur))
	c.mu.Unlock()
	c.dmu.Lock()
	clear(c.delta.diffs)
	c.dmu.Unlock()
}

// SetSnapshot remembers the snapshot's per-resource versions, then
// installs it for state-of-the-world watches (the snapshot cache) and
// incremental ones (delta.go).
func (c *sharedCache) SetSnapshot(ctx context.Context, node string, snap cachev3.ResourceSnapshot) error {
	s, ok := snap.(*cachev3.Snapshot)
	if !ok {
		return fmt.Errorf("snapshot of node %s is a %T, not a *cachev3.Snapshot", node, snap)
	}
	versionMapped(s)
	c.mu.Lock()
	for typ := range s.Resources {
		if url, err := cachev3.GetResponseTypeURL(types.ResponseType(typ)); err == nil {
			c.vcur[url+" "+s.Resources[typ].Version] = s.VersionMap[url]
		}
	}
	c.mu.Unlock()
	if err := c.SnapshotCache.SetSnapshot(ctx, node, snap); err != nil {
		return err
	}
	c.setDelta(node, s)
	return nil
}

// ClearSnapshot forgets a node in both halves.
func (c *sharedCache) ClearSnapshot(node string) {
	c.SnapshotCache.ClearSnapshot(node)
	c.clearDelta(node)
}

// hashesAt returns the content versions of a type's resources at a
// version, if it was set in the last two pushes.
func (c *sharedCache) hashesAt(url, version string) map[string]string {
	k := url + " " + version
	c.mu.Lock()
	defer c.mu.Unlock()
	vm, ok := c.vcur[k]
	if !ok {
		if vm, ok = c.vprev[k]; ok {
			c.vcur[k] = vm
		}
	}
	return vm
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
	in := make(chan cachev3.Response, 1)
	cancel, err := c.SnapshotCache.CreateWatch(req, sub, in)
	if err != nil {
		return nil, err
	}
	// The watch passes its one response on, shared and within the send
	// budget, until cancelled.
	ctx, stop := context.WithCancel(context.Background())
	go func() {
		select {
		case r := <-in:
			if shared, err := c.share(r, sub); err == nil {
				r = shared
			}
			if d, err := r.GetDiscoveryResponse(); err == nil && !c.budget.take(ctx, sizeOf(d.GetResources())) {
				return
			}
			select {
			case out <- r:
			case <-ctx.Done():
			}
		case <-ctx.Done():
		}
	}()
	return func() {
		stop()
		if cancel != nil {
			cancel()
		}
	}, nil
}

// share rebuilds a raw response from shared Anys, without the resources
// the client already has at their current content where the type allows.
func (c *sharedCache) share(r cachev3.Response, sub cachev3.Subscription) (cachev3.Response, error) {
	raw, ok := r.(*cachev3.RawResponse)
	if !ok || raw.Heartbeat {
		return r, nil
	}
	url := raw.Request.GetTypeUrl()
	var next map[string]string
	if !cachev3.ResourceRequiresFullStateInSotw(url) {
		next = c.hashesAt(url, raw.Version)
	}
	returned := sub.ReturnedResources()
	had := map[string]map[string]string{} // by version the client got it at
	rs := raw.GetRawResources()
	anys := make([]*anypb.Any, 0, len(rs))
	for _, res := range rs {
		if next != nil {
			name := cachev3.GetResourceName(res.Resource)
			if v, ok := returned[name]; ok {
				old, seen := had[v]
				if !seen {
					old = c.hashesAt(url, v)
					had[v] = old
				}
				if h, ok := old[name]; ok && h == next[name] {
					continue
				}
			}
		}
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
