package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// engine sends one request with a raw request target (and the headers
// X-Client-Token: secret, Origin: https://app.example and
// Access-Control-Request-Method: PUT, which make an OPTIONS a CORS
// preflight) and says what came back.
type engine struct {
	name string
	// h2: the proxy's cluster speaks HTTP/2 (the relay) rather than
	// HTTP/1.1; do sends the request.
	h2 bool
	do func(t *testing.T, addr, method, target string) (int, string, http.Header)
}

var engines = []engine{
	{name: "HTTP/1.1 loop", do: func(t *testing.T, addr, method, target string) (int, string, http.Header) {
		return h1Do(t, addr, method+" "+target+" HTTP/1.1\r\nHost: profile\r\nX-Client-Token: secret\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: PUT\r\n\r\n")
	}},
	// A chunked request is not for the loop: net/http serves it.
	{name: "net/http", do: func(t *testing.T, addr, method, target string) (int, string, http.Header) {
		return h1Do(t, addr, method+" "+target+" HTTP/1.1\r\nHost: profile\r\nX-Client-Token: secret\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: PUT\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
	}},
	{name: "HTTP/2 relay", h2: true, do: h2Do},
	// HTTP/2 to an HTTP/1.1 upstream: the relay hands the stream to net/http's handler.
	{name: "HTTP/2 to HTTP/1.1", do: h2Do},
}

func h1Do(t *testing.T, addr, raw string) (int, string, http.Header) {
	t.Helper()
	c := dialRaw(t, addr)
	if _, err := io.WriteString(c.c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", raw, err)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// h2Do sends one request with prior knowledge, writing the frames itself so
// that :method and :path go as given.
func h2Do(t *testing.T, addr, method, target string) (int, string, http.Header) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", method}, {":scheme", "http"}, {":authority", "profile"}, {":path", target}, {"x-client-token", "secret"},
		{"origin", "https://app.example"}, {"access-control-request-method", "PUT"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	status, body, header := 0, "", http.Header{}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("%s %s over HTTP/2: %v", method, target, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			if s := f.PseudoValue("status"); s != "" {
				status, _ = strconv.Atoi(s)
			}
			for _, hf := range f.RegularFields() {
				header.Add(hf.Name, hf.Value)
			}
			if f.StreamEnded() {
				return status, body, header
			}
		case *http2.DataFrame:
			body += string(f.Data())
			if f.StreamEnded() {
				return status, body, header
			}
		case *http2.RSTStreamFrame:
			t.Fatalf("%s %s over HTTP/2: stream reset (%v)", method, target, f.ErrCode)
		case *http2.GoAwayFrame:
			t.Fatalf("%s %s over HTTP/2: GOAWAY (%v)", method, target, f.ErrCode)
		}
	}
}

// denyPath is an RBAC DENY filter on an exact path, as an
// AuthorizationPolicy `to.operation.paths` becomes.
func denyPath(t *testing.T, path string) func(*hcm.HttpConnectionManager) {
	return func(m *hcm.HttpConnectionManager) {
		rules := &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: map[string]*rbacv3.Policy{"deny": {
			Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{
				Path: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: path}}}}}}},
			Principals: []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}},
		}}}
		f := &hcm.HttpFilter{Name: "envoy.filters.http.rbac", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &rbachttp.RBAC{Rules: rules})}}
		m.HttpFilters = append([]*hcm.HttpFilter{f}, m.HttpFilters...)
	}
}

// normalization sets the manager's fields as Istio does for each
// meshConfig pathNormalization option.
func normalization(option string) func(*hcm.HttpConnectionManager) {
	return func(m *hcm.HttpConnectionManager) {
		switch option {
		case "NONE":
		case "BASE":
			m.NormalizePath = wrapperspb.Bool(true)
		case "MERGE_SLASHES":
			m.NormalizePath, m.MergeSlashes = wrapperspb.Bool(true), true
		case "DECODE_AND_MERGE_SLASHES":
			m.NormalizePath, m.MergeSlashes = wrapperspb.Bool(true), true
			m.PathWithEscapedSlashesAction = hcm.HttpConnectionManager_UNESCAPE_AND_FORWARD
		}
	}
}

