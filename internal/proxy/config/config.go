// Package config compiles the xDS resources a proxy accepted into the
// structures its data path reads: listeners with their filter chains,
// route tables, clusters with their endpoints and upstream TLS. A snapshot
// is immutable; the proxy swaps snapshots atomically, so a connection
// sees one consistent configuration from accept to close.
//
// Only what isthmus's control plane (and Istio's, for these shapes) sends
// is understood; anything else is an error, and the update is NACKed.
package config

import (
	"crypto/tls"
	"crypto/x509"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/proxy/jwtauthn"
	"github.com/isthmus-mesh/isthmus/internal/proxy/rbac"
)

// Snapshot is one accepted configuration.
type Snapshot struct {
	Listeners map[string]*Listener
	Clusters  map[string]*Cluster
	Routes    map[string]*RouteTable
	// Secrets are TLS credentials sent by the control plane (a gateway's
	// credentialName), by SDS name.
	Secrets map[string]*Secret
}

// Secret is an SDS secret: a certificate with its key, or a CA to verify
// client certificates with.
type Secret struct {
	Cert *tls.Certificate
	CA   *x509.CertPool
}

// Listener is an Envoy listener.
type Listener struct {
	Name string
	Addr netip.AddrPort
	// Bind: the proxy opens a socket for it. Virtual listeners (bind_to_port
	// false) are only dispatched to from one that uses the original destination.
	Bind bool
	// UseOriginalDst hands a redirected connection to the listener of its
	// original destination (virtualOutbound).
	UseOriginalDst bool
	// RestoreDst matches chains on the original destination (the
	// original_dst listener filter of virtualInbound).
	RestoreDst bool
	// InspectTLS: read the ClientHello (SNI, ALPN) before choosing a chain.
	InspectTLS bool
	// InspectHTTP: on plaintext, tell HTTP/1.x ("http/1.1", "http/1.0") and
	// h2c from other protocols by the first line, matched as ALPN.
	InspectHTTP bool
	Chains      []*Chain
	Default     *Chain
}

// Chain is a filter chain: its match, optional TLS termination, and one
// terminal filter (TCP proxy or HTTP connection manager).
type Chain struct {
	Name string
	// Match; zero values match anything.
	DestPort          uint32
	ServerNames       []string
	TransportProtocol string // "tls" or "raw_buffer"
	ALPN              []string

	TLS  *DownstreamTLS
	TCP  *TCPProxy
	HTTP *HTTPManager
	// Authz are the network RBAC filters, checked when a connection opens.
	Authz []*rbac.Filter
}

// DownstreamTLS terminates TLS: Istio mTLS with the workload certificate,
// or, when CertSecret names an SDS secret, a gateway's own certificate
// (and client certificates verified against CASecret).
type DownstreamTLS struct {
	RequireClientCert bool
	ALPN              []string
	CertSecret        string
	CASecret          string
	// PeerTrustDomains are the only trust domains whose workloads Istio
	// mTLS accepts (URI SAN prefixes spiffe://TD/); empty: any.
	PeerTrustDomains []string
}

// TCPProxy forwards bytes to a cluster, or to one of weighted clusters
// chosen per connection (a VirtualService's tcp route).
type TCPProxy struct {
	StatPrefix string
	// AccessLog is where the chain's connections are logged (nil: as the
	// proxy was started, --access-log).
	AccessLog *AccessLog
	Cluster   string
	Weighted  []WeightedCluster
	// HashSourceIP: a consistent-hash cluster is picked by the client's address.
	HashSourceIP bool
	// IdleTimeout is the route's tcp_proxy idle_timeout (0: none); nil
	// takes the proxy's default.
	IdleTimeout *time.Duration
}

