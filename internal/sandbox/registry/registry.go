// Package registry is the sandbox's OCI registry on the internet segment:
// go-containerregistry's registry with its blobs on disk and a journal of
// the manifests pushed, replayed at start, so images survive a restart of
// the sandbox. `make demo` pushes isthmus's images into it; the nodes pull
// from it as the mirror of docker.io.
package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	ggcr "github.com/google/go-containerregistry/pkg/registry"
)

// Server serves the registry API over plain HTTP (the sandbox's nodes list
// it as an insecure mirror).
type Server struct {
	// Dir holds blobs/ and manifests.jsonl.
	Dir    string
	Listen string
	Log    *slog.Logger

	mu      sync.Mutex // serializes journal appends
	handler http.Handler
}

// entry is one pushed manifest, as the journal keeps it.
type entry struct {
	Repo      string `json:"repo"`
	Ref       string `json:"ref"`
	MediaType string `json:"mediaType"`
	Body      []byte `json:"body"`
}

var manifestPath = regexp.MustCompile(`^/v2/(.+)/manifests/([^/]+)$`)

func (s *Server) journal() string { return filepath.Join(s.Dir, "manifests.jsonl") }

// Handler is the registry with its state loaded from Dir.
func (s *Server) Handler() (http.Handler, error) {
	if err := os.MkdirAll(filepath.Join(s.Dir, "blobs"), 0o755); err != nil {
		return nil, err
	}
	s.handler = ggcr.New(
		ggcr.WithBlobHandler(ggcr.NewDiskBlobHandler(filepath.Join(s.Dir, "blobs"))),
		ggcr.Logger(log.New(io.Discard, "", 0)),
	)
	if err := s.replay(); err != nil {
		return nil, err
	}
	return http.HandlerFunc(s.serve), nil
}

func (s *Server) replay() error {
	b, err := os.ReadFile(s.journal())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	n := 0
	for line := range bytes.Lines(b) {
		var e entry
		if err := json.Unmarshal(line, &e); err != nil {
			// A line cut short by a crash mid-append is the last one.
			s.Log.Warn("registry journal: skipping an unreadable line", "err", err)
			continue
		}
		req := httptest.NewRequest(http.MethodPut, "/v2/"+e.Repo+"/manifests/"+e.Ref, bytes.NewReader(e.Body))
		req.Header.Set("Content-Type", e.MediaType)
		rec := httptest.NewRecorder()
		s.handler.ServeHTTP(rec, req)
		if rec.Code != http.StatusCreated {
			s.Log.Warn("registry journal: manifest not restored", "repo", e.Repo, "ref", e.Ref, "status", rec.Code, "body", rec.Body.String())
			continue
		}
		n++
	}
	s.Log.Info("registry: manifests restored", "count", n)
	return nil
}

// serve passes requests to the registry and journals every manifest it accepts.
func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	m := manifestPath.FindStringSubmatch(r.URL.Path)
	if r.Method != http.MethodPut || m == nil {
		s.handler.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	rec := httptest.NewRecorder()
	s.handler.ServeHTTP(rec, r)
	if rec.Code == http.StatusCreated {
		if err := s.append(entry{Repo: m[1], Ref: m[2], MediaType: r.Header.Get("Content-Type"), Body: body}); err != nil {
			s.Log.Error("registry journal: append failed; this manifest will not survive a restart", "repo", m[1], "ref", m[2], "err", err)
		}
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

func (s *Server) append(e entry) error {
	line, err := json.Marshal(e)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f, err := os.OpenFile(s.journal(), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	h, err := s.Handler()
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	ln, err := net.Listen("tcp", s.Listen)
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	s.Log.Info("registry serving", "addr", ln.Addr().String(), "dir", s.Dir)
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
