package proxyview

import (
	"crypto/tls"
	"fmt"
	"slices"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/wrapperspb"
	apinetworking "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// Secrets is what a Config offers when it can read Kubernetes Secrets: the
// TLS credentials that Gateway servers name with credentialName. Without
// it, HTTPS servers that terminate TLS are skipped.
type Secrets interface {
	// Secret returns the Secret of the gateway's cluster, or nil.
	Secret(namespace, name string) *corev1.Secret
}

// SDSPrefix names a credentialName secret as Istio's gateways ask for it.
const SDSPrefix = "kubernetes://"

// ingress accumulates what a router serves of HTTP and HTTPS servers.
type ingress struct {
	p   *Proxy
	cfg Config
	// vss are the VirtualServices, oldest first (the oldest wins a host).
	vss     []*networkingv1.VirtualService
	domain  string
	warn    func(string)
	ports   func(host string) []int32
	hash    func(host string, port int32) []*route.RouteAction_HashPolicy
	http    map[uint32]*route.RouteConfiguration // plain HTTP route "http.PORT" per listen port
	routes  []*route.RouteConfiguration
	secrets map[string]*tlsv3.Secret
	// authz and jwt are the AuthorizationPolicies and
	// RequestAuthentications that select the gateway.
	authz Authz
	jwt   *jwtv3.JwtAuthentication
}

// isHTTPServer tells the servers a router speaks HTTP on: protocol HTTP,
// HTTP2 or GRPC, or HTTPS unless its TLS is passed through.
func isHTTPServer(srv *apinetworking.Server) bool {
	switch strings.ToUpper(srv.GetPort().GetProtocol()) {
	case "HTTP", "HTTP2", "GRPC":
		return true
	case "HTTPS":
		m := srv.GetTls().GetMode()
		return srv.GetTls() != nil && m != apinetworking.ServerTLSSettings_PASSTHROUGH && m != apinetworking.ServerTLSSettings_AUTO_PASSTHROUGH
	}
	return false
}

// httpChain is a plain HTTP server's chain: every HTTP server on a listen
// port shares it and its route "http.PORT", as in Istio.
func (in *ingress) httpChain(gw *networkingv1.Gateway, srv *apinetworking.Server, listen uint32) *listener.FilterChain {
	rc, ok := in.http[listen]
	var chain *listener.FilterChain
	if !ok {
		rc = &route.RouteConfiguration{Name: fmt.Sprintf("http.%d", listen), ValidateClusters: wrapperspb.Bool(false)}
		in.http[listen] = rc
		in.routes = append(in.routes, rc)
		chain = &listener.FilterChain{
			Name:    rc.Name,
			Filters: []*listener.Filter{httpManager(in.manager(rc.Name))},
		}
	}
	in.addHosts(rc, gw, srv, srv.GetTls().GetHttpsRedirect())
	return chain
}

// manager is an HTTP server's connection manager: routes by RDS name, the
// policies that select the gateway, the client's address from the
// connection (appended to X-Forwarded-For, which is believed about the
// mesh's trusted proxies), as Istio's gateways do.
func (in *ingress) manager(routeName string) *hcm.HttpConnectionManager {
	m := rdsManager(routeName, routeName, routerFilter(), in.p.Paths)
	m.HttpFilters = append(append(jwtFilters(in.jwt), in.authz.httpFilters()...), m.HttpFilters...)
	m.UseRemoteAddress, m.XffNumTrustedHops = wrapperspb.Bool(true), in.p.NumTrustedProxies
	return m
}

// httpsChain terminates TLS with the server's credentialName secret (and,
// for MUTUAL, requires client certificates signed by its CA) and routes by
// the route "https.PORT.NAME.GATEWAY.NAMESPACE".
func (in *ingress) httpsChain(gw *networkingv1.Gateway, srv *apinetworking.Server, listen uint32) *listener.FilterChain {
	t := srv.GetTls()
	where := fmt.Sprintf("Gateway %s/%s server %d", gw.Namespace, gw.Name, srv.GetPort().GetNumber())
	mutual := false
	switch t.GetMode() {
	case apinetworking.ServerTLSSettings_SIMPLE:
	case apinetworking.ServerTLSSettings_MUTUAL:
		mutual = true
	default:
		in.warn(where + ": tls.mode " + t.GetMode().String() + " is not supported on HTTPS servers (SIMPLE, MUTUAL, PASSTHROUGH); server skipped")
		return nil
	}
	if t.GetCredentialName() == "" {
		in.warn(where + ": tls.credentialName is empty; isthmus reads certificates from Secrets only (serverCertificate files are not supported); server skipped")
		return nil
	}
	if !in.credential(where, t.GetCredentialName(), mutual) {
		return nil
	}
	name := fmt.Sprintf("https.%d.%s.%s.%s", srv.GetPort().GetNumber(), srv.GetPort().GetName(), gw.Name, gw.Namespace)
	rc := &route.RouteConfiguration{Name: name, ValidateClusters: wrapperspb.Bool(false)}
	in.routes = append(in.routes, rc)
	in.addHosts(rc, gw, srv, false)
	ads := adsSource()
	ctx := &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(mutual),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			AlpnProtocols:                  []string{"h2", "http/1.1"},
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: SDSPrefix + t.GetCredentialName(), SdsConfig: ads}},
		},
	}
	if mutual {
		ctx.CommonTlsContext.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: SDSPrefix + t.GetCredentialName() + "-cacert", SdsConfig: ads}}
	}
	chain := &listener.FilterChain{
		Name:            name,
		TransportSocket: &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(ctx)}},
		Filters:         []*listener.Filter{httpManager(in.manager(name))},
	}
	var sni []string
	for _, h := range srv.GetHosts() {
		if _, after, ok := strings.Cut(h, "/"); ok {
			h = after
		}
		if h == "*" {
			sni = nil
			break
		}
		sni = append(sni, h)
	}
	if len(sni) > 0 {
		chain.FilterChainMatch = &listener.FilterChainMatch{ServerNames: sni}
	}
	return chain
}

