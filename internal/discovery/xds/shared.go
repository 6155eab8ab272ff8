package xds

import (
	"slices"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// anyCache marshals each generated resource once for every stream:
// proxies of one view get the same resource objects, and sending them
// to a thousand sidecars must not marshal a thousand copies. It also
// keeps, per push, what changed between two snapshots of a type, for
// every stream that moves between them.
type anyCache struct {
	mu sync.Mutex
	// cur and prev map a resource (by identity) to its Any; rotate drops
	// what two pushes no longer use. Resources are never changed once
	// in a snapshot, which is what makes identity a safe key.
	cur, prev map[types.Resource]*marshalledResource
	diffs     map[versionPair]*versionDiff
	// wanted are the sorted names of a snapshot's resources a
	// subscription wants, by type, version and subscription.
	wanted map[wantedKey][]string
}

type versionPair struct{ url, from, to string }

type wantedKey struct {
	url, version string
	wildcard     bool
	names        *nameSet
}

// allWanted lists, sorted, the names of snap's resources of a type that a
// subscription (wildcard, else names) wants; computed once per push for
// every stream that shares the subscription. Callers must not change it.
func (c *anyCache) allWanted(url string, snap *snapshot, wildcard bool, names *nameSet) []string {
	k := wantedKey{url, snap.GetVersion(url), wildcard, names}
	if wildcard {
		k.names = nil
	}
	c.mu.Lock()
	out, ok := c.wanted[k]
	c.mu.Unlock()
	if ok {
		return out
	}
	items := snap.GetResourcesAndTTL(url)
	out = make([]string, 0, len(items))
	for n := range items {
		if wildcard || names.has(n) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	c.mu.Lock()
	c.wanted[k] = out
	c.mu.Unlock()
	return out
}

// versionDiff is what changed between two versions of a type: names
// added or changed, and names removed.
type versionDiff struct{ changed, removed []string }

func newAnyCache() *anyCache {
	return &anyCache{cur: map[types.Resource]*marshalledResource{}, prev: map[types.Resource]*marshalledResource{}, diffs: map[versionPair]*versionDiff{}, wanted: map[wantedKey][]string{}}
}

// rotate starts a push: resources of the push before last are forgotten.
func (c *anyCache) rotate() {
	c.mu.Lock()
	c.prev, c.cur = c.cur, make(map[types.Resource]*marshalledResource, len(c.cur))
	clear(c.diffs)
	clear(c.wanted)
	c.mu.Unlock()
}

// marshalled returns the shared marshalled form of a resource.
func (c *anyCache) marshalled(r types.Resource) (*marshalledResource, error) {
	c.mu.Lock()
	m, ok := c.cur[r]
	if !ok {
		if m, ok = c.prev[r]; ok {
			c.cur[r] = m
		}
	}
	c.mu.Unlock()
	if ok {
		return m, nil
	}
	b, err := cachev3.MarshalResource(r)
	if err != nil {
		return nil, err
	}
	m = &marshalledResource{any: &anypb.Any{TypeUrl: "type.googleapis.com/" + string(r.ProtoReflect().Descriptor().FullName()), Value: b}}
	c.mu.Lock()
	if prior, ok := c.cur[r]; ok {
		m = prior // another stream marshalled it meanwhile
	} else {
		c.cur[r] = m
	}
	c.mu.Unlock()
	return m, nil
}

// diff returns what changed in a type from one snapshot to another,
// computed once per push for every stream that moves between them.
func (c *anyCache) diff(url string, from, to *snapshot) *versionDiff {
	k := versionPair{url, from.GetVersion(url), to.GetVersion(url)}
	c.mu.Lock()
	d, ok := c.diffs[k]
	c.mu.Unlock()
	if ok {
		return d
	}
	a, b := from.GetVersionMap(url), to.GetVersionMap(url)
	d = &versionDiff{}
	for n, h := range b {
		if old, ok := a[n]; !ok || old != h {
			d.changed = append(d.changed, n)
		}
	}
	for n := range a {
		if _, ok := b[n]; !ok {
			d.removed = append(d.removed, n)
		}
	}
	c.mu.Lock()
	c.diffs[k] = d
	c.mu.Unlock()
	return d
}
