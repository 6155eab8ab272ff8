package xds

import (
	"hash/maphash"
	"maps"
	"slices"
	"sync"
	"unique"
)

// nameSet is an immutable set of resource names, shared by every stream
// subscribed to exactly those names: a thousand sidecars watch the same
// thousand load assignments, and one set serves them all.
type nameSet struct {
	m    map[string]struct{}
	hash uint64
	refs int // guarded by nameSets.mu
}

func (ns *nameSet) has(n string) bool {
	if ns == nil {
		return false
	}
	_, ok := ns.m[n]
	return ok
}

func (ns *nameSet) len() int {
	if ns == nil {
		return 0
	}
	return len(ns.m)
}

// nameSets is the table of shared sets.
type nameSets struct {
	mu     sync.Mutex
	byHash map[uint64][]*nameSet
}

var nameSeed = maphash.MakeSeed()

// setHash does not depend on order: the sum of the names' hashes.
func setHash(m map[string]struct{}) uint64 {
	var h uint64
	for n := range m {
		h += maphash.String(nameSeed, n)
	}
	return h
}

// intern returns the shared set equal to m (m itself if none yet; m must
// not change afterwards); the caller releases it when done.
func (t *nameSets) intern(m map[string]struct{}) *nameSet {
	if len(m) == 0 {
		return nil
	}
	h := setHash(m)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byHash == nil {
		t.byHash = map[uint64][]*nameSet{}
	}
	for _, ns := range t.byHash[h] {
		if maps.Equal(ns.m, m) {
			ns.refs++
			return ns
		}
	}
	ns := &nameSet{m: m, hash: h, refs: 1}
	t.byHash[h] = append(t.byHash[h], ns)
	return ns
}

// release drops a reference; the last one removes the set.
func (t *nameSets) release(ns *nameSet) {
	if ns == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if ns.refs--; ns.refs > 0 {
		return
	}
	list := t.byHash[ns.hash]
	for i, o := range list {
		if o == ns {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(t.byHash, ns.hash)
	} else {
		t.byHash[ns.hash] = list
	}
}

// update returns the shared set of ns with names added and removed,
// releasing ns; each new name is also passed to added.
func (t *nameSets) update(ns *nameSet, add, remove []string, added func(string)) *nameSet {
	changed := false
	for _, n := range add {
		if !ns.has(n) {
			changed = true
			break
		}
	}
	for _, n := range remove {
		changed = changed || ns.has(n)
	}
	if !changed {
		return ns
	}
	if len(remove) == 0 {
		if found := t.union(ns, add); found != nil {
			for _, n := range add {
				if !ns.has(n) {
					added(n)
				}
			}
			t.release(ns)
			return found
		}
	}
	m := make(map[string]struct{}, ns.len()+len(add))
	if ns != nil {
		maps.Copy(m, ns.m)
	}
	for _, n := range add {
		if _, had := m[n]; !had {
			// One copy of each name, whichever stream sent it.
			n = unique.Make(n).Value()
			m[n] = struct{}{}
			added(n)
		}
	}
	for _, n := range remove {
		delete(m, n)
	}
	t.release(ns)
	return t.intern(m)
}

// union finds the shared set equal to ns with add's names added, without
// building it: most streams subscribe to names another stream already has
// (every sidecar of a namespace wants the same load assignments), and five
// thousand streams each building a map of two thousand names to find the
// one set they share was a gigabyte of garbage per push. nil: none yet.
func (t *nameSets) union(ns *nameSet, add []string) *nameSet {
	var h uint64
	if ns != nil {
		h = ns.hash
	}
	hs := make([]uint64, 0, len(add))
	for _, n := range add {
		if !ns.has(n) {
			hs = append(hs, maphash.String(nameSeed, n))
		}
	}
	slices.Sort(hs)
	hs = slices.Compact(hs)
	for _, x := range hs {
		h += x
	}
	// A set holding ns and add with as many names as they have distinct
	// hashes is their union (were two new names to share a hash, no set
	// that holds both is that small, and the caller builds one).
	size := ns.len() + len(hs)
	t.mu.Lock()
	defer t.mu.Unlock()
next:
	for _, cand := range t.byHash[h] {
		if len(cand.m) != size {
			continue
		}
		for _, n := range add {
			if !cand.has(n) {
				continue next
			}
		}
		if ns != nil {
			for n := range ns.m {
				if !cand.has(n) {
					continue next
				}
			}
		}
		cand.refs++
		return cand
	}
	return nil
}
