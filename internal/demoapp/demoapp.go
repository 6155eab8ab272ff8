// Package demoapp is the walkthrough's application: accounts (balance by
// id), profile (name by id), dashboard (both, aggregated) and sleep (a
// client to exec curl from). It is an ordinary app that knows nothing of
// the mesh; every answer says which cluster and pod served it.
package demoapp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Origin identifies who answered, so a caller can see load balancing.
type Origin struct {
	Cluster string `json:"cluster,omitempty"`
	Pod     string `json:"pod"`
	Node    string `json:"node,omitempty"`
}

func origin() Origin {
	return Origin{Cluster: os.Getenv("CLUSTER_NAME"), Pod: os.Getenv("HOSTNAME"), Node: os.Getenv("NODE_NAME")}
}

// Profile is profile's answer.
type Profile struct {
	ID       int    `json:"id"`
	Name     string `json:"name"`
	ServedBy Origin `json:"servedBy"`
	// Caller is the X-Forwarded-Client-Cert header a sidecar added, if any.
	Caller string `json:"callerXFCC,omitempty"`
}

// Account is accounts' answer.
type Account struct {
	ID       int     `json:"id"`
	Balance  float64 `json:"balance"`
	ServedBy Origin  `json:"servedBy"`
	Caller   string  `json:"callerXFCC,omitempty"`
}

// Dashboard is dashboard's answer: profile and account, with who served each.
type Dashboard struct {
	ID       int     `json:"id"`
	Name     string  `json:"name"`
	Balance  float64 `json:"balance"`
	Profile  Origin  `json:"profileServedBy"`
	Accounts Origin  `json:"accountsServedBy"`
	ServedBy Origin  `json:"servedBy"`
}

var names = []string{"Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov", "Ken Thompson", "Radia Perlman", "Leslie Lamport"}

// NameOf and BalanceOf are the demo's fixed data, so tests know the answers.
func NameOf(id int) string     { return names[((id%len(names))+len(names))%len(names)] }
func BalanceOf(id int) float64 { return float64(id*1000+250) / 10 }

func idParam(r *http.Request) (int, error) {
	id, err := strconv.Atoi(r.URL.Query().Get("id"))
	if err != nil {
		return 0, fmt.Errorf("query parameter id must be an integer, e.g. ?id=4")
	}
	return id, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

// ProfileHandler serves GET /profile?id=N.
func ProfileHandler() http.Handler {
	mux := baseMux()
	mux.HandleFunc("GET /profile", func(w http.ResponseWriter, r *http.Request) {
		id, err := idParam(r)
		if err != nil {
			fail(w, http.StatusBadRequest, err)
			return
		}
		if !slow(w, r) {
			return
		}
		writeJSON(w, http.StatusOK, Profile{ID: id, Name: NameOf(id), ServedBy: origin(), Caller: r.Header.Get("X-Forwarded-Client-Cert")})
	})
	return mux
}

// slow waits ?delay=DURATION (at most 10 s) before answering, for trying
// timeouts and circuit breakers; false when the request is over.
func slow(w http.ResponseWriter, r *http.Request) bool {
	v := r.URL.Query().Get("delay")
	if v == "" {
		return true
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 || d > 10*time.Second {
		fail(w, http.StatusBadRequest, fmt.Errorf("delay %q: want a duration up to 10s, such as 500ms", v))
		return false
	}
	select {
	case <-time.After(d):
		return true
	case <-r.Context().Done():
		return false
	}
}

// AccountsHandler serves GET /accounts?id=N.
func AccountsHandler() http.Handler {
	mux := baseMux()
	mux.HandleFunc("GET /accounts", func(w http.ResponseWriter, r *http.Request) {
		id, err := idParam(r)
		if err != nil {
			fail(w, http.StatusBadRequest, err)
			return
		}
		writeJSON(w, http.StatusOK, Account{ID: id, Balance: BalanceOf(id), ServedBy: origin(), Caller: r.Header.Get("X-Forwarded-Client-Cert")})
	})
	return mux
}

// DashboardHandler serves GET /dashboard?id=N by calling profile and accounts.
func DashboardHandler(profileURL, accountsURL string) http.Handler {
	client := &http.Client{Timeout: 10 * time.Second}
	mux := baseMux()
	mux.HandleFunc("GET /dashboard", func(w http.ResponseWriter, r *http.Request) {
		id, err := idParam(r)
		if err != nil {
			fail(w, http.StatusBadRequest, err)
			return
		}
		var p Profile
		if err := getJSON(r, client, fmt.Sprintf("%s/profile?id=%d", profileURL, id), &p); err != nil {
			fail(w, http.StatusBadGateway, fmt.Errorf("profile: %w", err))
			return
		}
		var a Account
		if err := getJSON(r, client, fmt.Sprintf("%s/accounts?id=%d", accountsURL, id), &a); err != nil {
			fail(w, http.StatusBadGateway, fmt.Errorf("accounts: %w", err))
			return
		}
		writeJSON(w, http.StatusOK, Dashboard{ID: id, Name: p.Name, Balance: a.Balance, Profile: p.ServedBy, Accounts: a.ServedBy, ServedBy: origin()})
	})
	return mux
}

// getJSON GETs url on behalf of in, carrying in's trace context on.
func getJSON(in *http.Request, c *http.Client, url string, v any) error {
	req, err := http.NewRequestWithContext(in.Context(), http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	for _, h := range traceHeaders {
		if v := in.Header.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d: %s", url, resp.StatusCode, body)
	}
	return json.Unmarshal(body, v)
}

// The demo app's own metrics, on /metrics: what a Prometheus scrape of
// its pod finds beside the proxy's when the proxy merges them (15020).
var (
	appMetrics = prometheus.NewRegistry()
	answered   = promauto.With(appMetrics).NewCounter(prometheus.CounterOpts{Name: "demoapp_requests_total", Help: "Requests the demo app answered (not /healthz or /metrics)."})
)

func baseMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.Handle("GET /metrics", promhttp.HandlerFor(appMetrics, promhttp.HandlerOpts{}))
	return mux
}

// counted counts the requests h answers, but for health and metrics.
func counted(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" && r.URL.Path != "/metrics" {
			answered.Inc()
		}
		h.ServeHTTP(w, r)
	})
}

// Serve runs h on addr until ctx ends, then drains for up to 5 s.
func Serve(ctx context.Context, addr string, h http.Handler, log *slog.Logger) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	// HTTP/2 without TLS too: the trace collector takes gRPC.
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: counted(h), ReadHeaderTimeout: 10 * time.Second, Protocols: &protos}
	log.Info("serving", "addr", l.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}