// HTTPManager routes requests.
type HTTPManager struct {
	StatPrefix string
	// AccessLog is where the chain's requests are logged (nil: as the
	// proxy was started, --access-log).
	AccessLog *AccessLog
	// RouteName is an RDS route; Inline is a route table sent in the listener.
	RouteName string
	Inline    *RouteTable
	// ForwardClientCert sets X-Forwarded-Client-Cert as Istio's inbound does.
	ForwardClientCert bool
	// Authz are the HTTP RBAC filters, checked for each request.
	Authz []*rbac.Filter
	// JWT is the jwt_authn filter (RequestAuthentication), checked before
	// Authz; nil without one.
	JWT *jwtauthn.Filter
	// Paths is how request paths are normalized before routing and
	// policy (meshConfig pathNormalization, as Envoy's fields say it).
	Paths PathNormalization
	// UseRemoteAddress: the connection's peer is the client (a gateway's
	// edge), appended to X-Forwarded-For; XFFTrustedHops is how many
	// proxies in front of it X-Forwarded-For may be believed about
	// (Envoy's use_remote_address and xff_num_trusted_hops).
	UseRemoteAddress bool
	XFFTrustedHops   uint32
	// Tracing makes a span of each request; nil: none.
	Tracing *Tracing
	// Upgrades are the upgrade types (lower case: "websocket") requests
	// may switch their connection to (Envoy's upgrade_configs); a route's
	// own Upgrades override them. Others are refused: an upgrade the
	// proxy let through unasked (h2c) would carry requests no route or
	// policy sees.
	Upgrades map[string]bool
}

// UpgradeAllowed tells whether a request on route r may switch its
// connection to the protocol typ (its Upgrade header), as Envoy decides:
// the route's setting for the type if it has one, else the manager's.
func (m *HTTPManager) UpgradeAllowed(r *Route, typ string) bool {
	typ = strings.ToLower(typ)
	if r != nil {
		if on, ok := r.Upgrades[typ]; ok {
			return on
		}
	}
	return m != nil && m.Upgrades[typ]
}

// Tracing is a connection manager's tracing with Envoy's OpenTelemetry
// tracer over gRPC: spans of Service go to Cluster (Authority as the
// :authority); a request that comes without a sampling decision starts a
// sampled trace with the probability Sampling (0..1). Tags are literal
// span attributes (Istio's istio.canonical_service and the like) and
// HeaderTags attributes from request headers (tag, header).
type Tracing struct {
	Cluster, Authority, Service string
	Timeout                     time.Duration
	Sampling                    float64
	Tags, HeaderTags            [][2]string
	// MaxPathTag bounds the http.url attribute (Envoy's default 256).
	MaxPathTag int
}

// PathNormalization is the HTTP connection manager's normalize_path,
// merge_slashes and path_with_escaped_slashes_action.
type PathNormalization struct {
	// RFC3986 decodes percent-encoded unreserved characters, turns
	// backslashes into slashes and resolves dot segments (BASE).
	RFC3986 bool
	// MergeSlashes collapses runs of slashes (MERGE_SLASHES).
	MergeSlashes bool
	// EscapedSlashes is what %2F and %5C become (DECODE_AND_MERGE_SLASHES
	// unescapes them).
	EscapedSlashes EscapedSlashes
}

// EscapedSlashes is Envoy's path_with_escaped_slashes_action.
type EscapedSlashes int

const (
	KeepEscapedSlashes EscapedSlashes = iota
	// UnescapeSlashes decodes them and forwards the result.
	UnescapeSlashes
	// RedirectUnescaped answers with a redirect to the decoded path.
	RedirectUnescaped
	// RejectEscapedSlashes answers 400.
	RejectEscapedSlashes
)

// RouteTable is a route configuration: virtual hosts chosen by Host.
type RouteTable struct {
	Name         string
	VirtualHosts []*VirtualHost
	exact        map[string]*VirtualHost
	suffix       []domainMatch // "*.example.com" and "*"
}

type domainMatch struct {
	suffix string
	vh     *VirtualHost
}

// VirtualHost is a set of routes for some domains.
type VirtualHost struct {
	Name    string
	Domains []string
	Routes  []*Route
	// RequireTLS redirects plaintext requests to https (Gateway httpsRedirect).
	RequireTLS bool
}

