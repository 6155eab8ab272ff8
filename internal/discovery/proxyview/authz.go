package proxyview

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/wrapperspb"
	securitybeta "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Authz is a workload's AuthorizationPolicies as Envoy RBAC filters, in
// Istio's order: DENY first, then ALLOW. Nil filters are absent.
type Authz struct {
	// HTTP filters see the request; TCP filters only the connection, so
	// rules with HTTP fields are dropped from ALLOW (they could never
	// match) and stripped of those fields in DENY (deny more, not less).
	HTTPDeny, HTTPAllow, TCPDeny, TCPAllow *rbacv3.RBAC
	// AUDIT policies: Envoy's RBAC with action LOG, first in the chain.
	HTTPAudit, TCPAudit *rbacv3.RBAC
}

// Key identifies the filters, for sharing generated listeners.
func (a Authz) Key() string {
	h := sha256.New()
	for _, r := range []*rbacv3.RBAC{a.HTTPAudit, a.HTTPDeny, a.HTTPAllow, a.TCPAudit, a.TCPDeny, a.TCPAllow} {
		if r == nil {
			// An absent filter is not an ALLOW without policies (which
			// allows nothing), though both marshal to no bytes.
			h.Write([]byte{0})
			continue
		}
		b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(r)
		h.Write([]byte{1})
		h.Write(b)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// ResolveAuthz picks the AuthorizationPolicies that apply to a workload
// (its namespace's and the root namespace's, without a selector or with
// one matching its labels) and translates them. CUSTOM policies are
// skipped and reported through warn. Principals in the mesh's trust
// domains (trustDomains: the trust domain, then its aliases; or
// cluster.local, which in Istio's policies means the local one) match in
// each of them.
func ResolveAuthz(aps []*securityv1.AuthorizationPolicy, rootNamespace, namespace string, podLabels map[string]string, trustDomains []string, warn func(string)) Authz {
	sorted := make([]*securityv1.AuthorizationPolicy, 0, len(aps))
	for _, ap := range aps {
		if ap.Namespace != namespace && ap.Namespace != rootNamespace {
			continue
		}
		if sel := ap.Spec.GetSelector().GetMatchLabels(); len(sel) > 0 && !labels.SelectorFromSet(sel).Matches(labels.Set(podLabels)) {
			continue
		}
		sorted = append(sorted, ap)
	}
	sort.Slice(sorted, func(i, j int) bool {
		return sorted[i].Namespace+"/"+sorted[i].Name < sorted[j].Namespace+"/"+sorted[j].Name
	})
	var a Authz
	for _, ap := range sorted {
		var httpRBAC, tcpRBAC **rbacv3.RBAC
		switch ap.Spec.GetAction() {
		case securitybeta.AuthorizationPolicy_ALLOW:
			httpRBAC, tcpRBAC = &a.HTTPAllow, &a.TCPAllow
		case securitybeta.AuthorizationPolicy_DENY:
			httpRBAC, tcpRBAC = &a.HTTPDeny, &a.TCPDeny
		case securitybeta.AuthorizationPolicy_AUDIT:
			httpRBAC, tcpRBAC = &a.HTTPAudit, &a.TCPAudit
		case securitybeta.AuthorizationPolicy_CUSTOM:
			// No external authorizer: what it would be asked about is denied.
			warn(customDenied(ap))
			httpRBAC, tcpRBAC = &a.HTTPDeny, &a.TCPDeny
		default:
			warn(fmt.Sprintf("AuthorizationPolicy %s/%s: action %s is not supported; skipped", ap.Namespace, ap.Name, ap.Spec.GetAction()))
			continue
		}
		action := rbacv3.RBAC_ALLOW
		switch ap.Spec.GetAction() {
		case securitybeta.AuthorizationPolicy_DENY, securitybeta.AuthorizationPolicy_CUSTOM:
			action = rbacv3.RBAC_DENY
		case securitybeta.AuthorizationPolicy_AUDIT:
			action = rbacv3.RBAC_LOG
		}
		for _, slot := range []**rbacv3.RBAC{httpRBAC, tcpRBAC} {
			if *slot == nil {
				*slot = &rbacv3.RBAC{Action: action, Policies: map[string]*rbacv3.Policy{}}
			}
		}
		for i, rule := range ap.Spec.GetRules() {
			name := fmt.Sprintf("ns[%s]-policy[%s]-rule[%d]", ap.Namespace, ap.Name, i)
			// Fail closed: a rule that needs what isthmus does not enforce
			// allows nothing, and denies as if that part held.
			var bad []string
			rule, bad = enforceable(rule)
			if len(bad) > 0 {
				warn(notEnforced(ap, i, bad, action == rbacv3.RBAC_ALLOW))
				if action == rbacv3.RBAC_ALLOW {
					continue
				}
			}
			rule = withTrustDomains(rule, trustDomains)
			(*httpRBAC).Policies[name] = translateRule(rule, true)
			tcpRule, httpOnly := l4Only(rule)
			if httpOnly && action != rbacv3.RBAC_DENY {
				continue // never matches a connection (only DENY errs on the side of more)
			}
			(*tcpRBAC).Policies[name] = translateRule(tcpRule, false)
		}
	}
	return a
}

// withTrustDomains is r with each principal of the mesh's trust domains
// (or cluster.local) repeated in every one of them, as Istio reads
// principals when trust domain aliases are set.
func withTrustDomains(r *securitybeta.Rule, trustDomains []string) *securitybeta.Rule {
	if len(trustDomains) == 0 || (len(trustDomains) == 1 && trustDomains[0] == "cluster.local") {
		return r
	}
	expand := func(vals []string) []string {
		var out []string
		for _, v := range vals {
			td, rest, ok := strings.Cut(v, "/")
			if !ok || strings.HasPrefix(v, "*") || (td != "cluster.local" && !slices.Contains(trustDomains, td)) {
				out = append(out, v)
				continue
			}
			for _, t := range trustDomains {
				out = append(out, t+"/"+rest)
			}
		}
		return out
	}
	out := proto.Clone(r).(*securitybeta.Rule)
	for _, f := range out.GetFrom() {
		if s := f.GetSource(); s != nil {
			s.Principals, s.NotPrincipals = expand(s.Principals), expand(s.NotPrincipals)
		}
	}
	for _, c := range out.GetWhen() {
		if c.GetKey() == "source.principal" {
			c.Values, c.NotValues = expand(c.Values), expand(c.NotValues)
		}
	}
	return out
}

// l4Only is a rule without its HTTP fields, and whether it had any.
func l4Only(r *securitybeta.Rule) (*securitybeta.Rule, bool) {
	out := proto.Clone(r).(*securitybeta.Rule)
	had := false
	for _, to := range out.GetTo() {
		op := to.GetOperation()
		if op == nil {
			continue
		}
		if len(op.Methods)+len(op.NotMethods)+len(op.Paths)+len(op.NotPaths)+len(op.Hosts)+len(op.NotHosts) > 0 {
			had = true
		}
		op.Methods, op.NotMethods, op.Paths, op.NotPaths, op.Hosts, op.NotHosts = nil, nil, nil, nil, nil, nil
	}
	for _, f := range out.GetFrom() {
		if s := f.GetSource(); s != nil && len(s.RequestPrincipals)+len(s.NotRequestPrincipals) > 0 {
			had = true // a JWT is an HTTP thing
			s.RequestPrincipals, s.NotRequestPrincipals = nil, nil
		}
	}
	var when []*securitybeta.Condition
	for _, c := range out.GetWhen() {
		if strings.HasPrefix(c.GetKey(), "request.") {
			had = true
			continue
		}
		when = append(when, c)
	}
	out.When = when
	return out, had
}

// enforced are the Source and Operation fields translateRule enforces,
// and the condition keys (besides request.headers[...]).
var (
	enforcedSource = map[string]bool{"principals": true, "not_principals": true, "namespaces": true, "not_namespaces": true,
		"service_accounts": true, "not_service_accounts": true, "trust_domains": true, "not_trust_domains": true,
		"request_principals": true, "not_request_principals": true,
		"ip_blocks": true, "not_ip_blocks": true, "remote_ip_blocks": true, "not_remote_ip_blocks": true}
	enforcedOperation = map[string]bool{"hosts": true, "not_hosts": true, "ports": true, "not_ports": true,
		"methods": true, "not_methods": true, "paths": true, "not_paths": true}
	enforcedKeys = map[string]bool{"source.principal": true, "source.namespace": true, "source.ip": true, "remote.ip": true, "destination.port": true,
		"request.auth.principal": true, "request.auth.audiences": true, "request.auth.presenter": true}
)

// enforceable is a rule without the parts isthmus does not enforce, and
// those parts by name (empty when it enforces the whole rule).
func enforceable(r *securitybeta.Rule) (*securitybeta.Rule, []string) {
	var bad []string
	out := r
	clone := func() {
		if out == r {
			out = proto.Clone(r).(*securitybeta.Rule)
		}
	}
	strip := func(m protoreflect.Message, enforced map[string]bool, where string) {
		m.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
			if !enforced[string(fd.Name())] {
				bad = append(bad, where+"."+fd.JSONName())
			}
			return true
		})
	}
	for i := range r.GetFrom() {
		strip(r.GetFrom()[i].GetSource().ProtoReflect(), enforcedSource, "from.source")
	}
	for i := range r.GetTo() {
		strip(r.GetTo()[i].GetOperation().ProtoReflect(), enforcedOperation, "to.operation")
	}
	for _, c := range r.GetWhen() {
		if k := c.GetKey(); !enforcedKeys[k] && !bracketed(k) {
			bad = append(bad, "when "+k)
		}
	}
	if len(bad) == 0 {
		return r, nil
	}
	clone()
	for _, f := range out.GetFrom() {
		clearUnenforced(f.GetSource().ProtoReflect(), enforcedSource)
	}
	for _, t := range out.GetTo() {
		clearUnenforced(t.GetOperation().ProtoReflect(), enforcedOperation)
	}
	var when []*securitybeta.Condition
	for _, c := range out.GetWhen() {
		if k := c.GetKey(); enforcedKeys[k] || bracketed(k) {
			when = append(when, c)
		}
	}
	out.When = when
	slices.Sort(bad)
	return out, slices.Compact(bad)
}

