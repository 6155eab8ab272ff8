package contract

import (
	"net/netip"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/proxy/rbac"
)

// policy reads an AuthorizationPolicy spec written as users write it.
func policy(t *testing.T, ns, name, spec string) *securityv1.AuthorizationPolicy {
	t.Helper()
	ap := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	j, err := yaml.YAMLToJSON([]byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	if err := ap.Spec.UnmarshalJSON(j); err != nil {
		t.Fatal(err)
	}
	return ap
}

const (
	sleep     = "spiffe://cluster.local/ns/multicluster/sa/sleep"
	dashboard = "spiffe://cluster.local/ns/multicluster/sa/dashboard"
	other     = "spiffe://cluster.local/ns/other/sa/default"
)

// The control plane's translation, compiled and evaluated by the proxy:
// the contract between the two halves.
func TestAuthorizationPolicies(t *testing.T) {
	aps := []*securityv1.AuthorizationPolicy{
		policy(t, "multicluster", "deny-sleep-to-accounts", `
selector: {matchLabels: {app: accounts}}
action: DENY
rules:
- from: [{source: {principals: [cluster.local/ns/multicluster/sa/sleep]}}]`),
		policy(t, "multicluster", "profile-readers", `
selector: {matchLabels: {app: profile}}
action: ALLOW
rules:
- from: [{source: {principals: [cluster.local/ns/multicluster/sa/sleep]}}]
  to: [{operation: {methods: [GET], paths: ["/profile*", /healthz]}}]
- from: [{source: {namespaces: [other]}}]
  when: [{key: "request.headers[x-debug]", values: ["yes"]}]
- from: [{source: {ipBlocks: [10.1.0.0/16]}}]
  to: [{operation: {ports: ["7070"]}}]`),
		policy(t, "istio-system", "deny-delete", `
action: DENY
rules:
- to: [{operation: {methods: [DELETE]}}]`),
	}
	get := func(principal, path string, more ...string) *rbac.Request {
		h := map[string]string{":method": "GET", ":path": path, ":authority": "profile:8080"}
		for i := 0; i+1 < len(more); i += 2 {
			h[more[i]] = more[i+1]
		}
		return &rbac.Request{Principal: principal, HTTP: true, DestPort: 8080, RemoteIP: netip.MustParseAddr("100.64.0.9"), Header: headers(h)}
	}
	compileWith := func(aps []*securityv1.AuthorizationPolicy, app string, http bool) []*rbac.Filter {
		a := proxyview.ResolveAuthz(aps, "istio-system", "multicluster", map[string]string{"app": app}, nil, func(string) {})
		return compiled(t, a, http)
	}
	compile := func(app string, http bool) []*rbac.Filter { return compileWith(aps, app, http) }
	for _, tc := range []struct {
		name string
		app  string
		req  *rbac.Request
		want bool
	}{
		{"DENY: sleep to accounts", "accounts", get(sleep, "/accounts?id=4"), false},
		{"DENY: dashboard to accounts is not denied", "accounts", get(dashboard, "/accounts?id=4"), true},
		{"mesh-wide DENY of DELETE", "accounts", get(dashboard, "/x", ":method", "DELETE"), false},
		{"ALLOW: sleep GET /profile?id=4", "profile", get(sleep, "/profile?id=4"), true},
		{"ALLOW: sleep GET /admin is not allowed", "profile", get(sleep, "/admin"), false},
		{"ALLOW: dashboard is not allowed", "profile", get(dashboard, "/profile"), false},
		{"ALLOW: plaintext (no principal) is not allowed", "profile", get("", "/profile"), false},
		{"ALLOW: namespace other with the header", "profile", get(other, "/x", "x-debug", "yes"), true},
		{"ALLOW: namespace other without the header", "profile", get(other, "/x"), false},
	} {
		if ok, by := rbac.Allowed(compile(tc.app, true), tc.req); ok != tc.want {
			t.Errorf("%s: allowed=%v (%s), want %v", tc.name, ok, by, tc.want)
		}
	}
	// L4: the ALLOW rules with HTTP fields never match a connection; the
	// ipBlocks+ports rule does.
	conn := func(ip string, port uint32) *rbac.Request {
		return &rbac.Request{Principal: sleep, RemoteIP: netip.MustParseAddr(ip), DestPort: port}
	}
	namespaced := aps[:2]
	if ok, _ := rbac.Allowed(compileWith(namespaced, "profile", false), conn("10.1.2.3", 7070)); !ok {
		t.Error("TCP from 10.1.2.3 to 7070 must be allowed")
	}
	if ok, _ := rbac.Allowed(compileWith(namespaced, "profile", false), conn("100.64.0.9", 7070)); ok {
		t.Error("TCP from sleep to profile must be refused: its ALLOW rule needs HTTP")
	}
	// DENY rules lose their HTTP fields on TCP: deny more, not less.
	if ok, _ := rbac.Allowed(compile("profile", false), conn("10.1.2.3", 7070)); ok {
		t.Error("TCP: the mesh-wide DENY of DELETE denies every connection")
	}
}

// AUDIT: Envoy's LOG action marks what it matches and refuses nothing.
func TestAudit(t *testing.T) {
	aps := []*securityv1.AuthorizationPolicy{policy(t, "multicluster", "audit-writes", `
selector: {matchLabels: {app: accounts}}
action: AUDIT
rules:
- to: [{operation: {methods: [POST]}}]`)}
	a := proxyview.ResolveAuthz(aps, "istio-system", "multicluster", map[string]string{"app": "accounts"}, nil, func(m string) { t.Errorf("warning: %s", m) })
	f, err := rbac.Compile(a.HTTPAudit)
	if err != nil || f == nil || !f.Log {
		t.Fatalf("compile: %v %+v", err, f)
	}
	req := func(method string) *rbac.Request {
		return &rbac.Request{Principal: sleep, HTTP: true, DestPort: 8080, Header: headers(map[string]string{":method": method, ":path": "/accounts"})}
	}
	filters := []*rbac.Filter{f}
	for _, m := range []string{"POST", "GET"} {
		if ok, by := rbac.Allowed(filters, req(m)); !ok {
			t.Errorf("%s refused by an AUDIT policy (%s)", m, by)
		}
	}
	if rbac.Audited(filters, req("POST")) == "" || rbac.Audited(filters, req("GET")) != "" {
		t.Error("AUDIT marks POST and only POST")
	}
	if a.TCPAudit != nil && len(a.TCPAudit.Policies) != 0 {
		t.Errorf("an HTTP-only AUDIT rule marks no connection: %v", a.TCPAudit)
	}
}

// headers looks a request's headers up in a map, as an engine would.
func headers(m map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) { v, ok := m[name]; return v, ok }
}

