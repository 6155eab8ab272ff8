package jwtauthn

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// issuer signs tokens with a key whose JWKS it gives.
type issuer struct {
	key  *rsa.PrivateKey
	kid  string
	name string
}

func newIssuer(t *testing.T, name string) *issuer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return &issuer{key: k, kid: name + "-key", name: name}
}

func (i *issuer) jwks(t *testing.T) string {
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &i.key.PublicKey, KeyID: i.kid, Algorithm: "RS256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (i *issuer) token(t *testing.T, claims map[string]any) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: i.key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", i.kid))
	if err != nil {
		t.Fatal(err)
	}
	c := map[string]any{"iss": i.name, "sub": "alice", "exp": time.Now().Add(time.Hour).Unix()}
	for k, v := range claims {
		if v == nil {
			delete(c, k)
			continue
		}
		c[k] = v
	}
	tok, err := jwt.Signed(s).Claims(c).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// istioShape is what Istio makes of one RequestAuthentication: a provider
// per jwtRule and one rule, any provider or none.
func istioShape(providers map[string]*jwtv3.JwtProvider) *jwtv3.JwtAuthentication {
	var any []*jwtv3.JwtRequirement
	for n := range providers {
		any = append(any, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_ProviderName{ProviderName: n}})
	}
	any = append(any, &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_AllowMissing{}})
	return &jwtv3.JwtAuthentication{Providers: providers, Rules: []*jwtv3.RequirementRule{{
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		RequirementType: &jwtv3.RequirementRule_Requires{Requires: &jwtv3.JwtRequirement{RequiresType: &jwtv3.JwtRequirement_RequiresAny{
			RequiresAny: &jwtv3.JwtRequirementOrList{Requirements: any}}}}}}}
}

func inline(s string) *jwtv3.JwtProvider_LocalJwks {
	return &jwtv3.JwtProvider_LocalJwks{LocalJwks: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: s}}}
}

func TestVerify(t *testing.T) {
	good, other := newIssuer(t, "https://issuer.example"), newIssuer(t, "https://other.example")
	f, err := Compile(istioShape(map[string]*jwtv3.JwtProvider{"p": {Issuer: good.name, Audiences: []string{"profile"}, JwksSourceSpecifier: inline(good.jwks(t)),
		ForwardPayloadHeader: "X-Jwt-Payload", ClaimToHeaders: []*jwtv3.JwtClaimToHeader{{HeaderName: "X-Group", ClaimName: "group"}}}}))
	if err != nil {
		t.Fatal(err)
	}
	// A token signed by other's key but naming good as its issuer.
	forged := func() string {
		impostor := &issuer{key: other.key, kid: good.kid, name: good.name}
		return impostor.token(t, map[string]any{"aud": "profile"})
	}()
	for _, tc := range []struct {
		name, header, path string
		want               int
		why                string
	}{
		{"no token passes unauthenticated", "", "/x", 0, ""},
		{"a valid token", "Bearer " + good.token(t, map[string]any{"aud": "profile", "group": "admins"}), "/x", 0, ""},
		{"a valid token in access_token", "", "/x?access_token=" + good.token(t, map[string]any{"aud": "profile"}), 0, ""},
		{"bearer in lower case", "bearer " + good.token(t, map[string]any{"aud": "profile"}), "/x", 0, ""},
		{"expired", "Bearer " + good.token(t, map[string]any{"aud": "profile", "exp": time.Now().Add(-time.Hour).Unix()}), "/x", 401, "Jwt is expired"},
		{"not yet valid", "Bearer " + good.token(t, map[string]any{"aud": "profile", "nbf": time.Now().Add(time.Hour).Unix()}), "/x", 401, "Jwt not yet valid"},
		{"another audience", "Bearer " + good.token(t, map[string]any{"aud": "accounts"}), "/x", 401, "Audiences in Jwt are not allowed"},
		{"another issuer", "Bearer " + other.token(t, map[string]any{"aud": "profile"}), "/x", 401, "Jwt issuer is not configured"},
		{"signed by another key", "Bearer " + forged, "/x", 401, "Jwt verification fails"},
		{"garbage", "Bearer not.a.jwt", "/x", 401, ""},
		{"alg none", "Bearer eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwiYXVkIjoicHJvZmlsZSJ9.", "/x", 401, ""},
	} {
		res := f.Verify(&Request{Path: tc.path, Header: func(n string) (string, bool) {
			if n == "authorization" && tc.header != "" {
				return tc.header, true
			}
			return "", false
		}})
		if res.Status != tc.want || tc.why != "" && res.Body != tc.why {
			t.Errorf("%s: %d %q, want %d %q", tc.name, res.Status, res.Body, tc.want, tc.why)
		}
		if tc.name == "a valid token" {
			if len(res.Verified) != 1 || res.Verified[0].Principal != good.name+"/alice" || res.Verified[0].Claims["group"] != "admins" {
				t.Errorf("verified: %+v", res.Verified)
			}
			if len(res.Remove) != 1 || res.Remove[0] != "authorization" {
				t.Errorf("a token not forwarded is removed: %v", res.Remove)
			}
			set := map[string]string{}
			for _, s := range res.Set {
				set[s[0]] = s[1]
			}
			if set["x-group"] != "admins" || set["x-jwt-payload"] == "" {
				t.Errorf("headers set: %v", res.Set)
			}
		}
	}
	if _, err := Compile(&jwtv3.JwtAuthentication{Providers: map[string]*jwtv3.JwtProvider{"p": {Issuer: "x",
		JwksSourceSpecifier: &jwtv3.JwtProvider_RemoteJwks{RemoteJwks: &jwtv3.RemoteJwks{}}}}}); err == nil {
		t.Error("remote_jwks was accepted: the control plane sends keys inline")
	}
}
