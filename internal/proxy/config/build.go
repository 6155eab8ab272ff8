package config

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	filelogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	streamlogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/isthmus-mesh/isthmus/internal/httpfield"
	"github.com/isthmus-mesh/isthmus/internal/proxy/jwtauthn"
	"github.com/isthmus-mesh/isthmus/internal/proxy/rbac"
)

// httpProtocolOptions is the extension name of a cluster's HTTP options:
// Envoy names them by their message.
var httpProtocolOptions = string((&httpopts.HttpProtocolOptions{}).ProtoReflect().Descriptor().FullName())

// Resources is every accepted resource by type URL and name.
type Resources map[string]map[string]*anypb.Any

// validator is what protoc-gen-validate adds to every xDS message.
type validator interface{ ValidateAll() error }

// unpack decodes and validates one resource.
func unpack(a *anypb.Any, m proto.Message) error {
	if err := a.UnmarshalTo(m); err != nil {
		return err
	}
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			return err
		}
	}
	return nil
}

// Build compiles resources into a snapshot and lists the endpoint and route
// names it needs. The first invalid resource fails the whole build.
func Build(rs Resources) (*Snapshot, map[string][]string, error) {
	s := &Snapshot{Listeners: map[string]*Listener{}, Clusters: map[string]*Cluster{}, Routes: map[string]*RouteTable{}, Secrets: map[string]*Secret{}}
	want := map[string][]string{}
	for name, a := range rs[resource.ClusterType] {
		var c cluster.Cluster
		if err := unpack(a, &c); err != nil {
			return nil, nil, fmt.Errorf("cluster %q: %w", name, err)
		}
		cl, err := buildCluster(&c)
		if err != nil {
			return nil, nil, fmt.Errorf("cluster %q: %w", name, err)
		}
		s.Clusters[cl.Name] = cl
		if cl.Type == EDS {
			want[resource.EndpointType] = append(want[resource.EndpointType], cl.EDSName)
		}
		// TLS of its own (a DestinationRule's SIMPLE or MUTUAL) names
		// its CA and client certificate by SDS, as a server's chain does.
		for _, o := range cl.originations() {
			for _, n := range []string{o.CASecret, o.CertSecret} {
				if n != "" && !slices.Contains(want[resource.SecretType], n) {
					want[resource.SecretType] = append(want[resource.SecretType], n)
				}
			}
		}
	}
	cla := map[string]*endpoint.ClusterLoadAssignment{}
	for name, a := range rs[resource.EndpointType] {
		var c endpoint.ClusterLoadAssignment
		if err := unpack(a, &c); err != nil {
			return nil, nil, fmt.Errorf("endpoints %q: %w", name, err)
		}
		cla[c.GetClusterName()] = &c
	}
	for _, cl := range s.Clusters {
		if cl.Type != EDS {
			continue
		}
		a, ok := cla[cl.EDSName]
		if !ok {
			continue
		}
		eps, err := buildEndpoints(a)
		if err != nil {
			return nil, nil, fmt.Errorf("endpoints %q: %w", cl.EDSName, err)
		}
		cl.Endpoints = eps
	}
	for name, a := range rs[resource.ListenerType] {
		var l listener.Listener
		if err := unpack(a, &l); err != nil {
			return nil, nil, fmt.Errorf("listener %q: %w", name, err)
		}
		bl, err := buildListener(&l)
		if err != nil {
			return nil, nil, fmt.Errorf("listener %q: %w", name, err)
		}
		s.Listeners[bl.Name] = bl
		for _, c := range append(bl.Chains, bl.Default) {
			if c != nil && c.HTTP != nil && c.HTTP.RouteName != "" {
				want[resource.RouteType] = append(want[resource.RouteType], c.HTTP.RouteName)
			}
			if c != nil && c.TLS != nil {
				for _, n := range []string{c.TLS.CertSecret, c.TLS.CASecret} {
					if n != "" {
						want[resource.SecretType] = append(want[resource.SecretType], n)
					}
				}
			}
		}
	}
	for name, a := range rs[resource.RouteType] {
		var rc route.RouteConfiguration
		if err := unpack(a, &rc); err != nil {
			return nil, nil, fmt.Errorf("route %q: %w", name, err)
		}
		rt, err := buildRoutes(&rc)
		if err != nil {
			return nil, nil, fmt.Errorf("route %q: %w", name, err)
		}
		s.Routes[rt.Name] = rt
	}
	versions := map[string]string{}
	for name, a := range rs[resource.SecretType] {
		var sec tlsv3.Secret
		if err := unpack(a, &sec); err != nil {
			return nil, nil, fmt.Errorf("secret %q: %w", name, err)
		}
		bs, err := buildSecret(&sec)
		if err != nil {
			return nil, nil, fmt.Errorf("secret %q: %w", name, err)
		}
		s.Secrets[sec.GetName()] = bs
		sum := sha256.Sum256(a.GetValue())
		versions[sec.GetName()] = hex.EncodeToString(sum[:8])
	}
	// Connections a cluster originated with an old CA or certificate are
	// not reused: its pools are named by the secrets' contents.
	for _, cl := range s.Clusters {
		for _, o := range cl.originations() {
			o.Secrets = versions[o.CASecret] + "/" + versions[o.CertSecret]
		}
	}
	return s, want, nil
}

