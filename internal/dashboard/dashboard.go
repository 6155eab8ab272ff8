// Package dashboard is the control plane's live picture of the mesh: a page
// on the monitoring port (15014) at /dashboard/ that shows the clusters
// grouped by network, their east-west gateways, the workloads and the
// request and error rates between them, and how fast configuration reaches
// the proxies. The page is one embedded HTML file (inline CSS and script, no
// external URL, so it works offline and behind a port-forward); it polls
// /dashboard/api/mesh, the JSON document Mesh, every second.
package dashboard

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"regexp"
	"strings"
	"time"
)

// Mesh is the document /dashboard/api/mesh answers: the mesh as the control
// plane sees it at Time.
type Mesh struct {
	// Time is when the data was taken.
	Time time.Time `json:"time"`
	// Clusters are every cluster the control plane watches, its own and one
	// per remote secret.
	Clusters []Cluster `json:"clusters"`
	// Gateways are the east-west gateways of every cluster.
	Gateways []Gateway `json:"gateways"`
	// Workloads are the workloads with sidecars, per cluster.
	Workloads []Workload `json:"workloads"`
	// Edges are the request rates between workloads, from the sidecars'
	// Istio metrics.
	Edges []Edge `json:"edges"`
	// Convergence is how long configuration took to reach the proxies.
	Convergence Convergence `json:"convergence"`
}

// State is a cluster's sync state, as remote-clusters prints it.
type State string

// The states of a cluster.
const (
	// StateSyncing: the control plane is reading the cluster for the first time.
	StateSyncing State = "syncing"
	// StateSynced: the cluster is read and followed.
	StateSynced State = "synced"
	// StateTimeout: not synced in time, served with what was read so far.
	StateTimeout State = "timeout"
	// StateStale: its API server stopped answering; what was last read is
	// served, and no longer follows the cluster.
	StateStale State = "stale"
	// StateError: the cluster cannot be read (Cluster.Error says why).
	StateError State = "error"
)

// Cluster is one cluster of the mesh.
type Cluster struct {
	// ID is the cluster's name in the mesh (its remote secret's cluster ID).
	ID string `json:"id"`
	// Network is the network the cluster's pods are on.
	Network string `json:"network"`
	// Primary is true for a cluster that runs the control plane.
	Primary bool `json:"primary"`
	// State is synced, syncing, timeout, stale or error.
	State State `json:"state"`
	// StaleSince is when the cluster's API server stopped answering, for a
	// stale cluster; null otherwise.
	StaleSince *time.Time `json:"staleSince"`
	// Error is why the cluster cannot be read, for state error.
	Error string `json:"error"`
}

