package proxyview

import (
	"strings"
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
	var warnings []string
	got := destinationRules(drsConfig{drs: []*networkingv1.DestinationRule{
		dr("evil", "steal", 9, `{"host":"pay.prod.svc.cluster.local","trafficPolicy":{"tls":{"mode":"DISABLE"}}}`),
		dr("istio-system", "mesh-pay", 5, `{"host":"pay.prod.svc.cluster.local"}`),
		dr("prod", "pay", 0, `{"host":"pay"}`),
		dr("istio-system", "mesh-web", 0, `{"host":"web.shop.svc.cluster.local"}`),
		dr("evil", "web", 9, `{"host":"web.shop.svc.cluster.local"}`),
	}}, "cluster.local", "istio-system", services, func(w string) { warnings = append(warnings, w) })
	if d := got["pay.prod.svc.cluster.local"]; d == nil || d.Namespace != "prod" {
		t.Errorf("pay: %v, want the rule of its own namespace", d)
	}
	if d := got["web.shop.svc.cluster.local"]; d == nil || d.Name != "mesh-web" {
		t.Errorf("web: %v, want the root namespace's rule", d)
	}
	if w := strings.Join(warnings, "\n"); !strings.Contains(w, "DestinationRule evil/steal") || !strings.Contains(w, "DestinationRule evil/web") {
		t.Errorf("the other namespace's rules are not named: %q", warnings)
	}
}