func buildCluster(c *cluster.Cluster) (*Cluster, error) {
	cl := &Cluster{Name: c.GetName(), ConnectTimeout: 10 * time.Second, IdleTimeout: DefaultIdleTimeout}
	if d := c.GetConnectTimeout(); d != nil {
		cl.ConnectTimeout = d.AsDuration()
	}
	switch c.GetType() {
	case cluster.Cluster_EDS:
		cl.Type = EDS
		cl.EDSName = c.GetEdsClusterConfig().GetServiceName()
		if cl.EDSName == "" {
			cl.EDSName = cl.Name
		}
	case cluster.Cluster_STATIC:
		cl.Type = Static
		if c.GetLoadAssignment() != nil {
			eps, err := buildEndpoints(c.GetLoadAssignment())
			if err != nil {
				return nil, err
			}
			cl.Endpoints = eps
		}
	case cluster.Cluster_ORIGINAL_DST:
		cl.Type = OriginalDst
	default:
		return nil, fmt.Errorf("discovery type %s is not supported (EDS, STATIC, ORIGINAL_DST are)", c.GetType())
	}
	switch c.GetLbPolicy() {
	case cluster.Cluster_ROUND_ROBIN:
		cl.LB = RoundRobin
	case cluster.Cluster_LEAST_REQUEST:
		cl.LB = LeastRequest
	case cluster.Cluster_RANDOM:
		cl.LB = Random
	case cluster.Cluster_RING_HASH, cluster.Cluster_MAGLEV:
		cl.LB = RingHash
	case cluster.Cluster_CLUSTER_PROVIDED:
		if cl.Type != OriginalDst {
			return nil, errors.New("CLUSTER_PROVIDED load balancing needs an ORIGINAL_DST cluster")
		}
	default:
		return nil, fmt.Errorf("load balancing policy %s is not supported", c.GetLbPolicy())
	}
	for _, th := range c.GetCircuitBreakers().GetThresholds() {
		if th.GetPriority() != core.RoutingPriority_DEFAULT {
			continue
		}
		cl.MaxConnections = th.GetMaxConnections().GetValue()
		cl.MaxRequests = th.GetMaxRequests().GetValue()
		// HTTP/1.1 requests beyond the connections wait as pending; beyond
		// the pending bound they overflow (Envoy's default bound is 1024).
		if cl.MaxConnections > 0 {
			pending := uint32(1024)
			if th.GetMaxPendingRequests() != nil {
				pending = th.GetMaxPendingRequests().GetValue()
			}
			if n := cl.MaxConnections + pending; cl.MaxRequests == 0 || n < cl.MaxRequests {
				cl.MaxRequests = n
			}
		}
	}
	if od := c.GetOutlierDetection(); od != nil {
		o := &Outlier{BaseEjection: 30 * time.Second, MaxEjectionPercent: 10}
		if od.GetConsecutive_5Xx() != nil && od.GetEnforcingConsecutive_5Xx().GetValue() != 0 {
			o.Consecutive5xx = od.GetConsecutive_5Xx().GetValue()
		}
		if od.GetConsecutiveGatewayFailure() != nil && od.GetEnforcingConsecutiveGatewayFailure().GetValue() != 0 {
			o.ConsecutiveGateway = od.GetConsecutiveGatewayFailure().GetValue()
		}
		if d := od.GetBaseEjectionTime(); d != nil {
			o.BaseEjection = d.AsDuration()
		}
		if m := od.GetMaxEjectionPercent(); m != nil {
			o.MaxEjectionPercent = m.GetValue()
		}
		if o.Consecutive5xx > 0 || o.ConsecutiveGateway > 0 {
			cl.Outlier = o
		}
	}
	if c.GetHttp2ProtocolOptions() != nil { // the deprecated field
		cl.Protocol = UpstreamHTTP2
	}
	for name, opts := range c.GetTypedExtensionProtocolOptions() {
		if name != httpProtocolOptions {
			return nil, fmt.Errorf("protocol options %q are not supported (%s are)", name, httpProtocolOptions)
		}
		var o httpopts.HttpProtocolOptions
		if err := unpack(opts, &o); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if t := o.GetCommonHttpProtocolOptions().GetIdleTimeout(); t != nil {
			if cl.IdleTimeout = t.AsDuration(); cl.IdleTimeout < 0 {
				return nil, fmt.Errorf("%s: idle_timeout %s is negative", name, cl.IdleTimeout)
			}
		}
		switch {
		case o.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil:
			cl.Protocol = UpstreamHTTP2
		case o.GetExplicitHttpConfig() != nil:
			cl.Protocol = UpstreamHTTP1
		case o.GetUseDownstreamProtocolConfig() != nil, o.GetAutoConfig() != nil:
			// auto_config picks by ALPN; a plaintext upstream has none, and the
			// client's protocol is the nearest safe choice.
			cl.Protocol = UpstreamAsDownstream
		}
	}
	for _, m := range c.GetTransportSocketMatches() {
		t, err := upstreamTLS(m.GetTransportSocket())
		if err != nil {
			return nil, fmt.Errorf("transport socket match %q: %w", m.GetName(), err)
		}
		cl.TLSMatches = append(cl.TLSMatches, TLSMatch{Name: m.GetName(), Match: stringFields(m.GetMatch()), TLS: t})
	}
	if ts := c.GetTransportSocket(); ts != nil {
		t, err := upstreamTLS(ts)
		if err != nil {
			return nil, fmt.Errorf("transport socket: %w", err)
		}
		cl.TLS = t
	}
	return cl, nil
}

// validationContext is a TLS context's certificate checks, whether sent
// alone or combined with an SDS validation context (as Istio sends them).
func validationContext(common *tlsv3.CommonTlsContext) *tlsv3.CertificateValidationContext {
	if vc := common.GetCombinedValidationContext().GetDefaultValidationContext(); vc != nil {
		return vc
	}
	return common.GetValidationContext()
}

// peerTrustDomains reads the SAN prefixes a downstream validation context
// accepts: spiffe://TD/ per trust domain, or spiffe:// for any. Any other
// matcher is refused rather than ignored (ignoring it would accept all).
func peerTrustDomains(common *tlsv3.CommonTlsContext) ([]string, error) {
	vc := validationContext(common)
	var prefixes []string
	for _, m := range vc.GetMatchTypedSubjectAltNames() {
		if m.GetSanType() != tlsv3.SubjectAltNameMatcher_URI || m.GetMatcher().GetPrefix() == "" {
			return nil, fmt.Errorf("downstream subject alt name matcher %v is not supported (only URI prefixes spiffe://TRUST_DOMAIN/)", m)
		}
		prefixes = append(prefixes, m.GetMatcher().GetPrefix())
	}
	for _, m := range vc.GetMatchSubjectAltNames() {
		if m.GetPrefix() == "" {
			return nil, fmt.Errorf("downstream subject alt name matcher %v is not supported (only URI prefixes spiffe://TRUST_DOMAIN/)", m)
		}
		prefixes = append(prefixes, m.GetPrefix())
	}
	var tds []string
	for _, p := range prefixes {
		rest, ok := strings.CutPrefix(p, "spiffe://")
		switch {
		case !ok:
			return nil, fmt.Errorf("downstream subject alt name prefix %q is not a SPIFFE trust domain", p)
		case rest == "":
			return nil, nil // any trust domain
		case !strings.HasSuffix(rest, "/") || strings.Count(rest, "/") != 1:
			return nil, fmt.Errorf("downstream subject alt name prefix %q is not spiffe://TRUST_DOMAIN/", p)
		}
		tds = append(tds, strings.TrimSuffix(rest, "/"))
	}
	return tds, nil
}