// Route is one route: a path match and where to send it.
type Route struct {
	Name string
	// Operation names the route's spans (Envoy's decorator).
	Operation string
	Prefix    string
	Path      string
	// Regex matches the whole path (Envoy's safe_regex).
	Regex *regexp.Regexp
	// Headers must all match; :method, :authority and :scheme are
	// headers too.
	Headers []HeaderMatch
	// Query are query parameter conditions, all of which must match
	// (Envoy's query_parameters, on the parameters' raw values).
	Query []HeaderMatch
	// Fault delays or aborts a share of requests (Envoy's fault filter).
	Fault *Fault
	// PrefixRewrite replaces the matched prefix; HostRewrite the Host.
	PrefixRewrite, HostRewrite string
	// RegexRewrite replaces what it matches in the path with
	// RegexSubstitution (Go's ${1} form).
	RegexRewrite      *regexp.Regexp
	RegexSubstitution string
	// Redirect or Direct: the route answers itself (no Clusters).
	Redirect *Redirect
	Direct   *DirectResponse
	// RequestHeaders and ResponseHeaders are the route's header
	// operations (a destination's come first, as in Envoy).
	RequestHeaders, ResponseHeaders HeaderOps
	// CORS is the route's CORS policy (Envoy's cors filter); nil: none.
	CORS *CORS
	// Clusters with weights; one entry for a plain cluster route.
	Clusters []WeightedCluster
	// Timeout 0 means none.
	Timeout time.Duration
	Retry   *RetryPolicy
	// Hash is how a request is hashed for consistent-hash clusters: the
	// first policy that yields a value wins.
	Hash []HashPolicy
	// Mirrors get a copy of a share of the requests (Envoy's
	// request_mirror_policies); their answers are dropped.
	Mirrors []Mirror
	// Upgrades enable or disable upgrade types for the route (lower case),
	// over the connection manager's Upgrades.
	Upgrades map[string]bool
}

// Mirror is one of Envoy's request mirror policies: a cluster that gets a
// copy of Share (0..1) of the route's requests, its Host ending in
// "-shadow" unless KeepHost.
type Mirror struct {
	Cluster  string
	Share    float64
	KeepHost bool
}

// CORS is Envoy's per-route CORS policy.
type CORS struct {
	// Origins match the Origin header; one match allows it.
	Origins                                           []func(string) bool
	AllowMethods, AllowHeaders, ExposeHeaders, MaxAge string
	AllowCredentials                                  bool
	// ForwardUnmatched: a preflight from an origin not allowed goes
	// upstream; else it is answered here, without CORS headers.
	ForwardUnmatched bool
}

// Redirect is Envoy's redirect action: each empty field keeps the
// request's part.
type Redirect struct {
	Scheme, Host, Path string
	Port               uint32
	Code               int
}

// DirectResponse is Envoy's direct response action.
type DirectResponse struct {
	Status int
	Body   string
}

// HashPolicy is one of Envoy's route hash policies (one field set).
type HashPolicy struct {
	Header, Cookie, QueryParameter string
	SourceIP                       bool
}

// WeightedCluster is one destination of a route.
type WeightedCluster struct {
	Name   string
	Weight uint32
	// RequestHeaders and ResponseHeaders apply when this destination is picked.
	RequestHeaders, ResponseHeaders HeaderOps
}

// HeaderOps are Envoy's header operations on a request or response, names
// in lower case: Remove first, then Set (replacing) and Add (appending).
type HeaderOps struct {
	Set, Add [][2]string
	Remove   []string
}

// Empty says there is nothing to do.
func (h *HeaderOps) Empty() bool { return len(h.Set)+len(h.Add)+len(h.Remove) == 0 }

