package jwks

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Keys are fetched once asked for, refreshed, kept through a failing
// issuer, and a change is announced; until the first fetch the key set
// verifies nothing.
func TestResolver(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	set, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	var failing atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if failing.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write(set)
	}))
	defer srv.Close()
	changed := make(chan struct{}, 4)
	r := &Resolver{Refresh: 50 * time.Millisecond, Retry: 50 * time.Millisecond, OnChange: func() { changed <- struct{}{} }}
	if got := r.Keys(srv.URL); got != None {
		t.Fatalf("before the first fetch: %s", got)
	}
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("no change announced after the fetch")
	}
	want, _ := Check(string(set))
	if got := r.Keys(srv.URL); got != want {
		t.Fatalf("keys: %s, want %s", got, want)
	}
	failing.Store(true)
	time.Sleep(200 * time.Millisecond)
	r.Keys(srv.URL) // due again: fetch fails
	time.Sleep(100 * time.Millisecond)
	if got := r.Keys(srv.URL); got != want {
		t.Fatalf("a failing issuer lost the last good keys: %s", got)
	}
	for _, bad := range []string{"file:///etc/passwd", "ftp://x/keys", "not a url"} {
		if _, err := r.get(bad); err == nil {
			t.Errorf("%s was fetched", bad)
		}
	}
	if _, err := Check(`{"keys":[]}`); err == nil {
		t.Error("an empty key set passed")
	}
}
