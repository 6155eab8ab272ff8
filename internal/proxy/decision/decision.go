// Package decision is the proxy's one decision about an HTTP request,
// whichever engine carries it (the HTTP/1.1 loop, net/http's handler, the
// HTTP/2 relay): the method check, path normalization, the virtual host
// and route, the https redirect, RBAC, fault injection, rewrites, the
// weighted cluster and the consistent-hash key. An engine only reads its
// own header form into a Request and carries out the Decision, so the
// engines cannot disagree about what a policy allows.
package decision

import (
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
	"github.com/isthmus-mesh/isthmus/internal/proxy/jwtauthn"
	"github.com/isthmus-mesh/isthmus/internal/proxy/rbac"
	"github.com/isthmus-mesh/isthmus/internal/proxy/tracing"
)

// Request is one request as its engine read it.
type Request struct {
	Method string
	// Target is the request target as received: path and query.
	Target string
	// Host is the authority the client asked for.
	Host string
	// Header looks a lowercase header name up, the pseudo-headers :method,
	// :path (Target) and :authority (Host) included, repeated headers
	// joined by commas (cookies by "; "), as Envoy's matchers see them;
	// header names are case-insensitive.
	Header func(name string) (string, bool)
	// Secure: the downstream connection is TLS.
	Secure bool
	// Principal is the mTLS peer's SPIFFE URI ("" in plaintext); RemoteIP
	// and DestPort are the connection's.
	Principal string
	RemoteIP  netip.Addr
	DestPort  uint32
}

// Decision is what to do with a request.
type Decision struct {
	// Status non-zero: answer here with Status and Body (and Location,
	// for a redirect); Route and Cluster may still be set for telemetry.
	Status   int
	Body     string
	Location string
	// ReplyHeaders go with an answer given here (a CORS preflight's).
	ReplyHeaders [][2]string
	// Flags is Envoy's response flag (NR, UAEX, FI, DI) for the metrics.
	Flags string
	// DeniedBy names what refused the request; Audited the AUDIT policy
	// that matched it.
	DeniedBy, Audited string
	Route             *config.Route
	Cluster           string
	// Target is the path and query to send upstream: normalized, then
	// rewritten. Host is the authority to send (rewritten or as asked).
	Target, Host string
	// Delay is a fault's delay, to wait before going on; then Abort, if
	// non-zero, is the status to answer with instead of forwarding.
	Delay time.Duration
	Abort int
	// XFF, when set, replaces X-Forwarded-For upstream (a gateway's edge
	// appends the client's address).
	XFF string
	// Remove, Set and Add are header operations on the request sent
	// upstream (names in lower case; Set replaces, Add appends): a JWT not
	// forwarded, its payload or claims as headers, a route's headers.
	Remove   []string
	Set, Add [][2]string
	// Response is the route's operations on the upstream's answer.
	Response config.HeaderOps
	// Span is the request's span when its chain traces and it is sampled
	// (Tracing its configuration); the engine ends it with the answer.
	Span    *tracing.Span
	Tracing *config.Tracing
	// Auth is the verified JWT the policies saw; nil without one.
	Auth *rbac.Auth
}

