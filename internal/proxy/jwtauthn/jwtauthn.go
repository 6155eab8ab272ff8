// Package jwtauthn is Envoy's JWT authentication filter (what Istio's
// RequestAuthentication becomes on the wire) in the proxy: providers with
// their issuer, audiences and keys (JWKS sent inline by the control plane,
// which fetches jwksUri as istiod does), where tokens are found, and the
// requirement rules. A request with a token that fails is refused with
// 401; one without a token passes unauthenticated when the rule allows it
// (Istio's shape: any provider, or missing). Signatures and claims are
// checked by go-jose. What it does not know is an error, so the update is
// NACKed rather than enforced partially.
package jwtauthn

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Filter is one compiled jwt_authn filter.
type Filter struct {
	providers map[string]*provider
	rules     []rule
}

type provider struct {
	name, issuer  string
	audiences     []string
	keys          jose.JSONWebKeySet
	forward       bool
	headers       []location
	params        []string
	cookies       []string
	payloadHeader string
	padPayload    bool
	claimHeaders  [][2]string // header, claim
	skew          time.Duration
	requireExp    bool
}

type location struct{ name, prefix string }

type rule struct {
	prefix, path string
	req          *requirement
}

// requirement is one of Envoy's JwtRequirement forms.
type requirement struct {
	provider     string         // provider_name
	any, all     []*requirement // requires_any, requires_all
	allowMissing bool           // allow_missing
	allowFailed  bool           // allow_missing_or_failed
}

// Compile turns a JwtAuthentication into a filter.
func Compile(c *jwtv3.JwtAuthentication) (*Filter, error) {
	if len(c.GetRequirementMap()) > 0 || c.GetFilterStateRules() != nil {
		return nil, errors.New("jwt_authn: requirement_map and filter_state_rules are not supported")
	}
	f := &Filter{providers: map[string]*provider{}}
	for name, p := range c.GetProviders() {
		cp, err := compileProvider(name, p)
		if err != nil {
			return nil, fmt.Errorf("jwt_authn provider %q: %w", name, err)
		}
		f.providers[name] = cp
	}
	for i, r := range c.GetRules() {
		m := r.GetMatch()
		cr := rule{prefix: m.GetPrefix(), path: m.GetPath()}
		if cr.prefix == "" && cr.path == "" || len(m.GetHeaders())+len(m.GetQueryParameters()) > 0 || m.GetCaseSensitive() != nil && !m.GetCaseSensitive().GetValue() {
			return nil, fmt.Errorf("jwt_authn rule %d: only prefix and path matches are supported", i)
		}
		if r.GetRequirementName() != "" {
			return nil, fmt.Errorf("jwt_authn rule %d: requirement_name is not supported", i)
		}
		req, err := f.compileRequirement(r.GetRequires())
		if err != nil {
			return nil, fmt.Errorf("jwt_authn rule %d: %w", i, err)
		}
		cr.req = req
		f.rules = append(f.rules, cr)
	}
	return f, nil
}

func compileProvider(name string, p *jwtv3.JwtProvider) (*provider, error) {
	switch {
	case p.GetSubjects() != nil || p.GetMaxLifetime() != nil:
		return nil, errors.New("subjects and max_lifetime are not supported")
	case p.GetHeaderInMetadata() != "" || p.GetFailedStatusInMetadata() != "" || p.GetNormalizePayloadInMetadata() != nil:
		return nil, errors.New("header_in_metadata, failed_status_in_metadata and normalize_payload_in_metadata are not supported")
	}
	jwks := p.GetLocalJwks().GetInlineString()
	if jwks == "" && len(p.GetLocalJwks().GetInlineBytes()) > 0 {
		jwks = string(p.GetLocalJwks().GetInlineBytes())
	}
	if p.GetRemoteJwks() != nil || jwks == "" {
		return nil, errors.New("keys must be inline (local_jwks); the control plane fetches jwksUri")
	}
	cp := &provider{name: name, issuer: p.GetIssuer(), audiences: p.GetAudiences(), forward: p.GetForward(), params: p.GetFromParams(),
		cookies: p.GetFromCookies(), payloadHeader: strings.ToLower(p.GetForwardPayloadHeader()), padPayload: p.GetPadForwardPayloadHeader(),
		skew: 60 * time.Second, requireExp: p.GetRequireExpiration()}
	if err := json.Unmarshal([]byte(jwks), &cp.keys); err != nil {
		return nil, fmt.Errorf("local_jwks: %w", err)
	}
	if s := p.GetClockSkewSeconds(); s > 0 {
		cp.skew = time.Duration(s) * time.Second
	}
	for _, h := range p.GetFromHeaders() {
		cp.headers = append(cp.headers, location{name: strings.ToLower(h.GetName()), prefix: h.GetValuePrefix()})
	}
	if len(cp.headers)+len(cp.params)+len(cp.cookies) == 0 {
		// Envoy's defaults: the Authorization header, then access_token.
		cp.headers = []location{{name: "authorization", prefix: "Bearer "}}
		cp.params = []string{"access_token"}
	}
	for _, c := range p.GetClaimToHeaders() {
		cp.claimHeaders = append(cp.claimHeaders, [2]string{strings.ToLower(c.GetHeaderName()), c.GetClaimName()})
	}
	return cp, nil
}