func upstreamTLS(ts *core.TransportSocket) (*UpstreamTLS, error) {
	if ts == nil {
		return nil, nil
	}
	switch ts.GetName() {
	case "envoy.transport_sockets.raw_buffer":
		return nil, nil
	case "envoy.transport_sockets.tls":
	default:
		return nil, fmt.Errorf("transport socket %q is not supported", ts.GetName())
	}
	var ctx tlsv3.UpstreamTlsContext
	if err := unpack(ts.GetTypedConfig(), &ctx); err != nil {
		return nil, err
	}
	common := ctx.GetCommonTlsContext()
	t := &UpstreamTLS{SNI: ctx.GetSni(), ALPN: common.GetAlpnProtocols()}
	vc := validationContext(common)
	certs := common.GetTlsCertificateSdsSecretConfigs()
	caSDS := common.GetCombinedValidationContext().GetValidationContextSdsSecretConfig().GetName()
	if caSDS == "" {
		caSDS = common.GetValidationContextSdsSecretConfig().GetName()
	}
	if len(certs) != 1 || certs[0].GetName() != "default" || caSDS != "ROOTCA" {
		return originate(t, common, vc, caSDS)
	}
	// Only exact URI SANs (SPIFFE IDs) are checked; any other matcher is
	// refused rather than ignored, which would accept every server.
	for _, m := range vc.GetMatchTypedSubjectAltNames() {
		e := m.GetMatcher().GetExact()
		if e == "" || m.GetSanType() != tlsv3.SubjectAltNameMatcher_URI {
			return nil, fmt.Errorf("subject alt name matcher %v is not supported (only exact URI SANs)", m)
		}
		t.SANs = append(t.SANs, e)
	}
	for _, m := range vc.GetMatchSubjectAltNames() {
		e := m.GetExact()
		if e == "" {
			return nil, fmt.Errorf("subject alt name matcher %v is not supported (only exact URI SANs)", m)
		}
		t.SANs = append(t.SANs, e)
	}
	return t, nil
}

// originations are a cluster's TLS of the proxy's own (DestinationRule
// SIMPLE or MUTUAL): its transport's and its transport matches'.
func (c *Cluster) originations() []*Originate {
	var out []*Originate
	if c.TLS != nil && c.TLS.Originate != nil {
		out = append(out, c.TLS.Originate)
	}
	for _, m := range c.TLSMatches {
		if m.TLS != nil && m.TLS.Originate != nil {
			out = append(out, m.TLS.Originate)
		}
	}
	return out
}

// originate reads TLS of the proxy's own (a DestinationRule's SIMPLE or
// MUTUAL, as istiod sends it): the client certificate and the CA by SDS
// name, or the CA from a file; no CA at all means no verification
// (Envoy's semantics for insecureSkipVerify). The server's SANs are
// exact DNS names or URIs; any other matcher is refused.
func originate(t *UpstreamTLS, common *tlsv3.CommonTlsContext, vc *tlsv3.CertificateValidationContext, caSDS string) (*UpstreamTLS, error) {
	o := &Originate{CASecret: caSDS}
	switch certs := common.GetTlsCertificateSdsSecretConfigs(); {
	case len(certs) > 1:
		return nil, fmt.Errorf("%d client certificates: one is supported", len(certs))
	case len(certs) == 1:
		o.CertSecret = certs[0].GetName()
	}
	if len(common.GetTlsCertificates()) > 0 {
		return nil, errors.New("inline client certificates are not supported (use an SDS secret)")
	}
	switch ca := vc.GetTrustedCa(); {
	case ca == nil:
	case ca.GetFilename() != "":
		o.CAFile = ca.GetFilename()
	default:
		return nil, errors.New("trusted CA other than a file name is not supported")
	}
	o.Insecure = o.CASecret == "" && o.CAFile == ""
	switch crl := vc.GetCrl(); {
	case crl == nil:
	case o.Insecure:
		return nil, errors.New("a CRL without a CA to verify the server against")
	case crl.GetFilename() != "":
		o.CRLFile = crl.GetFilename()
	default:
		return nil, errors.New("a CRL other than a file name is not supported")
	}
	for _, m := range vc.GetMatchTypedSubjectAltNames() {
		e := m.GetMatcher().GetExact()
		if e == "" || (m.GetSanType() != tlsv3.SubjectAltNameMatcher_DNS && m.GetSanType() != tlsv3.SubjectAltNameMatcher_URI) {
			return nil, fmt.Errorf("subject alt name matcher %v is not supported (exact DNS names and URIs)", m)
		}
		t.SANs = append(t.SANs, e)
	}
	if len(vc.GetMatchSubjectAltNames()) > 0 {
		return nil, errors.New("match_subject_alt_names is not supported when originating TLS (use match_typed_subject_alt_names)")
	}
	if !o.Insecure && t.SNI == "" && len(t.SANs) == 0 {
		return nil, errors.New("TLS to a server verified against a CA needs an SNI or subject alt names to check its certificate against")
	}
	t.Originate = o
	return t, nil
}

func stringFields(s *structpb.Struct) map[string]string {
	out := map[string]string{}
	for k, v := range s.GetFields() {
		out[k] = v.GetStringValue()
	}
	return out
}

func buildEndpoints(a *endpoint.ClusterLoadAssignment) ([]*Endpoint, error) {
	var out []*Endpoint
	for _, l := range a.GetEndpoints() {
		loc := Locality{Region: l.GetLocality().GetRegion(), Zone: l.GetLocality().GetZone(), Subzone: l.GetLocality().GetSubZone()}
		for _, e := range l.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil {
				return nil, errors.New("endpoint without a socket address")
			}
			ip, err := netip.ParseAddr(sa.GetAddress())
			if err != nil {
				return nil, fmt.Errorf("endpoint address %q: %w", sa.GetAddress(), err)
			}
			w := e.GetLoadBalancingWeight().GetValue()
			if w == 0 {
				w = 1
			}
			md := e.GetMetadata().GetFilterMetadata()
			istio := md["istio"].GetFields()
			hs := e.GetHealthStatus()
			out = append(out, &Endpoint{
				Addr: netip.AddrPortFrom(ip, uint16(sa.GetPortValue())), Weight: w, Locality: loc,
				TransportMatch: stringFields(md["envoy.transport_socket_match"]),
				Network:        istio["network"].GetStringValue(), Cluster: istio["cluster"].GetStringValue(),
				Healthy:  hs == core.HealthStatus_HEALTHY || hs == core.HealthStatus_UNKNOWN,
				Priority: l.GetPriority(),
			})
		}
	}
	return out, nil
}