// Decide decides a request on an HTTP connection manager whose route
// table is table (nil: no routes).
func Decide(hm *config.HTTPManager, table *config.RouteTable, req *Request) Decision {
	d := Decision{Target: req.Target, Host: req.Host}
	if !validMethod(req.Method) {
		d.Status, d.Body = http.StatusBadRequest, "invalid method: methods are tokens in upper case"
		return d
	}
	target, status, redirect := normalizeTarget(hm.Paths, req.Target)
	if status != 0 {
		d.Status, d.Body = status, "invalid path"
		return d
	}
	if redirect {
		d.Status, d.Location = http.StatusTemporaryRedirect, target
		return d
	}
	d.Target = target
	path, _, _ := strings.Cut(target, "?")
	header := req.Header
	if target != req.Target {
		header = func(name string) (string, bool) {
			if name == ":path" {
				return target, true
			}
			return req.Header(name)
		}
	}
	var vh *config.VirtualHost
	if table != nil {
		if vh = table.Match(req.Host); vh != nil {
			d.Route = vh.Match(path, header)
		}
	}
	var xff string
	var hasXFF bool
	if hm.UseRemoteAddress || len(hm.Authz) > 0 {
		xff, hasXFF = req.Header("x-forwarded-for")
	}
	if hm.UseRemoteAddress && req.RemoteIP.IsValid() {
		d.XFF = req.RemoteIP.String()
		if hasXFF && xff != "" {
			d.XFF = xff + ", " + d.XFF
		}
	}
	if hm.JWT != nil {
		res := hm.JWT.Verify(&jwtauthn.Request{Header: header, Path: target})
		if res.Status != 0 {
			// Envoy's jwt_authn: 401 with what failed.
			d.Status, d.Body = res.Status, res.Body
			return d
		}
		d.Remove, d.Set = res.Remove, res.Set
		if len(res.Verified) > 0 {
			v := res.Verified[0]
			d.Auth = &rbac.Auth{Principal: v.Principal, Audiences: v.Audiences, Presenter: v.Presenter, Claims: v.Claims}
		}
	}
	if len(hm.Authz) > 0 {
		rq := &rbac.Request{Principal: req.Principal, RemoteIP: req.RemoteIP, DestPort: req.DestPort, HTTP: true, Header: header, Auth: d.Auth}
		if hasXFF {
			rq.ClientIP = clientIP(hm, xff)
		}
		if ok, by := rbac.Allowed(hm.Authz, rq); !ok {
			// Envoy's RBAC filter: 403, body "RBAC: access denied".
			d.Status, d.Body, d.Flags, d.DeniedBy = http.StatusForbidden, "RBAC: access denied", "UAEX", by
			return d
		}
		d.Audited = rbac.Audited(hm.Authz, rq)
	}
	if vh != nil && vh.RequireTLS && !req.Secure {
		// Envoy's require_tls: 301 to the same URL over https.
		host, _, _ := strings.Cut(req.Host, ":")
		d.Status, d.Location = http.StatusMovedPermanently, "https://"+host+target
		return d
	}
	r := d.Route
	if r == nil || (len(r.Clusters) == 0 && r.Redirect == nil && r.Direct == nil) {
		d.Status, d.Body, d.Flags = http.StatusNotFound, "no route", "NR"
		return d
	}
	var corsOps config.HeaderOps
	if c := r.CORS; c != nil {
		if origin, ok := header("origin"); ok && origin != "" {
			allowed := slices.ContainsFunc(c.Origins, func(m func(string) bool) bool { return m(origin) })
			_, asks := header("access-control-request-method")
			switch {
			case req.Method == http.MethodOptions && asks && allowed:
				// Envoy's CORS filter answers an allowed preflight itself.
				d.Status, d.ReplyHeaders = http.StatusOK, corsHeaders(c, origin, true)
				return d
			case req.Method == http.MethodOptions && asks && !c.ForwardUnmatched:
				d.Status = http.StatusOK
				return d
			case allowed:
				corsOps.Set = corsHeaders(c, origin, false)
			}
		}
	}
	if f := r.Fault; f != nil {
		if f.Delay > 0 && rand.Float64() < f.DelayShare {
			d.Delay, d.Flags = f.Delay, "DI"
		}
		if f.AbortStatus > 0 && rand.Float64() < f.AbortShare {
			d.Abort = f.AbortStatus
		}
	}
	if r.Redirect != nil || r.Direct != nil {
		// The route answers itself, unless a fault aborts first (Envoy's
		// fault filter runs before the router).
		switch {
		case d.Abort != 0:
		case r.Redirect != nil:
			d.Status, d.Location = r.Redirect.Code, location(r.Redirect, req.Secure, req.Host, d.Target)
		default:
			d.Status, d.Body = r.Direct.Status, r.Direct.Body
		}
		return d
	}
	if r.PrefixRewrite != "" && r.Prefix != "" && strings.HasPrefix(d.Target, r.Prefix) {
		d.Target = r.PrefixRewrite + d.Target[len(r.Prefix):]
	}
	if r.RegexRewrite != nil {
		// Envoy rewrites the path; the query stays.
		path, query, hasQuery := strings.Cut(d.Target, "?")
		d.Target = r.RegexRewrite.ReplaceAllString(path, r.RegexSubstitution)
		if hasQuery {
			d.Target += "?" + query
		}
	}
	if r.HostRewrite != "" {
		d.Host = r.HostRewrite
	}
	var picked *config.WeightedCluster
	d.Cluster, picked = pickWeighted(r.Clusters)
	req2 := picked.RequestHeaders.Then(r.RequestHeaders)
	if !req2.Empty() {
		// The JWT filter's operations came first; the router's follow.
		ops := config.HeaderOps{Set: d.Set, Remove: d.Remove}.Then(req2)
		d.Set, d.Add, d.Remove = ops.Set, ops.Add, ops.Remove
	}
	d.Response = picked.ResponseHeaders.Then(r.ResponseHeaders).Then(corsOps)
	return d
}

// corsHeaders are what Envoy's CORS filter adds for an allowed origin: to
// a preflight's answer, or to the upstream's answer of a request.
func corsHeaders(c *config.CORS, origin string, preflight bool) [][2]string {
	out := [][2]string{{"access-control-allow-origin", origin}}
	if c.AllowCredentials {
		out = append(out, [2]string{"access-control-allow-credentials", "true"})
	}
	if !preflight {
		if c.ExposeHeaders != "" {
			out = append(out, [2]string{"access-control-expose-headers", c.ExposeHeaders})
		}
		return out
	}
	for _, h := range [][2]string{{"access-control-allow-methods", c.AllowMethods}, {"access-control-allow-headers", c.AllowHeaders}, {"access-control-max-age", c.MaxAge}} {
		if h[1] != "" {
			out = append(out, h)
		}
	}
	return out
}

