package proxyview

import (
	"strings"
	"testing"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// A DestinationRule field isthmus does not act on is named in a warning,
// not dropped in silence.
func TestDestinationRuleFieldsNotActedOnAreWarned(t *testing.T) {
	for _, tc := range []struct{ spec, want string }{
		{`{"host":"a","trafficPolicy":{"loadBalancer":{"consistentHash":{"httpHeaderName":"x","ringHash":{"minimumRingSize":4096}}}}}`, "minimumRingSize"},
		{`{"host":"a","trafficPolicy":{"loadBalancer":{"consistentHash":{"httpHeaderName":"x","maglev":{"tableSize":65537}}}}}`, "maglev.tableSize"},
		{`{"host":"a","trafficPolicy":{"loadBalancer":{"consistentHash":{"httpHeaderName":"x","minimumRingSize":4096}}}}`, "minimumRingSize"},
	} {
		dr := &networkingv1.DestinationRule{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "r"}}
		if err := dr.Spec.UnmarshalJSON([]byte(tc.spec)); err != nil {
			t.Fatal(err)
		}
		var warned []string
		policyFor(dr, 80, func(w string) { warned = append(warned, w) })
		if len(warned) != 1 || !strings.Contains(warned[0], tc.want) {
			t.Errorf("%s: warnings %q, want one naming %s", tc.spec, warned, tc.want)
		}
	}
}

// caCrl reaches the proxy as the validation context's crl, as istiod sends it.
func TestCaCrlIsSent(t *testing.T) {
	dr := &networkingv1.DestinationRule{}
	if err := dr.Spec.UnmarshalJSON([]byte(`{"host":"a","trafficPolicy":{"tls":{"mode":"SIMPLE","caCrl":"/etc/crl.pem"}}}`)); err != nil {
		t.Fatal(err)
	}
	var warned []string
	ts, _ := clientTLS(dr.Spec.GetTrafficPolicy().GetTls(), &Proxy{Type: Sidecar}, "a.ns.svc.cluster.local", "", nil, func(w string) { warned = append(warned, w) })
	var ctx tlsv3.UpstreamTlsContext
	if err := ts.GetTypedConfig().UnmarshalTo(&ctx); err != nil {
		t.Fatal(err)
	}
	if got := ctx.GetCommonTlsContext().GetValidationContext().GetCrl().GetFilename(); got != "/etc/crl.pem" || len(warned) > 0 {
		t.Errorf("crl %q, warnings %q", got, warned)
	}
}