func buildListener(l *listener.Listener) (*Listener, error) {
	sa := l.GetAddress().GetSocketAddress()
	if sa == nil {
		return nil, errors.New("no socket address")
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", sa.GetAddress(), err)
	}
	out := &Listener{
		Name: l.GetName(), Addr: netip.AddrPortFrom(ip, uint16(sa.GetPortValue())),
		Bind: l.GetBindToPort() == nil || l.GetBindToPort().GetValue(), UseOriginalDst: l.GetUseOriginalDst().GetValue(),
	}
	for _, f := range l.GetListenerFilters() {
		switch f.GetName() {
		case "envoy.filters.listener.tls_inspector":
			out.InspectTLS = true
		case "envoy.filters.listener.original_dst":
			out.RestoreDst = true
		case "envoy.filters.listener.http_inspector":
			out.InspectHTTP = true
		default:
			return nil, fmt.Errorf("listener filter %q is not supported", f.GetName())
		}
	}
	for i, fc := range l.GetFilterChains() {
		c, err := buildChain(fc)
		if err != nil {
			return nil, fmt.Errorf("filter chain %d %q: %w", i, fc.GetName(), err)
		}
		out.Chains = append(out.Chains, c)
	}
	if fc := l.GetDefaultFilterChain(); fc != nil {
		c, err := buildChain(fc)
		if err != nil {
			return nil, fmt.Errorf("default filter chain: %w", err)
		}
		out.Default = c
	}
	return out, nil
}

func buildChain(fc *listener.FilterChain) (*Chain, error) {
	m := fc.GetFilterChainMatch()
	if len(m.GetPrefixRanges()) > 0 || len(m.GetSourcePrefixRanges()) > 0 || len(m.GetSourcePorts()) > 0 || len(m.GetDirectSourcePrefixRanges()) > 0 {
		return nil, errors.New("address and source matches are not supported")
	}
	c := &Chain{Name: fc.GetName(), DestPort: m.GetDestinationPort().GetValue(), ServerNames: m.GetServerNames(),
		TransportProtocol: m.GetTransportProtocol(), ALPN: m.GetApplicationProtocols()}
	if ts := fc.GetTransportSocket(); ts != nil {
		if ts.GetName() != "envoy.transport_sockets.tls" {
			return nil, fmt.Errorf("transport socket %q is not supported", ts.GetName())
		}
		var ctx tlsv3.DownstreamTlsContext
		if err := unpack(ts.GetTypedConfig(), &ctx); err != nil {
			return nil, err
		}
		common := ctx.GetCommonTlsContext()
		c.TLS = &DownstreamTLS{RequireClientCert: ctx.GetRequireClientCertificate().GetValue(), ALPN: common.GetAlpnProtocols()}
		// "default" and "ROOTCA" are the workload's own (Istio's agent names).
		if cs := common.GetTlsCertificateSdsSecretConfigs(); len(cs) > 0 && cs[0].GetName() != "default" {
			c.TLS.CertSecret = cs[0].GetName()
		}
		if v := common.GetValidationContextSdsSecretConfig(); v != nil && v.GetName() != "ROOTCA" {
			c.TLS.CASecret = v.GetName()
		}
		tds, err := peerTrustDomains(common)
		if err != nil {
			return nil, err
		}
		c.TLS.PeerTrustDomains = tds
	}
	filters := fc.GetFilters()
	if len(filters) == 0 {
		return nil, errors.New("no filters")
	}
	for _, f := range filters[:len(filters)-1] {
		switch f.GetName() {
		case "istio.stats", "istio.metadata_exchange", "envoy.filters.network.metadata_exchange":
			// Telemetry the proxy does natively.
		case "envoy.filters.network.rbac":
			var r rbacnet.RBAC
			if err := unpack(f.GetTypedConfig(), &r); err != nil {
				return nil, err
			}
			if r.GetShadowRules() != nil {
				return nil, errors.New("RBAC shadow rules are not supported")
			}
			rf, err := rbac.Compile(r.GetRules())
			if err != nil {
				return nil, fmt.Errorf("network RBAC: %w", err)
			}
			if rf != nil {
				c.Authz = append(c.Authz, rf)
			}
		default:
			return nil, fmt.Errorf("network filter %q is not supported", f.GetName())
		}
	}
	last := filters[len(filters)-1]
	switch last.GetName() {
	case "envoy.filters.network.tcp_proxy":
		var t tcpproxy.TcpProxy
		if err := unpack(last.GetTypedConfig(), &t); err != nil {
			return nil, err
		}
		al, err := buildAccessLog(t.GetAccessLog())
		if err != nil {
			return nil, err
		}
		c.TCP = &TCPProxy{StatPrefix: t.GetStatPrefix(), Cluster: t.GetCluster(), AccessLog: al}
		if t.GetIdleTimeout() != nil {
			d := t.GetIdleTimeout().AsDuration()
			c.TCP.IdleTimeout = &d
		}
		for _, h := range t.GetHashPolicy() {
			if h.GetSourceIp() != nil {
				c.TCP.HashSourceIP = true
			}
		}
		for _, w := range t.GetWeightedClusters().GetClusters() {
			c.TCP.Weighted = append(c.TCP.Weighted, WeightedCluster{Name: w.GetName(), Weight: w.GetWeight()})
		}
		if c.TCP.Cluster == "" && len(c.TCP.Weighted) == 0 {
			return nil, errors.New("tcp_proxy without a cluster or weighted clusters")
		}
	case "envoy.filters.network.http_connection_manager":
		var h hcm.HttpConnectionManager
		if err := unpack(last.GetTypedConfig(), &h); err != nil {
			return nil, err
		}
		al, err := buildAccessLog(h.GetAccessLog())
		if err != nil {
			return nil, err
		}
		tr, err := buildTracing(h.GetTracing())
		if err != nil {
			return nil, fmt.Errorf("tracing: %w", err)
		}
		m := &HTTPManager{StatPrefix: h.GetStatPrefix(), AccessLog: al, Tracing: tr,
			ForwardClientCert: h.GetForwardClientCertDetails() == hcm.HttpConnectionManager_APPEND_FORWARD || h.GetForwardClientCertDetails() == hcm.HttpConnectionManager_SANITIZE_SET}
		if h.GetNormalizePath().GetValue() {
			m.Paths.RFC3986 = true
		}
		m.Paths.MergeSlashes = h.GetMergeSlashes()
		for _, u := range h.GetUpgradeConfigs() {
			if len(u.GetFilters()) > 0 {
				return nil, fmt.Errorf("upgrade_configs %q: a filter chain of its own is not supported", u.GetUpgradeType())
			}
			if err := upgrade(&m.Upgrades, u.GetUpgradeType(), u.GetEnabled()); err != nil {
				return nil, err
			}
		}
		m.UseRemoteAddress, m.XFFTrustedHops = h.GetUseRemoteAddress().GetValue(), h.GetXffNumTrustedHops()
		switch h.GetPathWithEscapedSlashesAction() {
		case hcm.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT, hcm.HttpConnectionManager_KEEP_UNCHANGED:
		case hcm.HttpConnectionManager_UNESCAPE_AND_FORWARD:
			m.Paths.EscapedSlashes = UnescapeSlashes
		case hcm.HttpConnectionManager_UNESCAPE_AND_REDIRECT:
			m.Paths.EscapedSlashes = RedirectUnescaped
		case hcm.HttpConnectionManager_REJECT_REQUEST:
			m.Paths.EscapedSlashes = RejectEscapedSlashes
		default:
			return nil, fmt.Errorf("path_with_escaped_slashes_action %s is not supported", h.GetPathWithEscapedSlashesAction())
		}
		switch {
		case h.GetRds() != nil:
			m.RouteName = h.GetRds().GetRouteConfigName()
		case h.GetRouteConfig() != nil:
			rt, err := buildRoutes(h.GetRouteConfig())
			if err != nil {
				return nil, err
			}
			m.Inline = rt
		default:
			return nil, errors.New("http_connection_manager without routes")
		}
		for _, f := range h.GetHttpFilters() {
			switch f.GetName() {
			case "envoy.filters.http.router", "istio.stats", "istio.metadata_exchange", "envoy.filters.http.cors", "envoy.filters.http.fault", "istio.alpn",
				"istio_authn": // the proxy derives istio_authn's request.auth.* from jwt_authn itself
			case "envoy.filters.http.jwt_authn":
				var j jwtv3.JwtAuthentication
				if err := unpack(f.GetTypedConfig(), &j); err != nil {
					return nil, err
				}
				jf, err := jwtauthn.Compile(&j)
				if err != nil {
					return nil, err
				}
				m.JWT = jf
			case "envoy.filters.http.rbac":
				var r rbachttp.RBAC
				if err := unpack(f.GetTypedConfig(), &r); err != nil {
					return nil, err
				}
				if r.GetShadowRules() != nil || r.GetMatcher() != nil {
					return nil, errors.New("RBAC shadow rules and matchers are not supported")
				}
				rf, err := rbac.Compile(r.GetRules())
				if err != nil {
					return nil, fmt.Errorf("HTTP RBAC: %w", err)
				}
				if rf != nil {
					m.Authz = append(m.Authz, rf)
				}
			default:
				return nil, fmt.Errorf("HTTP filter %q is not supported", f.GetName())
			}
		}
		c.HTTP = m
	default:
		return nil, fmt.Errorf("network filter %q is not supported (tcp_proxy and http_connection_manager are)", last.GetName())
	}
	return c, nil
}