// location is where a redirect sends the client, as Envoy builds it: each
// part the redirect does not set is the request's; a path without a query
// keeps the request's query; the scheme's default port is left out.
func location(rd *config.Redirect, secure bool, host, target string) string {
	scheme := "http"
	if secure {
		scheme = "https"
	}
	if rd.Scheme != "" {
		scheme = rd.Scheme
	}
	if rd.Host != "" {
		host = rd.Host
	}
	name, port, err := net.SplitHostPort(host)
	if err != nil {
		name, port = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"), ""
	}
	switch {
	case rd.Port != 0:
		port = strconv.Itoa(int(rd.Port))
	case rd.Scheme != "" && (port == "80" || port == "443"):
		port = "" // Envoy drops the old scheme's default port on a scheme change
	}
	if port == "" || scheme == "http" && port == "80" || scheme == "https" && port == "443" {
		host = name
		if strings.Contains(name, ":") {
			host = "[" + name + "]"
		}
	} else {
		host = net.JoinHostPort(name, port)
	}
	if rd.Path != "" {
		_, query, hasQuery := strings.Cut(target, "?")
		target = rd.Path
		if hasQuery && !strings.Contains(rd.Path, "?") {
			target += "?" + query
		}
	}
	return scheme + "://" + host + target
}

// clientIP is the original client's address by Envoy's rules for
// X-Forwarded-For (xff, before the proxy appends to it): with
// use_remote_address, the Nth address from the right for N trusted hops
// (none: the connection's peer); without, the (N+1)th from the right.
// Invalid when the header says too little: the connection's peer then.
func clientIP(hm *config.HTTPManager, xff string) netip.Addr {
	n := int(hm.XFFTrustedHops)
	if hm.UseRemoteAddress {
		if n == 0 {
			return netip.Addr{}
		}
		n--
	}
	parts := strings.Split(xff, ",")
	i := len(parts) - 1 - n
	if i < 0 {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(strings.TrimSpace(parts[i]))
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

// Rewrites says whether the decision changes a request header: the
// engines look then at each header against it.
func (d *Decision) Rewrites() bool { return len(d.Remove)+len(d.Set)+len(d.Add) > 0 || d.XFF != "" }

// Drops says whether a request header (lowercase) is not sent upstream
// as it came: removed, or replaced by Set or XFF.
func (d *Decision) Drops(name string) bool {
	if d.XFF != "" && name == "x-forwarded-for" {
		return true
	}
	for _, r := range d.Remove {
		if r == name {
			return true
		}
	}
	for _, s := range d.Set {
		if strings.EqualFold(s[0], name) {
			return true
		}
	}
	return false
}

// Reply is the local answer a Decision (or its fault abort) gives.
func (d *Decision) Reply() (status int, body string) {
	if d.Status != 0 {
		return d.Status, d.Body
	}
	return d.Abort, "fault filter abort"
}

// HashKey is the request's key for consistent hashing: the first hash
// policy that finds a value (a header, a cookie, a query parameter, or
// the client's address). A request none applies to ("") is balanced as
// usual.
func HashKey(policies []config.HashPolicy, req *Request, target string) string {
	for _, hp := range policies {
		var v string
		switch {
		case hp.Header != "":
			v, _ = req.Header(strings.ToLower(hp.Header))
		case hp.Cookie != "":
			if line, ok := req.Header("cookie"); ok {
				if cs, err := http.ParseCookie(line); err == nil {
					for _, c := range cs {
						if c.Name == hp.Cookie {
							v = c.Value
							break
						}
					}
				}
			}
		case hp.QueryParameter != "":
			v = queryParam(target, hp.QueryParameter)
		case hp.SourceIP:
			v = req.RemoteIP.String()
		}
		if v != "" {
			return v
		}
	}
	return ""
}

// queryParam is a query parameter's first value in a target.
func queryParam(target, name string) string {
	_, q, ok := strings.Cut(target, "?")
	for ok && q != "" {
		var kv string
		kv, q, _ = strings.Cut(q, "&")
		k, v, _ := strings.Cut(kv, "=")
		if k == name {
			return v
		}
	}
	return ""
}

// PickWeighted picks one of weighted clusters (a route's, or a TCP
// proxy's per connection) by weight.
func PickWeighted(cs []config.WeightedCluster) string {
	name, _ := pickWeighted(cs)
	return name
}

func pickWeighted(cs []config.WeightedCluster) (string, *config.WeightedCluster) {
	if len(cs) == 1 {
		return cs[0].Name, &cs[0]
	}
	var total uint32
	for _, c := range cs {
		total += c.Weight
	}
	if total == 0 {
		return cs[0].Name, &cs[0]
	}
	n := rand.Uint32N(total)
	for i := range cs {
		if n < cs[i].Weight {
			return cs[i].Name, &cs[i]
		}
		n -= cs[i].Weight
	}
	return cs[len(cs)-1].Name, &cs[len(cs)-1]
}
