// Package mergedmetrics is Istio's merged Prometheus endpoint
// (:15020/stats/prometheus, meshConfig.enablePrometheusMerge): one scrape
// gets the proxy's metrics and the application's, which the proxy fetches
// from where the pod's prometheus.io annotations said before injection
// pointed them at the proxy (ISTIO_PROMETHEUS_ANNOTATIONS).
package mergedmetrics

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Path is where the merged metrics are served.
const Path = "/stats/prometheus"

// App is where the application serves its metrics (nil: it does not).
type App struct {
	Port int
	Path string
}

// proxyPorts are the proxy's own: an app "served" there would make each
// scrape fetch itself (15020) or the proxy's metrics twice.
var proxyPorts = []int{15000, 15001, 15004, 15006, 15020, 15021, 15053, 15090}

// Parse reads ISTIO_PROMETHEUS_ANNOTATIONS, the pod's own prometheus.io
// annotations as the injector kept them ({"scrape":"true","port":"9090",
// "path":"/metrics"}). As Istio: merged unless scrape is "false"; no
// port is Prometheus's 80, no path /metrics.
func Parse(env string) (*App, error) {
	if env == "" {
		return nil, nil
	}
	var a struct{ Scrape, Port, Path string }
	if err := json.Unmarshal([]byte(env), &a); err != nil {
		return nil, fmt.Errorf("ISTIO_PROMETHEUS_ANNOTATIONS %q: %w", env, err)
	}
	if a.Scrape == "false" {
		return nil, nil
	}
	port, err := strconv.Atoi(a.Port)
	if a.Port == "" {
		port, err = 80, nil
	}
	if err != nil || port < 1 || port > 65535 {
		return nil, fmt.Errorf("ISTIO_PROMETHEUS_ANNOTATIONS: port %q is not a port number", a.Port)
	}
	if slices.Contains(proxyPorts, port) {
		return nil, fmt.Errorf("ISTIO_PROMETHEUS_ANNOTATIONS: port %d is the proxy's own, not the application's", port)
	}
	path := a.Path
	if path == "" {
		path = "/metrics"
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	return &App{Port: port, Path: path}, nil
}

const (
	// maxApp bounds what is read of the application's answer.
	maxApp = 32 << 20
	// guard marks the proxy's own fetch: a request that carries it (an app
	// that forwards to 15020) is answered without fetching again.
	guard = "X-Isthmus-Merged-Scrape"
	// concurrent scrapes at most; more wait for their turn.
	concurrent = 2
)

// Handler serves the proxy's metrics followed by the application's, as
// one valid text exposition: the proxy's Go runtime families (go_*,
// process_*) are left to its 15090 so the app's own keep their names, and
// the app's families that the proxy has or that claim Istio's or Envoy's
// names (istio_*, envoy_*) are dropped, so no app can forge the mesh's
// metrics. An application that does not answer (or answers what is not
// Prometheus's text format) costs its own metrics only, counted in
// istio_agent_scrape_failures_total (seen from the next scrape), as
// Istio's agent does.
func Handler(own prometheus.Gatherer, app *App, reg prometheus.Registerer, log *slog.Logger) http.Handler {
	failures := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_agent_scrape_failures_total", Help: "Failed scrapes of the application's metrics, by what failed."}, []string{"type"})
	if reg != nil {
		if err := reg.Register(failures); err != nil {
			if are, ok := err.(prometheus.AlreadyRegisteredError); ok {
				failures = are.ExistingCollector.(*prometheus.CounterVec)
			}
		}
	}
	client := &http.Client{
		Transport: &http.Transport{Proxy: nil, DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext},
		// A redirect is the app's answer, not somewhere the proxy goes.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	turns := make(chan struct{}, concurrent)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case turns <- struct{}{}:
			defer func() { <-turns }()
		case <-r.Context().Done():
			return
		}
		families, err := own.Gather()
		if err != nil {
			log.Warn("gather the proxy's metrics", "err", err)
		}
		mine := map[string]bool{}
		var out []*dto.MetricFamily
		for _, f := range families {
			if strings.HasPrefix(f.GetName(), "go_") || strings.HasPrefix(f.GetName(), "process_") {
				continue
			}
			mine[f.GetName()] = true
			out = append(out, f)
		}
		if app != nil && r.Header.Get(guard) == "" {
			theirs, err := scrape(r.Context(), client, app)
			if err != nil {
				failures.WithLabelValues("application").Inc()
				log.Debug("scrape the application's metrics", "port", app.Port, "path", app.Path, "err", err)
			}
			names := make([]string, 0, len(theirs))
			for n := range theirs {
				if !mine[n] && !strings.HasPrefix(n, "istio_") && !strings.HasPrefix(n, "envoy_") {
					names = append(names, n)
				}
			}
			sort.Strings(names)
			for _, n := range names {
				out = append(out, theirs[n])
			}
		}
		format := expfmt.NewFormat(expfmt.TypeTextPlain)
		w.Header().Set("Content-Type", string(format))
		enc := expfmt.NewEncoder(w, format)
		for _, f := range out {
			if err := enc.Encode(f); err != nil {
				return // the scraper went away
			}
		}
	})
}

// scrape fetches and parses the application's metrics from the pod's
// loopback.
func scrape(ctx context.Context, client *http.Client, app *App) (map[string]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort("127.0.0.1", strconv.Itoa(app.Port))+app.Path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	req.Header.Set(guard, "1")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	body := io.LimitReader(resp.Body, maxApp+1)
	counted := &countingReader{r: body}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(counted)
	if counted.n > maxApp {
		return nil, fmt.Errorf("more than %d bytes", maxApp)
	}
	if err != nil {
		return nil, fmt.Errorf("not Prometheus's text format: %w", err)
	}
	return families, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