// buildAccessLog reads a filter's access_log: one file or stdout logger,
// its format JSON or text. Anything else is refused, never dropped: a log
// someone relies on is not silently missing.
func buildAccessLog(logs []*accesslogv3.AccessLog) (*AccessLog, error) {
	switch len(logs) {
	case 0:
		return nil, nil
	case 1:
	default:
		return nil, fmt.Errorf("%d access logs: one is supported", len(logs))
	}
	l := logs[0]
	if l.GetFilter() != nil {
		return nil, fmt.Errorf("access log %q: filters are not supported", l.GetName())
	}
	var format *core.SubstitutionFormatString
	al := &AccessLog{}
	switch l.GetTypedConfig().GetTypeUrl() {
	case "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog":
		var f filelogv3.FileAccessLog
		if err := unpack(l.GetTypedConfig(), &f); err != nil {
			return nil, err
		}
		if f.GetJsonFormat() != nil || f.GetFormat() != "" {
			return nil, fmt.Errorf("access log %q: json_format and format are deprecated; use log_format", f.GetPath())
		}
		al.Path, format = f.GetPath(), f.GetLogFormat()
	case "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog":
		var f streamlogv3.StdoutAccessLog
		if err := unpack(l.GetTypedConfig(), &f); err != nil {
			return nil, err
		}
		al.Path, format = "/dev/stdout", f.GetLogFormat()
	default:
		return nil, fmt.Errorf("access logger %q (%s) is not supported (file and stdout are)", l.GetName(), l.GetTypedConfig().GetTypeUrl())
	}
	if al.Path == "" {
		return nil, errors.New("file access log without a path")
	}
	al.JSON = format.GetJsonFormat() != nil
	return al, nil
}

// buildTracing reads a connection manager's tracing: Envoy's
// OpenTelemetry tracer exporting over gRPC to a cluster. Tracing without a
// provider is Envoy's bootstrap tracer, which this proxy has none of:
// none, as with Envoy. Other tracers and OTLP over HTTP are refused.
func buildTracing(t *hcm.HttpConnectionManager_Tracing) (*Tracing, error) {
	if t == nil || t.GetProvider() == nil {
		return nil, nil
	}
	if name, url := t.GetProvider().GetName(), t.GetProvider().GetTypedConfig().GetTypeUrl(); url != "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig" {
		return nil, fmt.Errorf("tracer %q (%s) is not supported (envoy.tracers.opentelemetry is)", name, url)
	}
	var oc tracev3.OpenTelemetryConfig
	if err := unpack(t.GetProvider().GetTypedConfig(), &oc); err != nil {
		return nil, err
	}
	g := oc.GetGrpcService().GetEnvoyGrpc()
	switch {
	case oc.GetHttpService() != nil || oc.GetExporter() != nil:
		return nil, errors.New("OpenTelemetry: only export over gRPC (grpc_service) is supported")
	case g.GetClusterName() == "":
		return nil, errors.New("OpenTelemetry: grpc_service needs envoy_grpc with a cluster_name")
	case oc.GetSampler() != nil:
		return nil, fmt.Errorf("OpenTelemetry: sampler %q is not supported", oc.GetSampler().GetName())
	}
	tr := &Tracing{Cluster: g.GetClusterName(), Authority: g.GetAuthority(), Service: oc.GetServiceName(),
		Timeout: oc.GetGrpcService().GetTimeout().AsDuration(), Sampling: 1, MaxPathTag: 256}
	if tr.Authority == "" {
		tr.Authority = tr.Cluster
	}
	if rs := t.GetRandomSampling(); rs != nil {
		tr.Sampling = min(max(rs.GetValue()/100, 0), 1)
	}
	if n := t.GetMaxPathTagLength(); n != nil {
		tr.MaxPathTag = int(n.GetValue())
	}
	for _, tag := range t.GetCustomTags() {
		switch {
		case tag.GetLiteral() != nil:
			tr.Tags = append(tr.Tags, [2]string{tag.GetTag(), tag.GetLiteral().GetValue()})
		case tag.GetRequestHeader() != nil:
			tr.HeaderTags = append(tr.HeaderTags, [2]string{tag.GetTag(), strings.ToLower(tag.GetRequestHeader().GetName())})
		case tag.GetEnvironment() != nil:
			v, ok := os.LookupEnv(tag.GetEnvironment().GetName())
			if !ok {
				v = tag.GetEnvironment().GetDefaultValue()
			}
			tr.Tags = append(tr.Tags, [2]string{tag.GetTag(), v})
		default:
			// Metadata tags (Istio's dry-run policy names) read Envoy's
			// dynamic metadata, which this proxy does not keep.
		}
	}
	return tr, nil
}

