package proxyview

import (
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/durationpb"
)

// A DestinationRule's http.idleTimeout goes in the cluster's
// HttpProtocolOptions beside the port's HTTP version, said explicitly
// for HTTP/1.1 (the options require one), as Istio sends it.
func TestIdleTimeoutKeepsTheProtocol(t *testing.T) {
	for _, tc := range []struct {
		appProtocol string
		check       func(*httpopts.HttpProtocolOptions) bool
	}{
		{"http", func(o *httpopts.HttpProtocolOptions) bool {
			return o.GetExplicitHttpConfig().GetHttpProtocolOptions() != nil
		}},
		{"grpc", func(o *httpopts.HttpProtocolOptions) bool {
			return o.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil
		}},
		{"", func(o *httpopts.HttpProtocolOptions) bool { return o.GetUseDownstreamProtocolConfig() != nil }},
	} {
		c := &cluster.Cluster{}
		setUpstreamProtocol(c, tc.appProtocol, durationpb.New(30*time.Second))
		var o httpopts.HttpProtocolOptions
		if err := c.TypedExtensionProtocolOptions[httpProtocolOptions].UnmarshalTo(&o); err != nil {
			t.Fatalf("%q: %v", tc.appProtocol, err)
		}
		if err := o.ValidateAll(); err != nil {
			t.Errorf("%q: invalid options: %v", tc.appProtocol, err)
		}
		if !tc.check(&o) || o.GetCommonHttpProtocolOptions().GetIdleTimeout().AsDuration() != 30*time.Second {
			t.Errorf("%q: options %v", tc.appProtocol, &o)
		}
	}
}