// bracketed tells the keys with a name in brackets that isthmus enforces:
// request.headers[NAME] and request.auth.claims[NAME] (nested: [A][B]).
func bracketed(k string) bool {
	_, ok := claimPath(k)
	return ok || strings.HasPrefix(k, "request.headers[") && strings.HasSuffix(k, "]") && len(k) > len("request.headers[]")
}

// claimPath is the claim names of a request.auth.claims[A][B] key.
func claimPath(k string) ([]string, bool) {
	rest, ok := strings.CutPrefix(k, "request.auth.claims[")
	if !ok || !strings.HasSuffix(rest, "]") {
		return nil, false
	}
	parts := strings.Split(strings.TrimSuffix(rest, "]"), "][")
	for _, p := range parts {
		if p == "" || strings.ContainsAny(p, "[]") {
			return nil, false
		}
	}
	return parts, true
}

func clearUnenforced(m protoreflect.Message, enforced map[string]bool) {
	if !m.IsValid() {
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if !enforced[string(fd.Name())] {
			m.Clear(fd)
		}
		return true
	})
}

// notEnforced says what becomes of a rule with parts isthmus does not
// enforce (the same words at apply time, in analyze and in the log).
func notEnforced(ap *securityv1.AuthorizationPolicy, rule int, parts []string, allow bool) string {
	what := "the rule denies as if they held (it denies more, never less)"
	if allow {
		what = "the rule allows nothing (fails closed)"
	}
	return fmt.Sprintf("AuthorizationPolicy %s/%s rule %d: %s not enforced by isthmus; %s", ap.Namespace, ap.Name, rule, strings.Join(parts, ", "), what)
}