func (f *Filter) compileRequirement(r *jwtv3.JwtRequirement) (*requirement, error) {
	switch t := r.GetRequiresType().(type) {
	case nil:
		return nil, nil // no requirement: tokens are not looked at
	case *jwtv3.JwtRequirement_ProviderName:
		if f.providers[t.ProviderName] == nil {
			return nil, fmt.Errorf("provider %q is not defined", t.ProviderName)
		}
		return &requirement{provider: t.ProviderName}, nil
	case *jwtv3.JwtRequirement_RequiresAny:
		out := &requirement{}
		for _, s := range t.RequiresAny.GetRequirements() {
			c, err := f.compileRequirement(s)
			if err != nil {
				return nil, err
			}
			out.any = append(out.any, c)
		}
		return out, nil
	case *jwtv3.JwtRequirement_RequiresAll:
		out := &requirement{}
		for _, s := range t.RequiresAll.GetRequirements() {
			c, err := f.compileRequirement(s)
			if err != nil {
				return nil, err
			}
			out.all = append(out.all, c)
		}
		return out, nil
	case *jwtv3.JwtRequirement_AllowMissing:
		return &requirement{allowMissing: true}, nil
	case *jwtv3.JwtRequirement_AllowMissingOrFailed:
		return &requirement{allowFailed: true}, nil
	}
	return nil, fmt.Errorf("requirement %T is not supported", r.GetRequiresType())
}

// Request is what the filter reads of a request.
type Request struct {
	// Header looks a lowercase header up (repeated ones joined).
	Header func(name string) (string, bool)
	// Path is the normalized path and query.
	Path string
	Now  time.Time
}

// Verified is a token that passed: its claims as the policies see them
// (Istio's request.auth.*), and the provider that accepted it.
type Verified struct {
	Provider  string
	Principal string // iss/sub
	Audiences []string
	Presenter string
	Claims    map[string]any
}

// Result is the filter's answer.
type Result struct {
	// Status non-zero (401) refuses the request with Body.
	Status int
	Body   string
	// Verified are the tokens that passed, first the one the policies see.
	Verified []Verified
	// Remove and Set are header operations for the request sent upstream.
	Remove []string
	Set    [][2]string
}

// status is how one token fared with one provider.
type status int

const (
	missing status = iota
	ok
	failed
)

// Verify checks a request against the first rule its path matches.
func (f *Filter) Verify(req *Request) Result {
	path, _, _ := strings.Cut(req.Path, "?")
	var r *requirement
	for _, ru := range f.rules {
		if ru.path != "" && path == ru.path || ru.path == "" && strings.HasPrefix(path, ru.prefix) {
			r = ru.req
			break
		}
	}
	if r == nil {
		return Result{}
	}
	v := &verification{f: f, req: req, seen: map[string]outcome{}}
	pass, why := v.check(r)
	if !pass {
		return Result{Status: http.StatusUnauthorized, Body: why}
	}
	res := Result{}
	names := make([]string, 0, len(v.seen))
	for n := range v.seen {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		o := v.seen[n]
		if o.st != ok {
			continue
		}
		p := f.providers[n]
		res.Verified = append(res.Verified, o.verified)
		if !p.forward && o.header != "" {
			res.Remove = append(res.Remove, o.header)
		}
		if p.payloadHeader != "" {
			enc := base64.RawURLEncoding
			if p.padPayload {
				enc = base64.URLEncoding
			}
			res.Set = append(res.Set, [2]string{p.payloadHeader, enc.EncodeToString(o.payload)})
		}
		for _, ch := range p.claimHeaders {
			if s, ok := claimString(o.verified.Claims[ch[1]]); ok {
				res.Set = append(res.Set, [2]string{ch[0], s})
			}
		}
	}
	return res
}

// verification evaluates one request, each provider at most once.
type verification struct {
	f    *Filter
	req  *Request
	seen map[string]outcome
}

type outcome struct {
	st       status
	why      string
	header   string // the header the token came in, if one
	payload  []byte
	verified Verified
}

