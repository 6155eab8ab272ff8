package demoapp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// IssuerHandler is the demo's token issuer, Istio's sample jwt-server in
// one: GET /jwks.json is the public key set a RequestAuthentication's
// jwksUri names, and GET /token?sub=NAME&aud=A[&aud=B][&groups=G...][&ttl=1h]
// mints a token signed with the key, issued by iss. It hands a token to
// anyone who asks: a demo of JWT policies, never an identity provider.
// The key lives as long as the process.
func IssuerHandler(iss string) (http.Handler, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	kid := fmt.Sprintf("demo-%d", time.Now().Unix())
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		return nil, err
	}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: kid, Algorithm: string(jose.ES256), Use: "sig"}}}
	mux := baseMux()
	mux.HandleFunc("GET /jwks.json", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, set) })
	mux.HandleFunc("GET /token", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		ttl := time.Hour
		if s := q.Get("ttl"); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil {
				fail(w, http.StatusBadRequest, fmt.Errorf("ttl: %w", err))
				return
			}
			ttl = d
		}
		now := time.Now()
		claims := map[string]any{"iss": iss, "sub": q.Get("sub"), "iat": now.Unix(), "exp": now.Add(ttl).Unix()}
		if claims["sub"] == "" {
			fail(w, http.StatusBadRequest, fmt.Errorf("sub is required, e.g. ?sub=alice"))
			return
		}
		if aud := q["aud"]; len(aud) > 0 {
			claims["aud"] = aud
		}
		if g := q["groups"]; len(g) > 0 {
			claims["groups"] = g
		}
		tok, err := jwt.Signed(signer).Claims(claims).Serialize()
		if err != nil {
			fail(w, http.StatusInternalServerError, err)
			return
		}
		w.Header().Set("Content-Type", "application/jwt")
		_, _ = w.Write([]byte(strings.TrimSpace(tok) + "\n"))
	})
	return mux, nil
}
