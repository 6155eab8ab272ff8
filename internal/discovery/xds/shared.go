package xds

import (
	"slices"
	"sync"
	"sync/atomic"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// anyCache marshals each generated resource once for every stream:
// proxies of one view get the same resource objects, and sending them
// to a thousand sidecars must not marshal a thousand copies. It also
// keeps, per push, what changed between two snapshots of a type, and the
// first response of every subscription, for every stream that needs them.
type anyCache struct {
	// gen maps a resource (by identity) to its marshalled form, read
	// without a lock: thousands of streams look up thousands of resources
	// each at once. Resources are never changed once in a snapshot, which
	// is what makes identity a safe key.
	gen atomic.Pointer[generation]

	mu    sync.Mutex
	diffs map[versionPair]*versionDiff
	// wanted are the lists a subscription wants of a snapshot's type.
	wanted map[wantedKey]*wantedList
}

// generation is the marshalled resources of this push (cur) and the last
// (prev); rotate drops what two pushes no longer use.
type generation struct{ cur, prev *sync.Map }

type versionPair struct{ url, from, to string }

type wantedKey struct {
	url, version string
	wildcard     bool
	names        *nameSet
}

// wantedList is what a subscription wants of a snapshot's type: the
// names, sorted, and the response body carrying them all, encoded once
// for every stream that shares the subscription ([0] state of the world,
// [1] incremental).
type wantedList struct {
	names   []string
	once    [2]sync.Once
	encoded [2]mem.Buffer
	err     [2]error
}

// allWanted returns what a subscription (wildcard, else names) wants of
// snap's resources of a type, computed once per push for every stream
// that shares the subscription. Callers must not change it.
func (c *anyCache) allWanted(url string, snap *snapshot, wildcard bool, names *nameSet) *wantedList {
	k := wantedKey{url, snap.GetVersion(url), wildcard, names}
	if wildcard {
		k.names = nil
	}
	c.mu.Lock()
	l, ok := c.wanted[k]
	c.mu.Unlock()
	if ok {
		return l
	}
	items := snap.GetResourcesAndTTL(url)
	l = &wantedList{names: make([]string, 0, len(items))}
	for n := range items {
		if wildcard || names.has(n) {
			l.names = append(l.names, n)
		}
	}
	slices.Sort(l.names)
	c.mu.Lock()
	if prior, ok := c.wanted[k]; ok {
		l = prior
	} else {
		c.wanted[k] = l
	}
	c.mu.Unlock()
	return l
}

// body is the encoded resources of the list, for a response of either
// kind: one buffer every stream's response shares.
func (l *wantedList) body(c *anyCache, url string, snap *snapshot, delta bool) (mem.Buffer, error) {
	i := 0
	if delta {
		i = 1
	}
	l.once[i].Do(func() {
		items, vm := snap.GetResourcesAndTTL(url), snap.GetVersionMap(url)
		var buf []byte
		for _, n := range l.names {
			m, err := c.marshalled(items[n].Resource)
			if err != nil {
				l.err[i] = err
				return
			}
			var b []byte
			if delta {
				b, err = proto.MarshalOptions{Deterministic: true}.Marshal(&discovery.Resource{Name: n, Version: vm[n], Resource: m.any})
			} else {
				b, err = proto.MarshalOptions{Deterministic: true}.Marshal(m.any)
			}
			if err != nil {
				l.err[i] = err
				return
			}
			buf = protowire.AppendTag(buf, resourcesField, protowire.BytesType)
			buf = protowire.AppendBytes(buf, b)
		}
		l.encoded[i] = mem.SliceBuffer(buf)
	})
	return l.encoded[i], l.err[i]
}

// versionDiff is what changed between two versions of a type: names
// added or changed, and names removed.
type versionDiff struct{ changed, removed []string }

func newAnyCache() *anyCache {
	c := &anyCache{diffs: map[versionPair]*versionDiff{}, wanted: map[wantedKey]*wantedList{}}
	c.gen.Store(&generation{cur: new(sync.Map), prev: new(sync.Map)})
	return c
}

// rotate starts a push: resources of the push before last are forgotten.
func (c *anyCache) rotate() {
	c.gen.Store(&generation{cur: new(sync.Map), prev: c.gen.Load().cur})
	c.mu.Lock()
	clear(c.diffs)
	clear(c.wanted)
	c.mu.Unlock()
}

// marshalled returns the shared marshalled form of a resource.
func (c *anyCache) marshalled(r types.Resource) (*marshalledResource, error) {
	g := c.gen.Load()
	if m, ok := g.cur.Load(r); ok {
		return m.(*marshalledResource), nil
	}
	if m, ok := g.prev.Load(r); ok {
		g.cur.Store(r, m)
		return m.(*marshalledResource), nil
	}
	b, err := cachev3.MarshalResource(r)
	if err != nil {
		return nil, err
	}
	m := &marshalledResource{any: &anypb.Any{TypeUrl: "type.googleapis.com/" + string(r.ProtoReflect().Descriptor().FullName()), Value: b}}
	// Another stream may have marshalled it meanwhile: theirs is shared.
	prior, _ := g.cur.LoadOrStore(r, m)
	return prior.(*marshalledResource), nil
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