// check says whether the requirement holds, and why not.
func (v *verification) check(r *requirement) (bool, string) {
	switch {
	case r.provider != "":
		o := v.provider(r.provider)
		switch o.st {
		case ok:
			return true, ""
		case missing:
			return false, "Jwt is missing"
		}
		return false, o.why
	case r.allowFailed:
		v.all()
		return true, ""
	case r.allowMissing:
		// Passes when no provider found a token; fails on a bad one.
		for _, o := range v.all() {
			if o.st == failed {
				return false, o.why
			}
		}
		return true, ""
	case len(r.all) > 0:
		for _, s := range r.all {
			if ok, why := v.check(s); !ok {
				return false, why
			}
		}
		return true, ""
	default: // requires_any
		why := "Jwt is missing"
		for _, s := range r.any {
			ok, w := v.check(s)
			if ok {
				return true, ""
			}
			if w != "Jwt is missing" {
				why = w
			}
		}
		return false, why
	}
}

// all runs every provider of the filter.
func (v *verification) all() []outcome {
	var out []outcome
	for n := range v.f.providers {
		out = append(out, v.provider(n))
	}
	return out
}

// provider extracts a provider's token and verifies it (once).
func (v *verification) provider(name string) outcome {
	if o, ok := v.seen[name]; ok {
		return o
	}
	o := v.f.providers[name].verify(v.req)
	v.seen[name] = o
	return o
}

func (p *provider) verify(req *Request) outcome {
	token, header := p.extract(req)
	if token == "" {
		return outcome{st: missing}
	}
	fail := func(why string) outcome { return outcome{st: failed, why: why, header: header} }
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
		jose.ES256, jose.ES384, jose.ES512, jose.EdDSA})
	if err != nil {
		return fail("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")
	}
	var unverified jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil || unverified.Issuer != p.issuer && p.issuer != "" {
		return fail("Jwt issuer is not configured")
	}
	keys := p.keys.Keys
	if kid := tok.Headers[0].KeyID; kid != "" {
		keys = p.keys.Key(kid)
	}
	var std jwt.Claims
	var all map[string]any
	verified := false
	for i := range keys {
		if tok.Claims(keys[i].Key, &std, &all) == nil {
			verified = true
			break
		}
	}
	if !verified {
		return fail("Jwt verification fails")
	}
	now := req.Now
	if now.IsZero() {
		now = time.Now()
	}
	if p.requireExp && std.Expiry == nil {
		return fail("Jwt is missing exp")
	}
	if err := std.ValidateWithLeeway(jwt.Expected{Time: now}, p.skew); err != nil {
		if errors.Is(err, jwt.ErrExpired) {
			return fail("Jwt is expired")
		}
		return fail("Jwt not yet valid")
	}
	if len(p.audiences) > 0 && !anyAudience(std.Audience, p.audiences) {
		return fail("Audiences in Jwt are not allowed")
	}
	// The payload as the issuer wrote it (it parsed as compact JWS above);
	// claims marshalled again only if that segment will not decode.
	_, rest, _ := strings.Cut(token, ".")
	seg, _, _ := strings.Cut(rest, ".")
	payload, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		payload, _ = json.Marshal(all)
	}
	azp, _ := all["azp"].(string)
	return outcome{st: ok, header: header, payload: payload, verified: Verified{Provider: p.name, Principal: std.Issuer + "/" + std.Subject,
		Audiences: std.Audience, Presenter: azp, Claims: all}}
}

// extract finds the provider's token: headers, then query parameters, then
// cookies. header names the header it came in.
func (p *provider) extract(req *Request) (token, header string) {
	for _, l := range p.headers {
		v, ok := req.Header(l.name)
		if !ok {
			continue
		}
		if l.prefix != "" {
			if len(v) < len(l.prefix) || !strings.EqualFold(v[:len(l.prefix)], l.prefix) {
				continue
			}
			v = v[len(l.prefix):]
		}
		if v = strings.TrimSpace(v); v != "" {
			return v, l.name
		}
	}
	if len(p.params) > 0 {
		if _, q, ok := strings.Cut(req.Path, "?"); ok {
			if vals, err := url.ParseQuery(q); err == nil {
				for _, name := range p.params {
					if v := vals.Get(name); v != "" {
						return v, ""
					}
				}
			}
		}
	}
	if len(p.cookies) > 0 {
		if line, ok := req.Header("cookie"); ok {
			if cs, err := http.ParseCookie(line); err == nil {
				for _, name := range p.cookies {
					for _, c := range cs {
						if c.Name == name && c.Value != "" {
							return c.Value, ""
						}
					}
				}
			}
		}
	}
	return "", ""
}

func anyAudience(have jwt.Audience, allowed []string) bool {
	for _, a := range have {
		for _, b := range allowed {
			if a == b {
				return true
			}
		}
	}
	return false
}

// claimString is a claim as a header value (strings, numbers, booleans).
func claimString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case bool:
		return strconv.FormatBool(x), true
	}
	return "", false
}