// Gateway is an east-west gateway.
type Gateway struct {
	// Cluster is the ID of the gateway's cluster.
	Cluster string `json:"cluster"`
	// Network is the network the gateway admits traffic into.
	Network string `json:"network"`
	// Namespace and Name are the gateway's Service.
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Addresses are the addresses other networks reach it at (IPs or
	// host names).
	Addresses []string `json:"addresses"`
	// Ready is true when the gateway has a ready pod and an address.
	Ready bool `json:"ready"`
}

// Workload is a workload (the pods of a Deployment or alike) of a cluster.
type Workload struct {
	Cluster   string `json:"cluster"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Proxies is how many of its sidecars are connected to the control plane.
	Proxies int `json:"proxies"`
}

// Endpoint is one end of an edge. An empty Workload means the workload is
// not known (a caller without a sidecar, say).
type Endpoint struct {
	Cluster   string `json:"cluster"`
	Namespace string `json:"namespace"`
	Workload  string `json:"workload"`
	// Service is the service host called, on a destination.
	Service string `json:"service,omitempty"`
}

// Edge is the traffic from one workload to another.
type Edge struct {
	Source      Endpoint `json:"source"`
	Destination Endpoint `json:"destination"`
	// RPS is requests per second.
	RPS float64 `json:"rps"`
	// ErrorRate is the share, 0 to 1, of responses that were 5xx or failed.
	ErrorRate float64 `json:"errorRate"`
	// Reporter is whose view the rates are: "source" (the caller's
	// sidecar) or "destination" (the callee's, for a caller whose sidecar
	// does not report the edge).
	Reporter string `json:"reporter,omitempty"`
}

// Convergence is the distribution of the time from a configuration change to
// the proxies acknowledging it.
type Convergence struct {
	P50Seconds float64 `json:"p50Seconds"`
	P99Seconds float64 `json:"p99Seconds"`
	// Samples is how many pushes the quantiles are of.
	Samples int `json:"samples"`
}

// Source gives the current Mesh.
type Source interface {
	Mesh(ctx context.Context) (*Mesh, error)
}

// SourceFunc makes a function a Source.
type SourceFunc func(ctx context.Context) (*Mesh, error)

// Mesh calls f.
func (f SourceFunc) Mesh(ctx context.Context) (*Mesh, error) { return f(ctx) }

//go:embed page.html
var page []byte

// contentSecurityPolicy lets the page run only its own inline script and
// style (by hash) and fetch only from its own origin: a name that slipped
// through unescaped still could not run or load anything.
var contentSecurityPolicy = func() string {
	hashes := func(tag string) string {
		re := regexp.MustCompile(`(?s)<` + tag + `>(.*?)</` + tag + `>`)
		var out []string
		for _, m := range re.FindAllSubmatch(page, -1) {
			sum := sha256.Sum256(m[1])
			out = append(out, "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'")
		}
		return strings.Join(out, " ")
	}
	return "default-src 'none'; script-src " + hashes("script") + "; style-src " + hashes("style") +
		"; connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}()

// Handler serves the page at /dashboard/ and its data at
// /dashboard/api/mesh; /dashboard redirects to /dashboard/. Mount it at both
// "/dashboard" and "/dashboard/" of the monitoring mux. Every other path is
// 404, and methods other than GET and HEAD are 405. The page's links are
// relative, so it also works under a path prefix (http.StripPrefix).
func Handler(src Source) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var serve func(http.ResponseWriter, *http.Request)
		switch r.URL.Path {
		case "/dashboard":
			serve = redirect
		case "/dashboard/":
			serve = servePage
		case "/dashboard/api/mesh":
			serve = func(w http.ResponseWriter, r *http.Request) { serveMesh(w, r, src) }
		default:
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed: use GET", http.StatusMethodNotAllowed)
			return
		}
		serve(w, r)
	})
}

// redirect sends /dashboard to /dashboard/ with a relative Location, so
// that a path prefix in front of the control plane is kept.
func redirect(w http.ResponseWriter, r *http.Request) {
	loc := "dashboard/"
	if r.URL.RawQuery != "" {
		loc += "?" + r.URL.RawQuery
	}
	w.Header().Set("Location", loc)
	w.WriteHeader(http.StatusMovedPermanently)
}

func servePage(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
	w.Write(page)
}

func serveMesh(w http.ResponseWriter, r *http.Request, src Source) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	m, err := src.Mesh(r.Context())
	if err == nil && m == nil {
		err = fmt.Errorf("no mesh data")
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(filled(m)); err != nil {
		http.Error(w, "encoding the mesh: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h.Set("Content-Type", "application/json")
	w.Write(buf.Bytes())
}

// filled is m with empty lists for nil ones, so that the document always
// has its arrays (never null), and 0 for rates and quantiles that are not
// numbers (a rate of nothing, a quantile of no samples), which JSON cannot
// carry. The Source's Mesh is not changed.
func filled(m *Mesh) *Mesh {
	c := *m
	c.Clusters = orEmpty(c.Clusters)
	c.Workloads = orEmpty(c.Workloads)
	c.Gateways = make([]Gateway, len(m.Gateways))
	for i, g := range m.Gateways {
		g.Addresses = orEmpty(g.Addresses)
		c.Gateways[i] = g
	}
	c.Edges = make([]Edge, len(m.Edges))
	for i, e := range m.Edges {
		e.RPS, e.ErrorRate = finite(e.RPS), finite(e.ErrorRate)
		c.Edges[i] = e
	}
	c.Convergence.P50Seconds = finite(c.Convergence.P50Seconds)
	c.Convergence.P99Seconds = finite(c.Convergence.P99Seconds)
	return &c
}

func finite(f float64) float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0
	}
	return f
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
