// Package rbac evaluates Envoy's RBAC filter configuration (what Istio's
// AuthorizationPolicy becomes on the wire) in the proxy: a DENY filter
// refuses what any of its policies matches, an ALLOW filter refuses what
// none matches, a LOG filter (Istio's AUDIT) refuses nothing and only
// marks what it matches. A policy matches when one of its permissions (what is
// asked) and one of its principals (who asks, proven by the mTLS peer
// certificate) match. Rules this package does not know are an error, so the
// update is NACKed rather than enforced partially.
package rbac

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// Request is what a decision looks at. Header looks a lowercase header
// name up (the pseudo-headers :method, :path and :authority included;
// repeated headers joined by commas); L4 checks have none.
type Request struct {
	Principal string // the peer's SPIFFE URI, "" in plaintext
	// RemoteIP is the connection's peer address (direct_remote_ip);
	// ClientIP the original client's as X-Forwarded-For says it under
	// the connection manager's rules (remote_ip), RemoteIP when unset.
	RemoteIP netip.Addr
	ClientIP netip.Addr
	DestPort uint32
	Header   func(name string) (string, bool)
	HTTP     bool
	// Auth is the request's verified JWT, as Istio's istio_authn filter
	// metadata says it; nil without one.
	Auth *Auth
}

// Auth is what policies see of a verified JWT (request.auth.*).
type Auth struct {
	Principal string // iss/sub
	Audiences []string
	Presenter string
	Claims    map[string]any
}

// header is a header's value; none without Header (a connection).
func (r *Request) header(name string) (string, bool) {
	if r.Header == nil {
		return "", false
	}
	return r.Header(name)
}

// Filter is one compiled RBAC filter.
type Filter struct {
	Deny bool
	// Log marks a LOG (audit) filter: never refuses.
	Log      bool
	policies []policy
}

type policy struct {
	name        string
	permissions []matcher
	principals  []matcher
}

// matcher is one compiled permission or principal.
type matcher func(*Request) bool

// Compile turns an RBAC config into a filter; a nil config allows all.
func Compile(r *rbacv3.RBAC) (*Filter, error) {
	if r == nil {
		return nil, nil
	}
	f := &Filter{}
	switch r.GetAction() {
	case rbacv3.RBAC_ALLOW:
	case rbacv3.RBAC_DENY:
		f.Deny = true
	case rbacv3.RBAC_LOG:
		f.Log = true
	default:
		return nil, fmt.Errorf("RBAC action %s is not supported (ALLOW, DENY and LOG are)", r.GetAction())
	}
	names := make([]string, 0, len(r.GetPolicies()))
	for n := range r.GetPolicies() {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := r.GetPolicies()[n]
		if p.GetCondition() != nil || p.GetCheckedCondition() != nil {
			return nil, fmt.Errorf("policy %q: CEL conditions are not supported", n)
		}
		cp := policy{name: n}
		for _, perm := range p.GetPermissions() {
			m, err := permission(perm)
			if err != nil {
				return nil, fmt.Errorf("policy %q: %w", n, err)
			}
			cp.permissions = append(cp.permissions, m)
		}
		for _, pr := range p.GetPrincipals() {
			m, err := principal(pr)
			if err != nil {
				return nil, fmt.Errorf("policy %q: %w", n, err)
			}
			cp.principals = append(cp.principals, m)
		}
		f.policies = append(f.policies, cp)
	}
	return f, nil
}

// Match returns the name of the first policy that matches, or "".
func (f *Filter) Match(r *Request) string {
	for _, p := range f.policies {
		if anyOf(p.permissions, r) && anyOf(p.principals, r) {
			return p.name
		}
	}
	return ""
}

// Allowed applies filters in order (Istio puts DENY before ALLOW) and
// says whether the request passes, and if not, which policy refused it.
func Allowed(filters []*Filter, r *Request) (bool, string) {
	for _, f := range filters {
		if f == nil || f.Log {
			continue
		}
		m := f.Match(r)
		if f.Deny && m != "" {
			return false, m
		}
		if !f.Deny && m == "" {
			return false, "no ALLOW policy matched"
		}
	}
	return true, ""
}

// Audited returns the first LOG policy that matches the request, or "".
func Audited(filters []*Filter, r *Request) string {
	for _, f := range filters {
		if f != nil && f.Log {
			if m := f.Match(r); m != "" {
				return m
			}
		}
	}
	return ""
}

func anyOf(ms []matcher, r *Request) bool {
	for _, m := range ms {
		if m(r) {
			return true
		}
	}
	return false
}

func allOf(ms []matcher, r *Request) bool {
	for _, m := range ms {
		if !m(r) {
			return false
		}
	}
	return true
}