// What isthmus does not enforce fails closed: an ALLOW rule needing a JWT
// allows nobody, a DENY rule needing one denies everybody it otherwise
// matches, CUSTOM (no external authorizer) denies what it matches; and the
// parts it learned to enforce (serviceAccounts, trustDomains) match.
func TestAuthorizationFailsClosed(t *testing.T) {
	filters := func(spec string) []*rbac.Filter {
		a := proxyview.ResolveAuthz([]*securityv1.AuthorizationPolicy{policy(t, "multicluster", "p", spec)}, "istio-system", "multicluster",
			map[string]string{"app": "accounts"}, nil, func(string) {})
		return compiled(t, a, true)
	}
	req := func(principal, path string) *rbac.Request {
		return &rbac.Request{Principal: principal, HTTP: true, DestPort: 8080,
			Header: headers(map[string]string{":method": "GET", ":path": path, ":authority": "accounts"})}
	}
	for _, tc := range []struct {
		name, spec string
		req        *rbac.Request
		want       bool
	}{
		{"ALLOW requestPrincipals: a caller without a JWT", "rules: [{from: [{source: {requestPrincipals: ['*']}}]}]", req(sleep, "/accounts"), false},
		{"ALLOW requestPrincipals and principals: still nobody", "rules: [{from: [{source: {principals: ['cluster.local/ns/multicluster/sa/sleep'], requestPrincipals: ['*']}}]}]", req(sleep, "/accounts"), false},
		{"ALLOW when request.auth.claims", "rules: [{when: [{key: 'request.auth.claims[group]', values: [admin]}]}]", req(sleep, "/accounts"), false},
		{"DENY notRequestPrincipals: denies as if no JWT", "action: DENY\nrules: [{from: [{source: {notRequestPrincipals: ['*']}}], to: [{operation: {paths: [/admin]}}]}]", req(sleep, "/admin"), false},
		{"DENY notRequestPrincipals: other paths pass", "action: DENY\nrules: [{from: [{source: {notRequestPrincipals: ['*']}}], to: [{operation: {paths: [/admin]}}]}]", req(sleep, "/accounts"), true},
		{"CUSTOM: what it matches is denied", "action: CUSTOM\nprovider: {name: ext-authz}\nrules: [{to: [{operation: {paths: [/admin]}}]}]", req(sleep, "/admin"), false},
		{"CUSTOM: what it does not match passes", "action: CUSTOM\nprovider: {name: ext-authz}\nrules: [{to: [{operation: {paths: [/admin]}}]}]", req(sleep, "/accounts"), true},
		{"ALLOW serviceAccounts: sleep", "rules: [{from: [{source: {serviceAccounts: [multicluster/sleep]}}]}]", req(sleep, "/accounts"), true},
		{"ALLOW serviceAccounts: dashboard is not sleep", "rules: [{from: [{source: {serviceAccounts: [multicluster/sleep]}}]}]", req(dashboard, "/accounts"), false},
		{"ALLOW trustDomains: another domain", "rules: [{from: [{source: {trustDomains: [example.org]}}]}]", req(sleep, "/accounts"), false},
		{"ALLOW trustDomains: ours", "rules: [{from: [{source: {trustDomains: [cluster.local]}}]}]", req(sleep, "/accounts"), true},
	} {
		if ok, by := rbac.Allowed(filters(tc.spec), tc.req); ok != tc.want {
			t.Errorf("%s: allowed=%v (%s), want %v", tc.name, ok, by, tc.want)
		}
	}
}

// compiled is what the proxy makes of a workload's DENY and ALLOW
// filters, HTTP or TCP.
func compiled(t *testing.T, a proxyview.Authz, http bool) []*rbac.Filter {
	t.Helper()
	deny, allow := a.HTTPDeny, a.HTTPAllow
	if !http {
		deny, allow = a.TCPDeny, a.TCPAllow
	}
	var out []*rbac.Filter
	for _, r := range []*rbacv3.RBAC{deny, allow} {
		f, err := rbac.Compile(r)
		if err != nil {
			t.Fatal(err)
		}
		if f != nil {
			out = append(out, f)
		}
	}
	return out
}
