package xdsclient

import (
	"errors"
	"testing"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// applier accepts states unless reject says no, and asks for the EDS
// names it is told to.
type applier struct {
	reject bool
	eds    []string
	last   State
}

func (a *applier) Apply(st State, _ string) (map[string][]string, error) {
	if a.reject {
		return nil, errors.New("bad listener")
	}
	a.last = st
	return map[string][]string{resource.EndpointType: a.eds}, nil
}

func resp(typ, nonce string, names ...string) *discoverygrpc.DeltaDiscoveryResponse {
	r := &discoverygrpc.DeltaDiscoveryResponse{TypeUrl: typ, Nonce: nonce}
	for _, n := range names {
		a, _ := anypb.New(wrapperspb.String(n))
		a.TypeUrl = typ
		r.Resources = append(r.Resources, &discoverygrpc.Resource{Name: n, Version: "v1", Resource: a})
	}
	return r
}

func TestACKNACKAndSubscriptions(t *testing.T) {
	a := &applier{eds: []string{"b", "a"}}
	c := New(Config{Applier: a})
	reqs := c.handle(resp(resource.ClusterType, "n1", "a", "b"))
	if len(reqs) != 2 || reqs[0].ResponseNonce != "n1" || reqs[0].ErrorDetail != nil {
		t.Fatalf("ACK then EDS subscribe expected, got %v", reqs)
	}
	if sub := reqs[1]; sub.TypeUrl != resource.EndpointType || len(sub.ResourceNamesSubscribe) != 2 || sub.ResourceNamesSubscribe[0] != "a" {
		t.Fatalf("EDS subscription %v", sub)
	}
	a.reject = true
	reqs = c.handle(resp(resource.ClusterType, "n2", "c"))
	if len(reqs) != 1 || reqs[0].ErrorDetail == nil || reqs[0].ErrorDetail.Message != "bad listener" {
		t.Fatalf("NACK expected, got %v", reqs)
	}
	st, _ := c.Resources()
	if _, ok := st[resource.ClusterType]["c"]; ok || len(st[resource.ClusterType]) != 2 {
		t.Fatalf("a NACKed update was kept: %v", st[resource.ClusterType])
	}
	a.reject = false
	a.eds = []string{"a"}
	r := resp(resource.ClusterType, "n3")
	r.RemovedResources = []string{"b"}
	reqs = c.handle(r)
	if len(reqs) != 2 || len(reqs[1].ResourceNamesUnsubscribe) != 1 || reqs[1].ResourceNamesUnsubscribe[0] != "b" {
		t.Fatalf("EDS unsubscribe of b expected, got %v", reqs)
	}
	if s := c.Status(); s.ACKs["cds"] != 2 || s.NACKs["cds"] != 1 {
		t.Fatalf("status %+v", s)
	}
}
