package proxyview

import (
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The HTTP version a cluster's upstreams speak, as Istio sets it: HTTP/2
// for http2, grpc and grpc-web ports; the client's own for sniffed ports
// and the passthrough clusters; HTTP/1.1 (Envoy's default, nothing said)
// for http ports, whatever the client spoke.

// httpProtocolOptions is the extension name of a cluster's HTTP options:
// Envoy names them by their message.
var httpProtocolOptions = string((&httpopts.HttpProtocolOptions{}).ProtoReflect().Descriptor().FullName())

var (
	http2Options = mustAny(&httpopts.HttpProtocolOptions{UpstreamProtocolOptions: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}}}}})
	downstreamOptions = mustAny(&httpopts.HttpProtocolOptions{UpstreamProtocolOptions: &httpopts.HttpProtocolOptions_UseDownstreamProtocolConfig{
		UseDownstreamProtocolConfig: &httpopts.HttpProtocolOptions_UseDownstreamHttpConfig{
			HttpProtocolOptions: &core.Http1ProtocolOptions{}, Http2ProtocolOptions: &core.Http2ProtocolOptions{}}}})
)

// isHTTP2 tells the declared protocols whose upstreams speak HTTP/2.
func isHTTP2(appProtocol string) bool {
	return appProtocol == "http2" || appProtocol == "grpc" || appProtocol == "grpc-web"
}

// setUpstreamProtocol sets a cluster's HTTP version for a port's declared
// protocol ("" for a sniffed port) and, when a DestinationRule gives one
// (connectionPool.http.idleTimeout), the idle timeout of its pooled
// connections, as Istio does: in the same options, an HTTP/1.1 port's
// version then said explicitly.
func setUpstreamProtocol(c *cluster.Cluster, appProtocol string, idle *durationpb.Duration) {
	if idle != nil {
		o := &httpopts.HttpProtocolOptions{CommonHttpProtocolOptions: &core.HttpProtocolOptions{IdleTimeout: idle}}
		switch {
		case isHTTP2(appProtocol):
			o.UpstreamProtocolOptions = &httpopts.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}}}}
		case appProtocol == "":
			o.UpstreamProtocolOptions = &httpopts.HttpProtocolOptions_UseDownstreamProtocolConfig{UseDownstreamProtocolConfig: &httpopts.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions: &core.Http1ProtocolOptions{}, Http2ProtocolOptions: &core.Http2ProtocolOptions{}}}
		default:
			o.UpstreamProtocolOptions = &httpopts.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &core.Http1ProtocolOptions{}}}}
		}
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptions: mustAny(o)}
		return
	}
	var o *anypb.Any
	switch {
	case isHTTP2(appProtocol):
		o = http2Options
	case appProtocol == "":
		o = downstreamOptions
	default:
		return
	}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptions: o}
}
