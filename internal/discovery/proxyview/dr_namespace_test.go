package proxyview

import (
	"testing"
	"time"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

type drsConfig struct {
	scopeConfig
	drs []*networkingv1.DestinationRule
}

func (c drsConfig) DestinationRules() []*networkingv1.DestinationRule { return c.drs }

// Only a rule of the service's namespace, else of the root namespace,
// applies to it: a rule another namespace writes for the host (older,
// even) cannot take its clients off mTLS.
func TestDestinationRuleNamespaces(t *testing.T) {
	dr := func(ns, name string, age int, spec string) *networkingv1.DestinationRule {
		d := &networkingv1.DestinationRule{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, CreationTimestamp: metav1.NewTime(time.Unix(int64(1000-age), 0))}}
		if err := d.Spec.UnmarshalJSON([]byte(spec)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	services := []*registry.Service{
		{Namespace: "prod", Name: "pay", Hostname: "pay.prod.svc.cluster.local"},
		{Namespace: "shop", Name: "web", Hostname: "web.shop.svc.cluster.local"},
	}
	cfg := drsConfig{drs: []*networkingv1.DestinationRule{
		dr("evil", "steal", 9, `{"host":"pay.prod.svc.cluster.local","trafficPolicy":{"tls":{"mode":"DISABLE"}}}`),
		dr("istio-system", "mesh-pay", 5, `{"host":"pay.prod.svc.cluster.local"}`),
		dr("prod", "pay", 0, `{"host":"pay"}`),
		dr("istio-system", "mesh-web", 0, `{"host":"web.shop.svc.cluster.local"}`),
		dr("evil", "web", 9, `{"host":"web.shop.svc.cluster.local"}`),
	}}
	got := destinationRules(cfg, "cluster.local", "istio-system", "", services)
	if d := got["pay.prod.svc.cluster.local"]; d == nil || d.Namespace != "prod" {
		t.Errorf("pay: %v, want the rule of its own namespace", d)
	}
	if d := got["web.shop.svc.cluster.local"]; d == nil || d.Name != "mesh-web" {
		t.Errorf("web: %v, want the root namespace's rule", d)
	}
	// A namespace's own rules come first for its own proxies (Istio's
	// egress tasks put the egress gateway's rule in the client's
	// namespace), and for nobody else's.
	evil := destinationRules(cfg, "cluster.local", "istio-system", "evil", services)
	if d := evil["pay.prod.svc.cluster.local"]; d == nil || d.Name != "steal" {
		t.Errorf("evil's proxies: %v, want evil's own rule", d)
	}
	if !ForeignRules(cfg, "evil", "cluster.local") || ForeignRules(cfg, "prod", "cluster.local") {
		t.Error("ForeignRules: evil has rules for other namespaces' hosts, prod does not")
	}
}