// credential turns the server's Secret (in the gateway pod's namespace)
// into SDS secrets: tls.crt/tls.key (or cert/key), and for MUTUAL the CA
// from ca.crt/cacert of the same Secret or of NAME-cacert, as Istio reads
// them. A missing or broken credential is reported and the server skipped.
func (in *ingress) credential(where, name string, mutual bool) bool {
	src, ok := in.cfg.(Secrets)
	if !ok {
		in.warn(where + ": this control plane cannot read Secrets; server skipped")
		return false
	}
	sec := src.Secret(in.p.Namespace, name)
	if sec == nil {
		in.warn(fmt.Sprintf("%s: credentialName %q: no such Secret in namespace %s (the gateway's own namespace); server skipped until it exists", where, name, in.p.Namespace))
		return false
	}
	cs, err := certSecret(name, sec)
	if err != nil {
		in.warn(fmt.Sprintf("%s: Secret %s/%s: want a certificate and key in tls.crt and tls.key (or cert and key): %v; server skipped", where, in.p.Namespace, name, err))
		return false
	}
	in.secrets[cs.Name] = cs
	if !mutual {
		return true
	}
	ca := caSecret(src, in.p.Namespace, name, sec)
	if ca == nil {
		in.warn(fmt.Sprintf("%s: tls.mode MUTUAL needs a CA: ca.crt (or cacert) in Secret %s/%s or in Secret %s-cacert; server skipped", where, in.p.Namespace, name, name))
		return false
	}
	in.secrets[ca.Name] = ca
	return true
}

// certSecret is a credential's certificate and key as an SDS secret,
// kubernetes://NAME: tls.crt and tls.key (or cert and key) of its Secret,
// which must pair.
func certSecret(name string, sec *corev1.Secret) (*tlsv3.Secret, error) {
	var cert, key []byte
	if sec != nil {
		cert, key = first2(sec.Data, "tls.crt", "cert"), first2(sec.Data, "tls.key", "key")
	}
	if _, err := tls.X509KeyPair(cert, key); err != nil {
		return nil, err
	}
	return &tlsv3.Secret{Name: SDSPrefix + name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: inline(cert), PrivateKey: inline(key)}}}, nil
}

// caSecret is a credential's CA as an SDS secret, kubernetes://NAME-cacert,
// as Istio reads it: ca.crt (or cacert) of its Secret sec (nil: none),
// else of Secret NAME-cacert; nil without one.
func caSecret(src Secrets, ns, name string, sec *corev1.Secret) *tlsv3.Secret {
	var ca []byte
	if sec != nil {
		ca = first2(sec.Data, "ca.crt", "cacert")
	}
	if len(ca) == 0 {
		if s := src.Secret(ns, name+"-cacert"); s != nil {
			ca = first2(s.Data, "ca.crt", "cacert")
		}
	}
	if len(ca) == 0 {
		return nil
	}
	return &tlsv3.Secret{Name: SDSPrefix + name + "-cacert", Type: &tlsv3.Secret_ValidationContext{
		ValidationContext: &tlsv3.CertificateValidationContext{TrustedCa: inline(ca)}}}
}

func first2(data map[string][]byte, a, b string) []byte {
	if v := data[a]; len(v) > 0 {
		return v
	}
	return data[b]
}