// buildSecret reads an inline certificate and key, or an inline CA bundle.
func buildSecret(s *tlsv3.Secret) (*Secret, error) {
	switch {
	case s.GetTlsCertificate() != nil:
		tc := s.GetTlsCertificate()
		cert, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
		if err != nil {
			return nil, fmt.Errorf("certificate and key (inline_bytes): %w", err)
		}
		return &Secret{Cert: &cert}, nil
	case s.GetValidationContext() != nil:
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(s.GetValidationContext().GetTrustedCa().GetInlineBytes()) {
			return nil, errors.New("trusted_ca: no PEM certificate in inline_bytes")
		}
		return &Secret{CA: pool}, nil
	}
	return nil, errors.New("only tls_certificate and validation_context secrets are supported")
}

func buildRoutes(rc *route.RouteConfiguration) (*RouteTable, error) {
	t := &RouteTable{Name: rc.GetName(), exact: map[string]*VirtualHost{}}
	for _, v := range rc.GetVirtualHosts() {
		vh := &VirtualHost{Name: v.GetName(), Domains: v.GetDomains(), RequireTLS: v.GetRequireTls() != route.VirtualHost_NONE}
		for _, r := range v.GetRoutes() {
			rt, err := buildRoute(r)
			if err != nil {
				return nil, fmt.Errorf("virtual host %q route %q: %w", v.GetName(), r.GetName(), err)
			}
			vh.Routes = append(vh.Routes, rt)
		}
		t.VirtualHosts = append(t.VirtualHosts, vh)
		for _, d := range vh.Domains {
			d = strings.ToLower(d)
			switch {
			case d == "*":
				t.suffix = append(t.suffix, domainMatch{suffix: "", vh: vh})
			case strings.HasPrefix(d, "*"):
				t.suffix = append(t.suffix, domainMatch{suffix: d[1:], vh: vh})
			default:
				if _, dup := t.exact[d]; dup {
					return nil, fmt.Errorf("domain %q is in two virtual hosts", d)
				}
				t.exact[d] = vh
			}
		}
	}
	// Longest suffix first; "*" last.
	sort.SliceStable(t.suffix, func(i, j int) bool { return len(t.suffix[i].suffix) > len(t.suffix[j].suffix) })
	return t, nil
}

// headerOps compiles Envoy's headers to add and remove. Values are
// literal (%% is a %): Envoy's %VARIABLE% substitutions are refused, not
// passed on as text; pseudo-headers and the Host are refused, as Envoy
// refuses them.
func headerOps(add []*core.HeaderValueOption, remove []string) (HeaderOps, error) {
	var out HeaderOps
	for _, r := range remove {
		if err := httpfield.Settable(r); err != nil {
			return out, err
		}
		out.Remove = append(out.Remove, strings.ToLower(r))
	}
	for _, o := range add {
		name, value := strings.ToLower(o.GetHeader().GetKey()), o.GetHeader().GetValue()
		if err := httpfield.Settable(name); err != nil {
			return out, err
		}
		if err := httpfield.ValidValue(value); err != nil {
			return out, fmt.Errorf("header %s: %w", name, err)
		}
		if strings.Contains(strings.ReplaceAll(value, "%%", ""), "%") {
			return out, fmt.Errorf("header %s: value %q has a %%VARIABLE%% substitution, which the proxy does not evaluate", name, value)
		}
		value = strings.ReplaceAll(value, "%%", "%")
		kv := [2]string{name, value}
		switch o.GetAppendAction() {
		case core.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			if o.GetAppend() != nil && !o.GetAppend().GetValue() {
				out = out.Then(HeaderOps{Set: [][2]string{kv}}) // the deprecated append: false
				continue
			}
			out.Add = append(out.Add, kv)
		case core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
			// Envoy applies the list in order: this replaces what came before.
			out = out.Then(HeaderOps{Set: [][2]string{kv}})
		default:
			return out, fmt.Errorf("header %s: append action %s is not supported", name, o.GetAppendAction())
		}
	}
	return out, nil
}

// redirectCodes are Envoy's redirect response codes.
var redirectCodes = map[route.RedirectAction_RedirectResponseCode]int{
	route.RedirectAction_MOVED_PERMANENTLY: 301, route.RedirectAction_FOUND: 302, route.RedirectAction_SEE_OTHER: 303,
	route.RedirectAction_TEMPORARY_REDIRECT: 307, route.RedirectAction_PERMANENT_REDIRECT: 308,
}