func permission(p *rbacv3.Permission) (matcher, error) {
	switch x := p.GetRule().(type) {
	case *rbacv3.Permission_Any:
		return func(*Request) bool { return true }, nil
	case *rbacv3.Permission_AndRules:
		ms, err := permissions(x.AndRules.GetRules())
		return func(r *Request) bool { return allOf(ms, r) }, err
	case *rbacv3.Permission_OrRules:
		ms, err := permissions(x.OrRules.GetRules())
		return func(r *Request) bool { return anyOf(ms, r) }, err
	case *rbacv3.Permission_NotRule:
		m, err := permission(x.NotRule)
		return func(r *Request) bool { return !m(r) }, err
	case *rbacv3.Permission_DestinationPort:
		port := x.DestinationPort
		return func(r *Request) bool { return r.DestPort == port }, nil
	case *rbacv3.Permission_Header:
		return header(x.Header)
	case *rbacv3.Permission_UrlPath:
		sm, err := stringMatcher(x.UrlPath.GetPath())
		if err != nil {
			return nil, err
		}
		return func(r *Request) bool {
			if !r.HTTP {
				return false
			}
			target, _ := r.header(":path")
			path, _, _ := strings.Cut(target, "?")
			return sm(path)
		}, nil
	}
	return nil, fmt.Errorf("permission %T is not supported", p.GetRule())
}