func customDenied(ap *securityv1.AuthorizationPolicy) string {
	return fmt.Sprintf("AuthorizationPolicy %s/%s: action CUSTOM (provider %q) has no external authorizer in isthmus; the requests it matches are denied",
		ap.Namespace, ap.Name, ap.Spec.GetProvider().GetName())
}

// NotEnforced lists what isthmus does not enforce of a policy and what
// happens instead, as ResolveAuthz warns it (for analyze).
func NotEnforced(ap *securityv1.AuthorizationPolicy) []string {
	var out []string
	if ap.Spec.GetAction() == securitybeta.AuthorizationPolicy_CUSTOM {
		out = append(out, customDenied(ap))
	}
	for i, rule := range ap.Spec.GetRules() {
		if _, bad := enforceable(rule); len(bad) > 0 {
			out = append(out, notEnforced(ap, i, bad, ap.Spec.GetAction() == securitybeta.AuthorizationPolicy_ALLOW))
		}
	}
	return out
}

// translateRule is one rule as an RBAC policy: any of its `from` sources
// and all its `when` principal conditions for principals; any of its `to`
// operations and its request conditions for permissions. The rule holds
// only what isthmus enforces (see enforceable).
func translateRule(r *securitybeta.Rule, http bool) *rbacv3.Policy {
	var who, what []*rbacv3.Principal
	var perms []*rbacv3.Permission
	if len(r.GetFrom()) > 0 {
		var anyOf []*rbacv3.Principal
		for _, f := range r.GetFrom() {
			anyOf = append(anyOf, source(f.GetSource()))
		}
		who = append(who, orIDs(anyOf))
	}
	if len(r.GetTo()) > 0 {
		var anyOf []*rbacv3.Permission
		for _, t := range r.GetTo() {
			anyOf = append(anyOf, operation(t.GetOperation(), http))
		}
		perms = append(perms, orRules(anyOf))
	}
	for _, c := range r.GetWhen() {
		key := c.GetKey()
		switch {
		case key == "source.principal":
			what = append(what, ids(c.GetValues(), c.GetNotValues(), principalName))
		case key == "source.namespace":
			what = append(what, ids(c.GetValues(), c.GetNotValues(), namespacePrincipal))
		case key == "source.ip":
			what = append(what, ids(c.GetValues(), c.GetNotValues(), ipPrincipal))
		case key == "remote.ip":
			what = append(what, ids(c.GetValues(), c.GetNotValues(), remoteIPPrincipal))
		case http && key == "request.auth.principal":
			what = append(what, ids(c.GetValues(), c.GetNotValues(), requestPrincipal))
		case http && key == "request.auth.presenter":
			what = append(what, ids(c.GetValues(), c.GetNotValues(), func(v string) *rbacv3.Principal { return authMetadata([]string{key}, v, false) }))
		case http && key == "request.auth.audiences":
			what = append(what, ids(c.GetValues(), c.GetNotValues(), func(v string) *rbacv3.Principal { return authMetadata([]string{key}, v, true) }))
		case http && strings.HasPrefix(key, "request.auth.claims["):
			if names, ok := claimPath(key); ok {
				path := append([]string{"request.auth.claims"}, names...)
				what = append(what, ids(c.GetValues(), c.GetNotValues(), func(v string) *rbacv3.Principal { return authMetadata(path, v, true) }))
			}
		case key == "destination.port":
			perms = append(perms, rules(c.GetValues(), c.GetNotValues(), portPermission))
		case http && strings.HasPrefix(key, "request.headers[") && strings.HasSuffix(key, "]"):
			name := strings.TrimSuffix(strings.TrimPrefix(key, "request.headers["), "]")
			perms = append(perms, rules(c.GetValues(), c.GetNotValues(), func(v string) *rbacv3.Permission {
				return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: headerMatch(name, v)}}
			}))
		}
	}
	who = append(who, what...)
	p := &rbacv3.Policy{}
	if len(who) == 0 {
		p.Principals = []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Any{Any: true}}}
	} else {
		p.Principals = []*rbacv3.Principal{{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: who}}}}
	}
	if len(perms) == 0 {
		p.Permissions = []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}}
	} else {
		p.Permissions = []*rbacv3.Permission{{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: perms}}}}
	}
	return p
}

