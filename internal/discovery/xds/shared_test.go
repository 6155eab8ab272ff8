package xds

import (
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
)

// A resource is marshalled once for every stream, and again only after
// two pushes no longer use it.
func TestAnysMarshalledOnce(t *testing.T) {
	c := newAnyCache()
	r := &cluster.Cluster{Name: "a"}
	a1, err := c.marshalled(r)
	if err != nil {
		t.Fatal(err)
	}
	if a2, _ := c.marshalled(r); a2 != a1 {
		t.Error("the second stream's resource was marshalled again")
	}
	c.rotate()
	if a3, _ := c.marshalled(r); a3 != a1 {
		t.Error("a resource the last push used was marshalled again")
	}
	c.rotate()
	c.rotate()
	if a4, _ := c.marshalled(r); a4 == a1 {
		t.Error("a resource unused for two pushes was kept")
	}
	var got cluster.Cluster
	if err := a1.any.UnmarshalTo(&got); err != nil || got.Name != "a" {
		t.Errorf("marshalled %v: %v", got.Name, err)
	}
}