func permissions(ps []*rbacv3.Permission) ([]matcher, error) {
	var out []matcher
	for _, p := range ps {
		m, err := permission(p)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

func principal(p *rbacv3.Principal) (matcher, error) {
	switch x := p.GetIdentifier().(type) {
	case *rbacv3.Principal_Any:
		return func(*Request) bool { return true }, nil
	case *rbacv3.Principal_AndIds:
		ms, err := principals(x.AndIds.GetIds())
		return func(r *Request) bool { return allOf(ms, r) }, err
	case *rbacv3.Principal_OrIds:
		ms, err := principals(x.OrIds.GetIds())
		return func(r *Request) bool { return anyOf(ms, r) }, err
	case *rbacv3.Principal_NotId:
		m, err := principal(x.NotId)
		return func(r *Request) bool { return !m(r) }, err
	case *rbacv3.Principal_Authenticated_:
		if x.Authenticated.GetPrincipalName() == nil {
			return func(r *Request) bool { return r.Principal != "" }, nil
		}
		sm, err := stringMatcher(x.Authenticated.GetPrincipalName())
		if err != nil {
			return nil, err
		}
		return func(r *Request) bool { return r.Principal != "" && sm(r.Principal) }, nil
	case *rbacv3.Principal_DirectRemoteIp:
		return cidr(x.DirectRemoteIp.GetAddressPrefix(), x.DirectRemoteIp.GetPrefixLen().GetValue())
	case *rbacv3.Principal_RemoteIp:
		m, err := cidr(x.RemoteIp.GetAddressPrefix(), x.RemoteIp.GetPrefixLen().GetValue())
		if err != nil {
			return nil, err
		}
		return func(r *Request) bool {
			if r.ClientIP.IsValid() {
				return m(&Request{RemoteIP: r.ClientIP})
			}
			return m(r)
		}, nil
	case *rbacv3.Principal_SourceIp:
		return cidr(x.SourceIp.GetAddressPrefix(), x.SourceIp.GetPrefixLen().GetValue())
	case *rbacv3.Principal_Header:
		return header(x.Header)
	case *rbacv3.Principal_Metadata:
		return authMetadata(x.Metadata)
	}
	return nil, fmt.Errorf("principal %T is not supported", p.GetIdentifier())
}

func principals(ps []*rbacv3.Principal) ([]matcher, error) {
	var out []matcher
	for _, p := range ps {
		m, err := principal(p)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

func cidr(addr string, bits uint32) (matcher, error) {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return nil, fmt.Errorf("IP block %q: %w", addr, err)
	}
	pfx, err := a.Prefix(int(bits))
	if err != nil {
		return nil, fmt.Errorf("IP block %s/%d: %w", addr, bits, err)
	}
	return func(r *Request) bool { return r.RemoteIP.IsValid() && pfx.Contains(r.RemoteIP.Unmap()) }, nil
}

func header(h *route.HeaderMatcher) (matcher, error) {
	name := strings.ToLower(h.GetName())
	var match func(string) bool
	switch x := h.GetHeaderMatchSpecifier().(type) {
	case *route.HeaderMatcher_PresentMatch:
		match = func(string) bool { return x.PresentMatch }
	case *route.HeaderMatcher_StringMatch:
		sm, err := stringMatcher(x.StringMatch)
		if err != nil {
			return nil, err
		}
		match = sm
	case *route.HeaderMatcher_ExactMatch:
		match = func(v string) bool { return v == x.ExactMatch }
	case *route.HeaderMatcher_PrefixMatch:
		match = func(v string) bool { return strings.HasPrefix(v, x.PrefixMatch) }
	case *route.HeaderMatcher_SuffixMatch:
		match = func(v string) bool { return strings.HasSuffix(v, x.SuffixMatch) }
	case nil:
		match = func(string) bool { return true }
	default:
		return nil, fmt.Errorf("header match %T is not supported", h.GetHeaderMatchSpecifier())
	}
	invert := h.GetInvertMatch()
	return func(r *Request) bool {
		v, ok := r.header(name)
		if !ok {
			return invert
		}
		return match(v) != invert
	}, nil
}

// stringMatcher compiles Envoy's StringMatcher.
func stringMatcher(m *matcherv3.StringMatcher) (func(string) bool, error) {
	if m == nil {
		return nil, errors.New("empty string matcher")
	}
	fold := func(s string) string { return s }
	if m.GetIgnoreCase() {
		fold = strings.ToLower
	}
	switch x := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		want := fold(x.Exact)
		return func(s string) bool { return fold(s) == want }, nil
	case *matcherv3.StringMatcher_Prefix:
		want := fold(x.Prefix)
		return func(s string) bool { return strings.HasPrefix(fold(s), want) }, nil
	case *matcherv3.StringMatcher_Suffix:
		want := fold(x.Suffix)
		return func(s string) bool { return strings.HasSuffix(fold(s), want) }, nil
	case *matcherv3.StringMatcher_Contains:
		want := fold(x.Contains)
		return func(s string) bool { return strings.Contains(fold(s), want) }, nil
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := regexp.Compile("^(?:" + x.SafeRegex.GetRegex() + ")$")
		if err != nil {
			return nil, fmt.Errorf("regex %q: %w", x.SafeRegex.GetRegex(), err)
		}
		return re.MatchString, nil
	}
	return nil, fmt.Errorf("string match %T is not supported", m.GetMatchPattern())
}

// authMetadata matches the istio_authn metadata of a request's verified
// JWT: request.auth.principal, .audiences, .presenter and .claims (nested
// by path), as Istio's requestPrincipals and request.auth.* conditions
// become. A request without a verified JWT matches none.
func authMetadata(m *matcherv3.MetadataMatcher) (matcher, error) {
	if m.GetFilter() != "istio_authn" {
		return nil, fmt.Errorf("metadata filter %q is not supported (istio_authn is)", m.GetFilter())
	}
	var path []string
	for _, s := range m.GetPath() {
		path = append(path, s.GetKey())
	}
	if len(path) == 0 {
		return nil, errors.New("istio_authn metadata without a path")
	}
	value, err := valueMatcher(m.GetValue())
	if err != nil {
		return nil, fmt.Errorf("istio_authn %s: %w", strings.Join(path, "."), err)
	}
	invert := m.GetInvert()
	var get func(a *Auth) (any, bool)
	switch path[0] {
	case "request.auth.principal":
		get = func(a *Auth) (any, bool) { return a.Principal, true }
	case "request.auth.presenter":
		get = func(a *Auth) (any, bool) { return a.Presenter, a.Presenter != "" }
	case "request.auth.audiences":
		get = func(a *Auth) (any, bool) {
			l := make([]any, len(a.Audiences))
			for i, s := range a.Audiences {
				l[i] = s
			}
			return l, len(l) > 0
		}
	case "request.auth.claims":
		keys := path[1:]
		if len(keys) == 0 {
			return nil, errors.New("istio_authn request.auth.claims without a claim")
		}
		get = func(a *Auth) (any, bool) {
			var v any = a.Claims
			for _, k := range keys {
				m, ok := v.(map[string]any)
				if !ok {
					return nil, false
				}
				if v, ok = m[k]; !ok {
					return nil, false
				}
			}
			return v, true
		}
	default:
		return nil, fmt.Errorf("istio_authn key %q is not supported", path[0])
	}
	return func(r *Request) bool {
		if r.Auth == nil {
			return invert
		}
		v, ok := get(r.Auth)
		return (ok && value(v)) != invert
	}, nil
}

// valueMatcher compiles a metadata ValueMatcher: a string match, presence,
// or a list match one of whose elements matches.
func valueMatcher(v *matcherv3.ValueMatcher) (func(any) bool, error) {
	switch x := v.GetMatchPattern().(type) {
	case *matcherv3.ValueMatcher_StringMatch:
		sm, err := stringMatcher(x.StringMatch)
		if err != nil {
			return nil, err
		}
		return func(v any) bool { s, ok := v.(string); return ok && sm(s) }, nil
	case *matcherv3.ValueMatcher_PresentMatch:
		return func(any) bool { return x.PresentMatch }, nil
	case *matcherv3.ValueMatcher_ListMatch:
		one, err := valueMatcher(x.ListMatch.GetOneOf())
		if err != nil {
			return nil, err
		}
		return func(v any) bool {
			l, ok := v.([]any)
			if !ok {
				return one(v) // a single claim value matches as a list of one
			}
			for _, e := range l {
				if one(e) {
					return true
				}
			}
			return false
		}, nil
	}
	return nil, fmt.Errorf("value match %T is not supported", v.GetMatchPattern())
}