// Every engine gives the same answer to the same request: a path a policy
// denies is denied however it is spelled (as the configured normalization
// reads it), and the backend receives the normalized path. The cases are
// Istio's "Authorization Policy Normalization" table.
func TestEnginesAgreeOnNormalizedPaths(t *testing.T) {
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, r.RequestURI) })
	h1 := httptest.NewServer(echo)
	defer h1.Close()
	h2 := h2cServer(t, echo)
	const denied, bad = "denied", "bad"
	cases := []struct {
		target string
		// want per option: the path the backend saw, or denied (403) or bad (400).
		base, merge, decode, none string
	}{
		{"/profile", "/profile", "/profile", "/profile", "/profile"},
		{"/profile?q=1", "/profile?q=1", "/profile?q=1", "/profile?q=1", "/profile?q=1"},
		{"/healthz", denied, denied, denied, denied},
		{"/healthz?probe=1", denied, denied, denied, denied},
		{"/HEALTHZ", "/HEALTHZ", "/HEALTHZ", "/HEALTHZ", "/HEALTHZ"},
		{"/%68ealthz", denied, denied, denied, "/%68ealthz"},
		{"/%68%65%61%6c%74%68%7a", denied, denied, denied, "/%68%65%61%6c%74%68%7a"},
		{"/./healthz", denied, denied, denied, "/./healthz"},
		{"/x/../healthz", denied, denied, denied, "/x/../healthz"},
		{"/%2e%2e/healthz", denied, denied, denied, "/%2e%2e/healthz"},
		{`/x\..\healthz`, denied, denied, denied, `/x\..\healthz`},
		{`/\healthz`, "//healthz", denied, denied, `/\healthz`},
		{"//healthz", "//healthz", denied, denied, "//healthz"},
		{"/%2Fhealthz", "/%2Fhealthz", "/%2Fhealthz", denied, "/%2Fhealthz"},
		{"/a%2fb", "/a%2Fb", "/a%2Fb", "/a/b", "/a%2fb"},
		{"/%7Euser/%41", "/~user/A", "/~user/A", "/~user/A", "/%7Euser/%41"},
		{"/x%00y", bad, bad, bad, bad},
	}
	for _, option := range []string{"BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES", "NONE"} {
		t.Run(option, func(t *testing.T) {
			_, front1 := startProxy(t, h1.Listener.Addr().String(), nil, nil, denyPath(t, "/healthz"), normalization(option))
			_, front2 := startProxy(t, h2, upstreamHTTP2, nil, denyPath(t, "/healthz"), normalization(option))
			for _, e := range engines {
				front := front1
				if e.h2 {
					front = front2
				}
				for _, c := range cases {
					want := map[string]string{"BASE": c.base, "MERGE_SLASHES": c.merge, "DECODE_AND_MERGE_SLASHES": c.decode, "NONE": c.none}[option]
					code, body, _ := e.do(t, front, "GET", c.target)
					got := body
					switch code {
					case http.StatusOK:
					case http.StatusForbidden:
						got = denied
					case http.StatusBadRequest:
						got = bad
					default:
						got = fmt.Sprintf("%d %q", code, body)
					}
					if got != want {
						t.Errorf("%s: GET %s: got %s, want %s", e.name, c.target, got, want)
					}
				}
			}
		})
	}
}

// A method not in upper case is refused by every engine: a policy on GET
// must not be passed by "get".
func TestEnginesRefuseMethodsNotInUpperCase(t *testing.T) {
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, r.Method) })
	h1 := httptest.NewServer(echo)
	defer h1.Close()
	h2 := h2cServer(t, echo)
	_, front1 := startProxy(t, h1.Listener.Addr().String(), nil, nil, normalization("BASE"))
	_, front2 := startProxy(t, h2, upstreamHTTP2, nil, normalization("BASE"))
	for _, e := range engines {
		front := front1
		if e.h2 {
			front = front2
		}
		if code, body, _ := e.do(t, front, "get", "/profile"); code != http.StatusBadRequest {
			t.Errorf("%s: get /profile: %d %q, want 400", e.name, code, strings.TrimSpace(body))
		}
		if code, body, _ := e.do(t, front, "GET", "/profile"); code != http.StatusOK || body != "GET" {
			t.Errorf("%s: GET /profile: %d %q", e.name, code, body)
		}
	}
}

// A route's header operations (a VirtualService's headers) on the request
// and on the answer, carried out alike by every engine.
func TestEnginesAgreeOnHeaderOperations(t *testing.T) {
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend-Secret", "internal")
		w.Header().Set("X-Served-By", "backend")
		_, _ = io.WriteString(w, strings.Join([]string{r.Header.Get("X-Set"), strings.Join(r.Header.Values("X-Add"), "+"), r.Header.Get("X-Client-Token") + "."}, ","))
	})
	h1 := httptest.NewServer(echo)
	defer h1.Close()
	h2 := h2cServer(t, echo)
	opt := func(k, v string, action corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}, AppendAction: action}
	}
	ops := func(m *hcm.HttpConnectionManager) {
		r := m.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0]
		r.RequestHeadersToAdd = []*corev3.HeaderValueOption{opt("x-set", "from-route", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
			opt("x-add", "more", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD)}
		r.RequestHeadersToRemove = []string{"x-client-token"}
		r.ResponseHeadersToAdd = []*corev3.HeaderValueOption{opt("x-served-by", "mesh", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
			opt("x-policy", "100%% checked", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD)}
		r.ResponseHeadersToRemove = []string{"X-Backend-Secret"}
	}
	_, front1 := startProxy(t, h1.Listener.Addr().String(), nil, nil, ops)
	_, front2 := startProxy(t, h2, upstreamHTTP2, nil, ops)
	for _, e := range engines {
		front := front1
		if e.h2 {
			front = front2
		}
		code, body, h := e.do(t, front, "GET", "/profile")
		if code != http.StatusOK || body != "from-route,more,." {
			t.Errorf("%s: the backend saw %d %q, want x-set replaced, x-add added, x-client-token removed", e.name, code, body)
		}
		if h.Get("X-Backend-Secret") != "" || h.Get("X-Served-By") != "mesh" || h.Get("X-Policy") != "100% checked" {
			t.Errorf("%s: answer headers %v", e.name, h)
		}
	}
}