// goSubstitution turns Envoy's (RE2's) \1 group references into Go's
// ${1}, and a literal $ into $$.
func goSubstitution(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '$':
			b.WriteString("$$")
		case s[i] == '\\' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9':
			b.WriteString("${" + string(s[i+1]) + "}")
			i++
		case s[i] == '\\' && i+1 < len(s) && s[i+1] == '\\':
			b.WriteByte('\\')
			i++
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

func buildRoute(r *route.Route) (*Route, error) {
	out := &Route{Name: r.GetName(), Operation: r.GetDecorator().GetOperation()}
	m := r.GetMatch()
	switch {
	case m.GetPath() != "":
		out.Path = m.GetPath()
	case m.GetPathSpecifier() == nil:
		return nil, errors.New("no path match")
	case m.GetSafeRegex() != nil:
		re, err := regexp.Compile("^(?:" + m.GetSafeRegex().GetRegex() + ")$")
		if err != nil {
			return nil, fmt.Errorf("path regex: %w", err)
		}
		out.Regex = re
	default:
		if _, ok := m.GetPathSpecifier().(*route.RouteMatch_Prefix); !ok {
			return nil, fmt.Errorf("path match %T is not supported (prefix, path and safe_regex are)", m.GetPathSpecifier())
		}
		out.Prefix = m.GetPrefix()
	}
	for _, q := range m.GetQueryParameters() {
		qm := HeaderMatch{Name: q.GetName()}
		switch x := q.GetQueryParameterMatchSpecifier().(type) {
		case *route.QueryParameterMatcher_PresentMatch:
			qm.Present = x.PresentMatch
		case *route.QueryParameterMatcher_StringMatch:
			hm, err := headerMatch(&route.HeaderMatcher{Name: q.GetName(), HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: x.StringMatch}})
			if err != nil {
				return nil, fmt.Errorf("query parameter %q: %w", q.GetName(), err)
			}
			qm.Match = hm.Match
		default:
			return nil, fmt.Errorf("query parameter %q: match %T is not supported (present_match and string_match are)", q.GetName(), x)
		}
		out.Query = append(out.Query, qm)
	}
	for _, h := range m.GetHeaders() {
		hm, err := headerMatch(h)
		if err != nil {
			return nil, fmt.Errorf("header %q: %w", h.GetName(), err)
		}
		out.Headers = append(out.Headers, hm)
	}
	for name, cfg := range r.GetTypedPerFilterConfig() {
		if name == "envoy.filters.http.cors" {
			var c corsv3.CorsPolicy
			if err := unpack(cfg, &c); err != nil {
				return nil, err
			}
			for _, l := range []string{c.GetAllowMethods(), c.GetAllowHeaders(), c.GetExposeHeaders()} {
				if err := httpfield.TokenList(l); err != nil {
					return nil, fmt.Errorf("cors: %w", err)
				}
			}
			if _, err := strconv.ParseUint(c.GetMaxAge(), 10, 32); c.GetMaxAge() != "" && err != nil {
				return nil, fmt.Errorf("cors max_age %q is not a number of seconds", c.GetMaxAge())
			}
			out.CORS = &CORS{AllowMethods: c.GetAllowMethods(), AllowHeaders: c.GetAllowHeaders(), ExposeHeaders: c.GetExposeHeaders(),
				MaxAge: c.GetMaxAge(), AllowCredentials: c.GetAllowCredentials().GetValue(),
				ForwardUnmatched: c.GetForwardNotMatchingPreflights() == nil || c.GetForwardNotMatchingPreflights().GetValue()}
			for _, o := range c.GetAllowOriginStringMatch() {
				hm, err := headerMatch(&route.HeaderMatcher{Name: "origin", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: o}})
				if err != nil {
					return nil, fmt.Errorf("cors allow_origin_string_match: %w", err)
				}
				out.CORS.Origins = append(out.CORS.Origins, hm.Match)
			}
			continue
		}
		if name != "envoy.filters.http.fault" {
			return nil, fmt.Errorf("per-route config of %q is not supported", name)
		}
		var f faultv3.HTTPFault
		if err := unpack(cfg, &f); err != nil {
			return nil, err
		}
		out.Fault = &Fault{}
		if d := f.GetDelay(); d != nil {
			out.Fault.Delay, out.Fault.DelayShare = d.GetFixedDelay().AsDuration(), share(d.GetPercentage())
		}
		if a := f.GetAbort(); a != nil {
			if a.GetHttpStatus() == 0 {
				return nil, errors.New("fault abort without an HTTP status (gRPC aborts are not supported)")
			}
			out.Fault.AbortStatus, out.Fault.AbortShare = int(a.GetHttpStatus()), share(a.GetPercentage())
		}
	}
	var err error
	if out.RequestHeaders, err = headerOps(r.GetRequestHeadersToAdd(), r.GetRequestHeadersToRemove()); err != nil {
		return nil, fmt.Errorf("request headers: %w", err)
	}
	if out.ResponseHeaders, err = headerOps(r.GetResponseHeadersToAdd(), r.GetResponseHeadersToRemove()); err != nil {
		return nil, fmt.Errorf("response headers: %w", err)
	}
	if rd := r.GetRedirect(); rd != nil {
		if rd.GetPrefixRewrite() != "" || rd.GetRegexRewrite() != nil || rd.GetStripQuery() {
			return nil, errors.New("redirect: prefix_rewrite, regex_rewrite and strip_query are not supported")
		}
		out.Redirect = &Redirect{Scheme: rd.GetSchemeRedirect(), Host: rd.GetHostRedirect(), Path: rd.GetPathRedirect(), Port: rd.GetPortRedirect(),
			Code: redirectCodes[rd.GetResponseCode()]}
		if rd.GetHttpsRedirect() {
			out.Redirect.Scheme = "https"
		}
		return out, nil
	}
	if dr := r.GetDirectResponse(); dr != nil {
		if dr.GetStatus() < 200 || dr.GetStatus() > 599 {
			return nil, fmt.Errorf("direct response status %d is not in 200..599", dr.GetStatus())
		}
		out.Direct = &DirectResponse{Status: int(dr.GetStatus())}
		switch b := dr.GetBody(); {
		case b == nil:
		case b.GetInlineString() != "":
			out.Direct.Body = b.GetInlineString()
		case b.GetInlineBytes() != nil:
			out.Direct.Body = string(b.GetInlineBytes())
		default:
			return nil, errors.New("direct response body: only inline_string and inline_bytes are supported")
		}
		return out, nil
	}
	a := r.GetRoute()
	if a == nil {
		return nil, errors.New("route without an action (route, redirect or direct_response)")
	}
	switch {
	case a.GetCluster() != "":
		out.Clusters = []WeightedCluster{{Name: a.GetCluster(), Weight: 1}}
	case a.GetWeightedClusters() != nil:
		for _, w := range a.GetWeightedClusters().GetClusters() {
			wc := WeightedCluster{Name: w.GetName(), Weight: w.GetWeight().GetValue()}
			var err error
			if wc.RequestHeaders, err = headerOps(w.GetRequestHeadersToAdd(), w.GetRequestHeadersToRemove()); err != nil {
				return nil, fmt.Errorf("cluster %s request headers: %w", w.GetName(), err)
			}
			if wc.ResponseHeaders, err = headerOps(w.GetResponseHeadersToAdd(), w.GetResponseHeadersToRemove()); err != nil {
				return nil, fmt.Errorf("cluster %s response headers: %w", w.GetName(), err)
			}
			out.Clusters = append(out.Clusters, wc)
		}
	default:
		return nil, errors.New("route without a cluster")
	}
	for _, h := range a.GetHashPolicy() {
		switch {
		case h.GetHeader() != nil:
			out.Hash = append(out.Hash, HashPolicy{Header: strings.ToLower(h.GetHeader().GetHeaderName())})
		case h.GetCookie() != nil:
			out.Hash = append(out.Hash, HashPolicy{Cookie: h.GetCookie().GetName()})
		case h.GetQueryParameter() != nil:
			out.Hash = append(out.Hash, HashPolicy{QueryParameter: h.GetQueryParameter().GetName()})
		case h.GetConnectionProperties().GetSourceIp():
			out.Hash = append(out.Hash, HashPolicy{SourceIP: true})
		default:
			return nil, errors.New("hash policy: only header, cookie, query_parameter and source_ip are supported")
		}
	}
	for _, u := range a.GetUpgradeConfigs() {
		if u.GetConnectConfig() != nil {
			return nil, fmt.Errorf("upgrade_configs %q: connect_config is not supported", u.GetUpgradeType())
		}
		if err := upgrade(&out.Upgrades, u.GetUpgradeType(), u.GetEnabled()); err != nil {
			return nil, err
		}
	}
	out.PrefixRewrite = a.GetPrefixRewrite()
	out.HostRewrite = a.GetHostRewriteLiteral()
	if rr := a.GetRegexRewrite(); rr != nil {
		re, err := regexp.Compile(rr.GetPattern().GetRegex())
		if err != nil {
			return nil, fmt.Errorf("regex_rewrite: %w", err)
		}
		out.RegexRewrite, out.RegexSubstitution = re, goSubstitution(rr.GetSubstitution())
	}
	for _, m := range a.GetRequestMirrorPolicies() {
		if m.GetCluster() == "" {
			return nil, errors.New("request mirror policy: only a cluster is supported (cluster_header is not)")
		}
		// A runtime key has no runtime here to read: its default holds.
		mirror := Mirror{Cluster: m.GetCluster(), Share: 1, KeepHost: m.GetDisableShadowHostSuffixAppend()}
		if f := m.GetRuntimeFraction(); f != nil {
			mirror.Share = share(f.GetDefaultValue())
		}
		out.Mirrors = append(out.Mirrors, mirror)
	}
	if a.GetTimeout() != nil {
		out.Timeout = a.GetTimeout().AsDuration()
	} else {
		out.Timeout = 15 * time.Second // Envoy's default
	}
	if rp := a.GetRetryPolicy(); rp != nil {
		p := &RetryPolicy{On: map[string]bool{}, NumRetries: 1, StatusCodes: map[uint32]bool{}}
		for _, on := range strings.Split(rp.GetRetryOn(), ",") {
			if on = strings.TrimSpace(on); on != "" {
				p.On[on] = true
			}
		}
		if rp.GetNumRetries() != nil {
			p.NumRetries = rp.GetNumRetries().GetValue()
		}
		for _, c := range rp.GetRetriableStatusCodes() {
			p.StatusCodes[c] = true
		}
		p.PerTryTimeout = rp.GetPerTryTimeout().AsDuration()
		out.Retry = p
	}
	return out, nil
}