func inline(b []byte) *core.DataSource {
	return &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: b}}
}

// addHosts adds a virtual host to rc for every host of a VirtualService
// bound to the gateway that the server admits (oldest VirtualService wins
// a host), with its http routes.
func (in *ingress) addHosts(rc *route.RouteConfiguration, gw *networkingv1.Gateway, srv *apinetworking.Server, redirect bool) {
	port := srv.GetPort().GetNumber()
	scope := routeScope{gateway: gw.Namespace + "/" + gw.Name, namespace: in.p.Namespace, port: int32(port), destPort: func(host string) int32 {
		if ps := in.ports(host); len(ps) == 1 {
			return ps[0]
		}
		return 0
	}, hash: in.hash}
	for _, vs := range in.vss {
		if !boundTo(vs, gw) || len(vs.Spec.GetHttp()) == 0 {
			continue
		}
		var routes []*route.Route // built once per VirtualService, on its first host
		for _, h := range vs.Spec.GetHosts() {
			for _, d := range admitted(srv.GetHosts(), gw.Namespace, vs.Namespace, h) {
				name := fmt.Sprintf("%s:%d", d, port)
				if slices.ContainsFunc(rc.VirtualHosts, func(v *route.VirtualHost) bool { return v.Name == name }) {
					continue
				}
				if routes == nil {
					routes = vsRoutes(vs, scope, in.domain, in.warn)
				}
				vh := &route.VirtualHost{Name: name, Domains: []string{d}, Routes: routes}
				if redirect {
					vh.RequireTls = route.VirtualHost_ALL
				}
				rc.VirtualHosts = append(rc.VirtualHosts, vh)
			}
		}
	}
	if redirect && len(rc.VirtualHosts) == 0 {
		// httpsRedirect without routes still redirects every host.
		rc.VirtualHosts = append(rc.VirtualHosts, &route.VirtualHost{Name: fmt.Sprintf("*:%d", port), Domains: []string{"*"}, RequireTls: route.VirtualHost_ALL})
	}
}

// admitted returns the domains a VirtualService host (of namespace vsNS)
// gets on a server with these hosts ("[ns/]host", ns "*", "." for the
// gateway's namespace, or a namespace): the host itself when a server host
// matches it, or the server's hosts when the VirtualService says "*".
func admitted(serverHosts []string, gwNS, vsNS, host string) []string {
	var out []string
	for _, sh := range serverHosts {
		ns, h, found := strings.Cut(sh, "/")
		if !found {
			ns, h = "*", sh
		}
		if ns == "." {
			ns = gwNS
		}
		if ns != "*" && ns != vsNS {
			continue
		}
		switch {
		case hostCovers(h, host):
			out = append(out, host)
		case hostCovers(host, h):
			out = append(out, h)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// hostCovers reports whether pattern ("*", "*.example.com" or a name)
// matches host.
func hostCovers(pattern, host string) bool {
	switch {
	case pattern == "*" || pattern == host:
		return true
	case strings.HasPrefix(pattern, "*."):
		return strings.HasSuffix(host, pattern[1:])
	}
	return false
}

// servicePorts resolves a destination host to its service's ports, for
// gateway routes that name no port.
func servicePorts(services []*registry.Service) func(string) []int32 {
	by := make(map[string][]int32, len(services))
	for _, s := range services {
		for _, p := range s.Ports {
			if p.Protocol != "UDP" {
				by[s.Hostname] = append(by[s.Hostname], p.Port)
			}
		}
	}
	return func(host string) []int32 { return by[host] }
}

// listenPorts maps a router's Service ports to the ports its pod listens
// on (the Services' target ports), so that a Gateway server on port 80 of
// istio-ingressgateway is served on 8080 as with Istio; found from the
// router's own endpoints in its cluster.
func listenPorts(p *Proxy, reg *registry.Registry, services []*registry.Service) map[uint32]uint32 {
	out := map[uint32]uint32{}
	for _, svc := range services {
		for _, e := range reg.Endpoints(svc.Hostname) {
			if e.Cluster != p.ClusterID || e.Address != p.IP {
				continue
			}
			for _, sp := range svc.Ports {
				if tp, ok := e.Ports[sp.Name]; ok {
					out[uint32(sp.Port)] = uint32(tp)
				}
			}
		}
	}
	return out
}

func (in *ingress) secretResources() []types.Resource {
	names := make([]string, 0, len(in.secrets))
	for n := range in.secrets {
		names = append(names, n)
	}
	slices.Sort(names)
	out := make([]types.Resource, 0, len(names))
	for _, n := range names {
		out = append(out, in.secrets[n])
	}
	return out
}
