package xds

import "testing"

// Streams subscribed to the same names share one set; a change gives the
// changing stream a set of its own, and the last release drops a set.
func TestNameSetsShared(t *testing.T) {
	var sets nameSets
	var added []string
	note := func(n string) { added = append(added, n) }
	a := sets.update(nil, []string{"x", "y"}, nil, note)
	b := sets.update(nil, []string{"y", "x"}, nil, func(string) {})
	if a != b || a.refs != 2 {
		t.Fatalf("equal subscriptions got sets %p and %p (refs %d)", a, b, a.refs)
	}
	if len(added) != 2 {
		t.Fatalf("added %v", added)
	}
	if c := sets.update(b, []string{"x"}, nil, note); c != a {
		t.Error("subscribing again to a name changed the set")
	}
	added = nil
	c := sets.update(b, []string{"z"}, []string{"x"}, note)
	if c == a || !c.has("y") || !c.has("z") || c.has("x") || len(added) != 1 || added[0] != "z" {
		t.Fatalf("after +z -x: %v (added %v)", c.m, added)
	}
	if !a.has("x") || a.refs != 1 {
		t.Fatal("the other stream's set changed")
	}
	sets.release(a)
	sets.release(c)
	if len(sets.byHash) != 0 {
		t.Errorf("released sets kept: %v", sets.byHash)
	}
}

// Growing a subscription to a set another stream holds finds that set;
// duplicates and a near miss (same names but one) do not.
func TestNameSetsUnionFindsShared(t *testing.T) {
	var sets nameSets
	none := func(string) {}
	full := sets.update(nil, []string{"a", "b", "c"}, nil, none)
	part := sets.update(nil, []string{"a"}, nil, none)
	var added []string
	grown := sets.update(part, []string{"b", "c", "b"}, nil, func(n string) { added = append(added, n) })
	if grown != full || full.refs != 2 {
		t.Fatalf("a+b+c got set %v (refs %d), want the shared %v", grown.m, grown.refs, full.m)
	}
	for _, n := range added {
		if n != "b" && n != "c" {
			t.Errorf("added %v, want b and c", added)
		}
	}
	if sets.byHash[part.hash] != nil && part.refs > 0 {
		t.Error("the outgrown set was kept")
	}
	other := sets.update(nil, []string{"a", "b", "d"}, nil, none)
	if other == full || !other.has("d") || other.has("c") {
		t.Fatalf("a+b+d got %v", other.m)
	}
	dup := sets.update(nil, []string{"a", "a", "b"}, nil, none)
	if dup == full || len(dup.m) != 2 {
		t.Fatalf("a+a+b got %v", dup.m)
	}
}