// share is Envoy's FractionalPercent as a fraction 0..1 (nil is 100%).
func share(p *typev3.FractionalPercent) float64 {
	if p == nil {
		return 1
	}
	den := 100.0
	switch p.GetDenominator() {
	case typev3.FractionalPercent_TEN_THOUSAND:
		den = 10000
	case typev3.FractionalPercent_MILLION:
		den = 1000000
	}
	return float64(p.GetNumerator()) / den
}

// headerMatch compiles one route header matcher.
func headerMatch(h *route.HeaderMatcher) (HeaderMatch, error) {
	hm := HeaderMatch{Name: strings.ToLower(h.GetName()), Invert: h.GetInvertMatch()}
	switch x := h.GetHeaderMatchSpecifier().(type) {
	case nil:
		hm.Present = true
	case *route.HeaderMatcher_PresentMatch:
		hm.Present = x.PresentMatch
	case *route.HeaderMatcher_ExactMatch:
		hm.Match = func(v string) bool { return v == x.ExactMatch }
	case *route.HeaderMatcher_PrefixMatch:
		hm.Match = func(v string) bool { return strings.HasPrefix(v, x.PrefixMatch) }
	case *route.HeaderMatcher_SuffixMatch:
		hm.Match = func(v string) bool { return strings.HasSuffix(v, x.SuffixMatch) }
	case *route.HeaderMatcher_SafeRegexMatch:
		re, err := regexp.Compile("^(?:" + x.SafeRegexMatch.GetRegex() + ")$")
		if err != nil {
			return hm, err
		}
		hm.Match = re.MatchString
	case *route.HeaderMatcher_StringMatch:
		sm := x.StringMatch
		fold := func(s string) string { return s }
		if sm.GetIgnoreCase() {
			fold = strings.ToLower
		}
		switch y := sm.GetMatchPattern().(type) {
		case *matcherv3.StringMatcher_Exact:
			hm.Match = func(v string) bool { return fold(v) == fold(y.Exact) }
		case *matcherv3.StringMatcher_Prefix:
			hm.Match = func(v string) bool { return strings.HasPrefix(fold(v), fold(y.Prefix)) }
		case *matcherv3.StringMatcher_Suffix:
			hm.Match = func(v string) bool { return strings.HasSuffix(fold(v), fold(y.Suffix)) }
		case *matcherv3.StringMatcher_Contains:
			hm.Match = func(v string) bool { return strings.Contains(fold(v), fold(y.Contains)) }
		case *matcherv3.StringMatcher_SafeRegex:
			re, err := regexp.Compile("^(?:" + y.SafeRegex.GetRegex() + ")$")
			if err != nil {
				return hm, err
			}
			hm.Match = re.MatchString
		default:
			return hm, fmt.Errorf("string match %T is not supported", sm.GetMatchPattern())
		}
	default:
		return hm, fmt.Errorf("header match %T is not supported", h.GetHeaderMatchSpecifier())
	}
	return hm, nil
}

// upgrade records one of Envoy's upgrade_configs (enabled unless it says
// false). CONNECT is refused rather than taken: the proxy does not tunnel,
// and answers every CONNECT 403.
func upgrade(into *map[string]bool, typ string, enabled *wrapperspb.BoolValue) error {
	typ = strings.ToLower(typ)
	on := enabled == nil || enabled.GetValue()
	if typ == "" {
		return errors.New("upgrade_configs: an entry without an upgrade_type")
	}
	if typ == "connect" && on {
		return errors.New("upgrade_configs: CONNECT (tunnelling) is not supported")
	}
	if *into == nil {
		*into = map[string]bool{}
	}
	(*into)[typ] = on
	return nil
}
