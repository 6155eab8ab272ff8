package xds

import (
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
	cur, prev map[types.Resource]*anypb.Any
	diffs     map[versionPair]*versionDiff
	// sizes are the bytes and count of resources marshalled, by type, for
	// estimating responses before building them.
	sizes map[string][2]int
}

type versionPair struct{ url, from, to string }

// versionDiff is what changed between two versions of a type: names
// added or changed, and names removed.
type versionDiff struct{ changed, removed []string }

func newAnyCache() *anyCache {
	return &anyCache{cur: map[types.Resource]*anypb.Any{}, prev: map[types.Resource]*anypb.Any{}, diffs: map[versionPair]*versionDiff{}, sizes: map[string][2]int{}}
}

// rotate starts a push: resources of the push before last are forgotten.
func (c *anyCache) rotate() {
	c.mu.Lock()
	c.prev, c.cur = c.cur, make(map[types.Resource]*anypb.Any, len(c.cur))
	clear(c.diffs)
	c.mu.Unlock()
}

// marshalled returns the shared Any of a resource.
func (c *anyCache) marshalled(r types.Resource) (*anypb.Any, error) {
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
		sz := c.sizes[a.TypeUrl]
		c.sizes[a.TypeUrl] = [2]int{sz[0] + len(b), sz[1] + 1}
	}
	c.mu.Unlock()
	return a, nil
}

// averageSize is the average marshalled size of a type's resources (a
// guess before any was marshalled).
func (c *anyCache) averageSize(url string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sz := c.sizes[url]; sz[1] > 0 {
		return sz[0] / sz[1]
	}
	return 1 << 10
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
