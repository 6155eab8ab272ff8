package proxy

import (
	"net/netip"
	"testing"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/isthmus-mesh/isthmus/internal/nds"
	"github.com/isthmus-mesh/isthmus/internal/proxy/dnsproxy"
	"github.com/isthmus-mesh/isthmus/internal/proxy/xdsclient"
)

type wantApplier map[string][]string

func (w wantApplier) Apply(xdsclient.State, string) (map[string][]string, error) { return w, nil }

// A name table goes to the DNS and keeps the subscriptions of the last
// configuration; one that does not decode is refused and the DNS keeps
// the table it had.
func TestNamesApplier(t *testing.T) {
	dns, err := dnsproxy.New(dnsproxy.Options{Namespace: "ns", Upstreams: []string{}, Search: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	a := &NamesApplier{Next: wantApplier{"type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment": {"outbound|80||a"}}, DNS: dns}
	if _, err := a.Apply(xdsclient.State{}, "type.googleapis.com/envoy.config.cluster.v3.Cluster"); err != nil {
		t.Fatal(err)
	}
	table, _ := anypb.New(nds.Table{"a.ns.svc.cluster.local": {IPs: []netip.Addr{netip.MustParseAddr("100.97.0.3")}, Registry: "Kubernetes", Shortname: "a", Namespace: "ns"}}.Message())
	want, err := a.Apply(xdsclient.State{nds.TypeURL: {"": table}}, nds.TypeURL)
	if err != nil || len(want) != 1 {
		t.Fatalf("apply the table: %v, want %v", err, want)
	}
	if got := dns.Table(); len(got) != 1 || got[0].Host != "a.ns.svc.cluster.local" || got[0].IPs[0].String() != "100.97.0.3" {
		t.Errorf("DNS table %v", got)
	}
	bad := &anypb.Any{TypeUrl: nds.TypeURL, Value: []byte{0x0a, 0xff}}
	if _, err := a.Apply(xdsclient.State{nds.TypeURL: {"": bad}}, nds.TypeURL); err == nil {
		t.Error("a broken table was accepted")
	}
	if got := dns.Table(); len(got) != 1 {
		t.Errorf("the DNS lost its table to a broken one: %v", got)
	}
}