// A route's CORS policy (a VirtualService's corsPolicy): every engine
// answers an allowed preflight itself and adds the CORS headers to the
// answer of an allowed origin's request; another origin gets none.
func TestEnginesAgreeOnCORS(t *testing.T) {
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "backend "+r.Method) })
	h1 := httptest.NewServer(echo)
	defer h1.Close()
	h2 := h2cServer(t, echo)
	policy := func(origin string) func(*hcm.HttpConnectionManager) {
		return func(m *hcm.HttpConnectionManager) {
			r := m.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0]
			c, _ := anypb.New(&corsv3.CorsPolicy{AllowOriginStringMatch: []*matcherv3.StringMatcher{{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: origin}}},
				AllowMethods: "GET,PUT", AllowHeaders: "x-token", ExposeHeaders: "x-served-by", MaxAge: "600", AllowCredentials: wrapperspb.Bool(true)})
			r.TypedPerFilterConfig = map[string]*anypb.Any{"envoy.filters.http.cors": c}
		}
	}
	for _, e := range engines {
		for origin, allowed := range map[string]bool{"https://app.example": true, "https://other.example": false} {
			upstream := h1.Listener.Addr().String()
			var adjust func(*cluster.Cluster)
			if e.h2 {
				upstream, adjust = h2, upstreamHTTP2
			}
			_, front := startProxy(t, upstream, adjust, nil, policy(origin))
			code, body, h := e.do(t, front, "OPTIONS", "/profile")
			preflight := fmt.Sprintf("%d %q %s|%s|%s|%s|%s", code, body, h.Get("Access-Control-Allow-Origin"), h.Get("Access-Control-Allow-Methods"),
				h.Get("Access-Control-Allow-Headers"), h.Get("Access-Control-Max-Age"), h.Get("Access-Control-Allow-Credentials"))
			code, body, h = e.do(t, front, "GET", "/profile")
			request := fmt.Sprintf("%d %q %s|%s|%s", code, body, h.Get("Access-Control-Allow-Origin"), h.Get("Access-Control-Expose-Headers"), h.Get("Access-Control-Allow-Credentials"))
			wantPre, wantReq := `200 "" https://app.example|GET,PUT|x-token|600|true`, `200 "backend GET" https://app.example|x-served-by|true`
			if !allowed {
				// Not this origin: the preflight goes upstream (unmatched
				// preflights are forwarded), and no CORS headers anywhere.
				wantPre, wantReq = `200 "backend OPTIONS" ||||`, `200 "backend GET" ||`
			}
			if preflight != wantPre || request != wantReq {
				t.Errorf("%s, policy for %s: preflight %s (want %s); request %s (want %s)", e.name, origin, preflight, wantPre, request, wantReq)
			}
		}
	}
}

// Route matches on query parameters and :scheme read the same in every
// engine: a route for ?beta=1 over plaintext (scheme http) answers 418,
// one for https never matches here, the rest reaches the backend.
func TestEnginesAgreeOnQueryAndSchemeMatches(t *testing.T) {
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "backend") })
	h1 := httptest.NewServer(echo)
	defer h1.Close()
	h2 := h2cServer(t, echo)
	direct := func(name string, status uint32, m *routev3.RouteMatch) *routev3.Route {
		return &routev3.Route{Name: name, Match: m, Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: status}}}
	}
	exact := func(s string) *matcherv3.StringMatcher {
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}
	}
	routes := func(m *hcm.HttpConnectionManager) {
		vh := m.GetRouteConfig().GetVirtualHosts()[0]
		vh.Routes = append([]*routev3.Route{
			direct("https-only", 403, &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
				Headers: []*routev3.HeaderMatcher{{Name: ":scheme", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: exact("https")}}}}),
			direct("beta", 418, &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
				Headers:         []*routev3.HeaderMatcher{{Name: ":scheme", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: exact("http")}}},
				QueryParameters: []*routev3.QueryParameterMatcher{{Name: "beta", QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{StringMatch: exact("1")}}}}),
		}, vh.Routes...)
	}
	_, front1 := startProxy(t, h1.Listener.Addr().String(), nil, nil, routes)
	_, front2 := startProxy(t, h2, upstreamHTTP2, nil, routes)
	for _, e := range engines {
		front := front1
		if e.h2 {
			front = front2
		}
		for target, want := range map[string]int{"/p?beta=1": 418, "/p?x=2&beta=1": 418, "/p?beta=10": 200, "/p": 200} {
			if code, _, _ := e.do(t, front, "GET", target); code != want {
				t.Errorf("%s: GET %s answered %d, want %d", e.name, target, code, want)
			}
		}
	}
}