func source(s *securitybeta.Source) *rbacv3.Principal {
	var all []*rbacv3.Principal
	add := func(vals, not []string, f func(string) *rbacv3.Principal) {
		if len(vals)+len(not) > 0 {
			all = append(all, ids(vals, not, f))
		}
	}
	add(s.GetPrincipals(), s.GetNotPrincipals(), principalName)
	add(s.GetNamespaces(), s.GetNotNamespaces(), namespacePrincipal)
	add(s.GetServiceAccounts(), s.GetNotServiceAccounts(), serviceAccountPrincipal)
	add(s.GetTrustDomains(), s.GetNotTrustDomains(), trustDomainPrincipal)
	add(s.GetRequestPrincipals(), s.GetNotRequestPrincipals(), requestPrincipal)
	add(s.GetIpBlocks(), s.GetNotIpBlocks(), ipPrincipal)
	add(s.GetRemoteIpBlocks(), s.GetNotRemoteIpBlocks(), remoteIPPrincipal)
	if len(all) == 0 {
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: all}}}
}

func operation(o *securitybeta.Operation, http bool) *rbacv3.Permission {
	var all []*rbacv3.Permission
	add := func(vals, not []string, f func(string) *rbacv3.Permission) {
		if len(vals)+len(not) > 0 {
			all = append(all, rules(vals, not, f))
		}
	}
	add(o.GetPorts(), o.GetNotPorts(), portPermission)
	if http {
		add(o.GetMethods(), o.GetNotMethods(), func(v string) *rbacv3.Permission {
			return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: headerMatch(":method", v)}}
		})
		add(o.GetPaths(), o.GetNotPaths(), func(v string) *rbacv3.Permission {
			return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{Path: istioString(v, false)}}}}
		})
		add(o.GetHosts(), o.GetNotHosts(), func(v string) *rbacv3.Permission {
			m := istioString(v, true)
			return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: &route.HeaderMatcher{Name: ":authority", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: m}}}}
		})
	}
	if len(all) == 0 {
		return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}}
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: all}}}
}