// Drops says whether a header (lower case) is not passed on as it came:
// removed, or replaced by Set.
func (h *HeaderOps) Drops(name string) bool {
	for _, r := range h.Remove {
		if r == name {
			return true
		}
	}
	for _, s := range h.Set {
		if s[0] == name {
			return true
		}
	}
	return false
}

// Then is h followed by next: next's Set of a name replaces what h sets
// or adds of it.
func (h HeaderOps) Then(next HeaderOps) HeaderOps {
	if h.Empty() {
		return next
	}
	replaced := func(kv [2]string) bool {
		return slices.ContainsFunc(next.Set, func(n [2]string) bool { return n[0] == kv[0] })
	}
	out := HeaderOps{Remove: append(append([]string(nil), h.Remove...), next.Remove...)}
	for _, s := range h.Set {
		if !replaced(s) {
			out.Set = append(out.Set, s)
		}
	}
	for _, a := range h.Add {
		if !replaced(a) {
			out.Add = append(out.Add, a)
		}
	}
	out.Set = append(out.Set, next.Set...)
	out.Add = append(out.Add, next.Add...)
	return out
}

// RetryPolicy is Envoy's, reduced to what the proxy acts on.
type RetryPolicy struct {
	On          map[string]bool // connect-failure, refused-stream, unavailable, cancelled, retriable-status-codes, 5xx, gateway-error, reset
	NumRetries  uint32
	StatusCodes map[uint32]bool
	// PerTryTimeout bounds each attempt; 0 means only the route's timeout.
	PerTryTimeout time.Duration
}

// HeaderMatch is one header condition of a route.
type HeaderMatch struct {
	Name   string // lowercase; ":method", ":authority", ":scheme" and ":path" included
	Match  func(string) bool
	Invert bool
	// Present matches on presence alone when Match is nil.
	Present bool
}

// Fault is a route's fault injection: each share is a fraction 0..1.
type Fault struct {
	Delay       time.Duration
	DelayShare  float64
	AbortStatus int
	AbortShare  float64
}

// Match finds the virtual host for a Host header (port allowed).
func (t *RouteTable) Match(host string) *VirtualHost {
	host = strings.ToLower(host)
	if vh, ok := t.exact[host]; ok {
		return vh
	}
	if h, _, ok := strings.Cut(host, ":"); ok {
		if vh, ok := t.exact[h]; ok {
			return vh
		}
	}
	bare, _, _ := strings.Cut(host, ":")
	for _, m := range t.suffix {
		if strings.HasSuffix(bare, m.suffix) {
			return m.vh
		}
	}
	return nil
}

// Match finds the first route of a virtual host matching a request: its
// path (without the query) and headers, header(name) giving a lowercase
// header's first value and whether it is present.
func (vh *VirtualHost) Match(path string, header func(string) (string, bool)) *Route {
	for _, r := range vh.Routes {
		switch {
		case r.Path != "":
			if path != r.Path {
				continue
			}
		case r.Regex != nil:
			if !r.Regex.MatchString(path) {
				continue
			}
		case !strings.HasPrefix(path, r.Prefix):
			continue
		}
		if r.headersMatch(header) && r.queryMatch(header) {
			return r
		}
	}
	return nil
}

// queryMatch checks the query conditions against the request target's
// query string: a parameter's first value, undecoded, as Envoy matches.
func (r *Route) queryMatch(header func(string) (string, bool)) bool {
	if len(r.Query) == 0 {
		return true
	}
	target, _ := header(":path")
	_, query, _ := strings.Cut(target, "?") // a fragment is refused before routing
	for _, q := range r.Query {
		v, ok := queryParam(query, q.Name)
		matched := ok && (q.Match == nil || q.Match(v))
		if q.Match == nil && !q.Present {
			matched = !ok
		}
		if matched == q.Invert {
			return false
		}
	}
	return true
}

// queryParam is the first value of a query parameter ("" for a bare name).
func queryParam(query, name string) (string, bool) {
	for query != "" {
		var kv string
		kv, query, _ = strings.Cut(query, "&")
		k, v, _ := strings.Cut(kv, "=")
		if k == name {
			return v, true
		}
	}
	return "", false
}

