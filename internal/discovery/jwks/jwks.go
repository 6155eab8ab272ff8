// Package jwks fetches the JSON Web Key Sets that RequestAuthentications
// name by jwksUri, as istiod does: the control plane fetches them and
// sends proxies the keys inline, so a proxy never reaches out to an
// issuer. Keys are refetched every Refresh (istiod's 20 minutes); a failed
// fetch keeps the last good keys and is retried sooner (after 2 s, then
// backing off to Retry). Until keys are
// known, proxies get a key set that verifies nothing: tokens are refused,
// requests without one pass as Istio's do.
package jwks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// None is the key set of an issuer whose keys are not known: it verifies
// no token.
const None = `{"keys":[]}`

// Resolver keeps the key sets of the jwksUris in use.
type Resolver struct {
	// Client fetches; nil uses one with a 5 s timeout.
	Client *http.Client
	// Refresh is how often keys are fetched again (default 20 min); Retry
	// how soon after a failure (default 1 min).
	Refresh, Retry time.Duration
	// OnChange is called when a key set changed, to push proxies.
	OnChange func()
	Log      *slog.Logger

	mu      sync.Mutex
	entries map[string]*entry
}

type entry struct {
	keys     string
	next     time.Time // when to fetch again
	used     time.Time
	fetching bool
	failures int // in a row: retries back off from 2 s to Retry
}

// Keys returns the last key set fetched from uri, or None while there is
// none; asking for a uri not seen yet starts fetching it.
func (r *Resolver) Keys(uri string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.entries == nil {
		r.entries = map[string]*entry{}
	}
	e := r.entries[uri]
	if e == nil {
		e = &entry{keys: None}
		r.entries[uri] = e
	}
	e.used = time.Now()
	if !e.fetching && !time.Now().Before(e.next) {
		e.fetching = true
		go r.fetch(uri)
	}
	return e.keys
}

// Run fetches again what is due, and forgets uris unused for an hour,
// until ctx ends.
func (r *Resolver) Run(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		r.mu.Lock()
		for uri, e := range r.entries {
			switch {
			case time.Since(e.used) > time.Hour:
				delete(r.entries, uri)
			case !e.fetching && !time.Now().Before(e.next):
				e.fetching = true
				go r.fetch(uri)
			}
		}
		r.mu.Unlock()
	}
}

func (r *Resolver) fetch(uri string) {
	keys, err := r.get(uri)
	r.mu.Lock()
	e := r.entries[uri]
	changed := false
	if e != nil {
		e.fetching = false
		if err != nil {
			// An issuer applied with its RequestAuthentication is often
			// not up yet: try again soon, then less often.
			e.failures++
			e.next = time.Now().Add(min(2*time.Second<<min(e.failures-1, 10), or(r.Retry, time.Minute)))
		} else {
			changed = e.keys != keys
			e.keys, e.next, e.failures = keys, time.Now().Add(or(r.Refresh, 20*time.Minute)), 0
		}
	}
	r.mu.Unlock()
	if err != nil {
		if r.Log != nil {
			r.Log.Warn("fetching a RequestAuthentication's jwksUri failed; its tokens are refused until it succeeds", "jwksUri", uri, "err", err)
		}
		return
	}
	if changed && r.OnChange != nil {
		r.OnChange()
	}
}

// get fetches and checks one key set.
func (r *Resolver) get(uri string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("jwksUri %q is not an http or https URL", uri)
	}
	c := r.Client
	if c == nil {
		c = &http.Client{Timeout: 5 * time.Second}
	}
	resp, err := c.Get(uri)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s answered %s", uri, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20+1))
	if err != nil {
		return "", err
	}
	if len(b) > 1<<20 {
		return "", errors.New("a key set over 1 MiB")
	}
	return Check(string(b))
}

// Check parses a key set (a jwksUri's answer or an inline jwks) and
// returns it compacted; a set without a usable key is an error.
func Check(s string) (string, error) {
	var set jose.JSONWebKeySet
	if err := json.Unmarshal([]byte(s), &set); err != nil {
		return "", fmt.Errorf("not a JSON Web Key Set: %w", err)
	}
	if len(set.Keys) == 0 {
		return "", errors.New("a JSON Web Key Set without keys")
	}
	for _, k := range set.Keys {
		if !k.Valid() || !k.IsPublic() {
			return "", fmt.Errorf("key %q is not a valid public key", k.KeyID)
		}
	}
	b, err := json.Marshal(set)
	return string(b), err
}

func or(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