// ids is "any of vals and none of not".
func ids(vals, not []string, f func(string) *rbacv3.Principal) *rbacv3.Principal {
	var set []*rbacv3.Principal
	if len(vals) > 0 {
		var anyOf []*rbacv3.Principal
		for _, v := range vals {
			anyOf = append(anyOf, f(v))
		}
		set = append(set, orIDs(anyOf))
	}
	for _, v := range not {
		set = append(set, &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: f(v)}})
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: set}}}
}

func rules(vals, not []string, f func(string) *rbacv3.Permission) *rbacv3.Permission {
	var set []*rbacv3.Permission
	if len(vals) > 0 {
		var anyOf []*rbacv3.Permission
		for _, v := range vals {
			anyOf = append(anyOf, f(v))
		}
		set = append(set, orRules(anyOf))
	}
	for _, v := range not {
		set = append(set, &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: f(v)}})
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: set}}}
}

func orIDs(ps []*rbacv3.Principal) *rbacv3.Principal {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ps}}}
}

func orRules(ps []*rbacv3.Permission) *rbacv3.Permission {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: ps}}}
}

// principalName matches an Istio principal (trust-domain/ns/N/sa/S) against
// the peer's SPIFFE ID, with Istio's * prefix and suffix forms.
func principalName(v string) *rbacv3.Principal {
	var m *matcherv3.StringMatcher
	switch {
	case v == "*":
		m = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://"}}
	case strings.HasPrefix(v, "*"):
		m = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: v[1:]}}
	case strings.HasSuffix(v, "*"):
		m = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://" + strings.TrimSuffix(v, "*")}}
	default:
		m = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "spiffe://" + v}}
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: m}}}
}

// namespacePrincipal matches peers of a namespace, as Istio does: by the
// /ns/N/ part of their SPIFFE ID.
func namespacePrincipal(ns string) *rbacv3.Principal {
	re := ".*/ns/" + regexp.QuoteMeta(ns) + "/.*"
	if ns == "*" {
		re = ".*/ns/[^/]+/.*"
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{
		PrincipalName: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}}}}
}

// serviceAccountPrincipal matches peers of a service account given as
// NAMESPACE/NAME, in any trust domain of the mesh.
func serviceAccountPrincipal(v string) *rbacv3.Principal {
	ns, sa, _ := strings.Cut(v, "/")
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{
		PrincipalName: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{
			Regex: "spiffe://[^/]+/ns/" + regexp.QuoteMeta(ns) + "/sa/" + regexp.QuoteMeta(sa)}}}}}}
}