func (r *Route) headersMatch(header func(string) (string, bool)) bool {
	for _, h := range r.Headers {
		v, ok := header(h.Name)
		matched := ok && (h.Match == nil || h.Match(v))
		if h.Match == nil && !h.Present {
			matched = !ok
		}
		if matched == h.Invert {
			return false
		}
	}
	return true
}

// ClusterType is how a cluster finds its endpoints.
type ClusterType int

const (
	// EDS clusters get endpoints from EDS.
	EDS ClusterType = iota
	// Static clusters carry their endpoints.
	Static
	// OriginalDst clusters connect where the client meant to.
	OriginalDst
)

// LBPolicy picks an endpoint.
type LBPolicy int

const (
	RoundRobin LBPolicy = iota
	LeastRequest
	Random
	// RingHash is consistent hashing (Envoy's RING_HASH and MAGLEV): a
	// request's hash, from its route's hash policy, picks the endpoint.
	RingHash
)

// Cluster is an upstream.
type Cluster struct {
	Name           string
	Type           ClusterType
	EDSName        string
	LB             LBPolicy
	ConnectTimeout time.Duration
	// TLSMatches choose the transport by endpoint metadata
	// (envoy.transport_socket_match), first match wins; else TLS.
	TLSMatches []TLSMatch
	TLS        *UpstreamTLS
	// Endpoints are empty for an EDS cluster whose endpoints have not arrived.
	Endpoints []*Endpoint
	// Outlier ejects endpoints that keep failing; nil turns it off.
	Outlier *Outlier
	// MaxRequests bounds the requests in flight to the cluster and
	// MaxConnections its TCP connections (Envoy's circuit breakers); 0 is
	// no bound. Over the bound a request gets 503 (UO), a connection is closed.
	MaxRequests, MaxConnections uint32
	// Protocol is the HTTP version its upstreams speak.
	Protocol UpstreamProtocol
	// IdleTimeout closes a pooled upstream connection that carried no
	// request for as long (HttpProtocolOptions' common idle_timeout:
	// Envoy's default is an hour, 0 none).
	IdleTimeout time.Duration
}

// DefaultIdleTimeout is Envoy's idle timeout of pooled upstream connections.
const DefaultIdleTimeout = time.Hour

// UpstreamProtocol is what Envoy's HttpProtocolOptions say a cluster's
// upstreams speak: HTTP/1.1 unless the cluster says otherwise (Istio says
// HTTP/2 for http2 and grpc ports, the client's own for sniffed ports and
// the passthrough clusters).
type UpstreamProtocol int

const (
	UpstreamHTTP1 UpstreamProtocol = iota
	UpstreamHTTP2
	UpstreamAsDownstream // use_downstream_protocol_config
)

// Outlier is Envoy's outlier detection (Istio's outlierDetection): an
// endpoint answering Consecutive5xx 5xx in a row (or ConsecutiveGateway
// 502/503/504 or connect failures) is left out for BaseEjection times the
// number of its ejections, while at most MaxEjectionPercent of the
// cluster (but always one endpoint) is out.
type Outlier struct {
	Consecutive5xx     uint32
	ConsecutiveGateway uint32
	BaseEjection       time.Duration
	MaxEjectionPercent uint32
}

// TLSMatch is a transport-socket match.
type TLSMatch struct {
	Name  string
	Match map[string]string
	// TLS nil means plaintext.
	TLS *UpstreamTLS
}

// UpstreamTLS is the TLS a proxy originates: Istio mTLS (the workload
// certificate, the mesh root, peers' SPIFFE IDs) or, with Originate, TLS
// of its own to a server outside the mesh.
type UpstreamTLS struct {
	SNI  string
	ALPN []string
	// SANs the server must present, any of them: SPIFFE IDs for Istio mTLS
	// (any mesh identity when empty); DNS names or URIs when originating
	// (the SNI name when empty).
	SANs      []string
	Originate *Originate
}

// Originate is a DestinationRule's tls SIMPLE or MUTUAL: the server is
// verified against the CA of an SDS secret (CASecret) or of a PEM file on
// the proxy (CAFile, the system's trust store for instance), or not at
// all (Insecure, insecureSkipVerify); CertSecret is the client
// certificate of MUTUAL.
type Originate struct {
	CASecret, CAFile, CertSecret string
	// CRLFile is the validation context's crl (a DestinationRule's
	// caCrl): the server's chain must not be revoked by it.
	CRLFile  string
	Insecure bool
	// Secrets names the contents of the SDS secrets it was built with:
	// connections made with other contents are not reused.
	Secrets string
}

// TransportFor picks the TLS of an endpoint; nil means plaintext.
func (c *Cluster) TransportFor(e *Endpoint) *UpstreamTLS {
	if e == nil { // an original destination: no metadata to match
		return c.TLS
	}
	for _, m := range c.TLSMatches {
		ok := true
		for k, v := range m.Match {
			if e.TransportMatch[k] != v {
				ok = false
				break
			}
		}
		if ok {
			return m.TLS
		}
	}
	return c.TLS
}

// Endpoint is one upstream address.
type Endpoint struct {
	Addr   netip.AddrPort
	Weight uint32
	// TransportMatch is the envoy.transport_socket_match metadata (tlsMode).
	TransportMatch map[string]string
	Locality       Locality
	// Network and Cluster come from Istio's "istio" metadata.
	Network, Cluster string
	Healthy          bool
	// Priority is the locality's failover rank (0 first); Istio sets it
	// from the proxy's locality when a DestinationRule enables failover.
	Priority uint32
}

// Locality is region/zone/subzone.
type Locality struct{ Region, Zone, Subzone string }

// Connection is what a chain is chosen by.
type Connection struct {
	DestPort  uint32
	SNI       string
	ALPN      []string
	Transport string // "tls" or "raw_buffer"
}

// Match picks the filter chain for a connection as Envoy does: every set
// criterion must hold, and the most specific chain wins (destination port,
// then server name — exact over wildcard — then transport, then ALPN).
// The default chain is the fallback; nil means close the connection.
func (l *Listener) Match(c Connection) *Chain {
	var best *Chain
	var bestScore [4]int
	for _, ch := range l.Chains {
		score, ok := ch.score(c)
		if !ok {
			continue
		}
		if best == nil || less(bestScore, score) {
			best, bestScore = ch, score
		}
	}
	if best == nil {
		return l.Default
	}
	return best
}

func less(a, b [4]int) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}

func (ch *Chain) score(c Connection) ([4]int, bool) {
	var s [4]int
	if ch.DestPort != 0 {
		if ch.DestPort != c.DestPort {
			return s, false
		}
		s[0] = 1
	}
	if len(ch.ServerNames) > 0 {
		best := 0
		for _, n := range ch.ServerNames {
			switch {
			case n == c.SNI:
				best = max(best, 1<<20)
			case strings.HasPrefix(n, "*") && strings.HasSuffix(c.SNI, n[1:]) && c.SNI != "":
				best = max(best, len(n))
			}
		}
		if best == 0 {
			return s, false
		}
		s[1] = best
	}
	if ch.TransportProtocol != "" {
		if ch.TransportProtocol != c.Transport {
			return s, false
		}
		s[2] = 1
	}
	if len(ch.ALPN) > 0 {
		ok := false
		for _, want := range ch.ALPN {
			for _, got := range c.ALPN {
				if want == got {
					ok = true
				}
			}
		}
		if !ok {
			return s, false
		}
		s[3] = 1
	}
	return s, true
}

// AccessLog is an Envoy file (or stdout) access log: a path, and Istio's
// JSON keys or its text line (the proxy writes Istio's default formats;
// the format's own fields are not read).
type AccessLog struct {
	Path string
	JSON bool
}