// requestPrincipal matches the verified JWT's iss/sub (Istio's
// requestPrincipals), with Istio's * forms; no JWT matches none.
func requestPrincipal(v string) *rbacv3.Principal {
	return authMetadata([]string{"request.auth.principal"}, v, false)
}

// authMetadata matches a value of Istio's istio_authn metadata (what the
// request's verified JWT says) at path; list: one of a list's values.
func authMetadata(path []string, v string, list bool) *rbacv3.Principal {
	value := &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: istioString(v, false)}}
	if list {
		value = &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_ListMatch{ListMatch: &matcherv3.ListMatcher{
			MatchPattern: &matcherv3.ListMatcher_OneOf{OneOf: value}}}}
	}
	var segs []*matcherv3.MetadataMatcher_PathSegment
	for _, p := range path {
		segs = append(segs, &matcherv3.MetadataMatcher_PathSegment{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: p}})
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Metadata{Metadata: &matcherv3.MetadataMatcher{Filter: "istio_authn", Path: segs, Value: value}}}
}

// trustDomainPrincipal matches peers of a trust domain.
func trustDomainPrincipal(td string) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{
		PrincipalName: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://" + td + "/"}}}}}
}

// ipPrincipal matches the connection's peer address (ipBlocks, source.ip).
func ipPrincipal(v string) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cidrOf(v)}}
}

// remoteIPPrincipal matches the original client's address, which a
// gateway takes from X-Forwarded-For (remoteIpBlocks, remote.ip).
func remoteIPPrincipal(v string) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: cidrOf(v)}}
}

func cidrOf(v string) *core.CidrRange {
	addr, bits, ok := strings.Cut(v, "/")
	n := 32
	if strings.Contains(addr, ":") {
		n = 128
	}
	if ok {
		n, _ = strconv.Atoi(bits)
	}
	return cidrRange(addr, n)
}

func portPermission(v string) *rbacv3.Permission {
	p, _ := strconv.Atoi(v)
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: uint32(p)}}
}

func headerMatch(name, v string) *route.HeaderMatcher {
	return &route.HeaderMatcher{Name: name, HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: istioString(v, false)}}
}

// istioString is Istio's value syntax: "*" any, "x*" prefix, "*x" suffix.
func istioString(v string, ignoreCase bool) *matcherv3.StringMatcher {
	m := &matcherv3.StringMatcher{IgnoreCase: ignoreCase}
	switch {
	case v == "*":
		m.MatchPattern = &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: ".*"}}
	case strings.HasPrefix(v, "*"):
		m.MatchPattern = &matcherv3.StringMatcher_Suffix{Suffix: v[1:]}
	case strings.HasSuffix(v, "*"):
		m.MatchPattern = &matcherv3.StringMatcher_Prefix{Prefix: strings.TrimSuffix(v, "*")}
	default:
		m.MatchPattern = &matcherv3.StringMatcher_Exact{Exact: v}
	}
	return m
}

func cidrRange(addr string, bits int) *core.CidrRange {
	return &core.CidrRange{AddressPrefix: addr, PrefixLen: wrapperspb.UInt32(uint32(bits))}
}

// httpFilters are the RBAC HTTP filters to put before the router.
func (a Authz) httpFilters() []*hcm.HttpFilter {
	var out []*hcm.HttpFilter
	for _, r := range []*rbacv3.RBAC{a.HTTPAudit, a.HTTPDeny, a.HTTPAllow} {
		if r != nil {
			out = append(out, &hcm.HttpFilter{Name: "envoy.filters.http.rbac", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&rbachttp.RBAC{Rules: r})}})
		}
	}
	return out
}

// networkFilters are the RBAC network filters to put before tcp_proxy.
func (a Authz) networkFilters() []*listener.Filter {
	var out []*listener.Filter
	for _, r := range []*rbacv3.RBAC{a.TCPAudit, a.TCPDeny, a.TCPAllow} {
		if r != nil {
			out = append(out, &listener.Filter{Name: "envoy.filters.network.rbac", ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(&rbacnet.RBAC{Rules: r, StatPrefix: "tcp."})}})
		}
	}
	return out
}
