// Package mergedmetrics is Istio's merged Prometheus endpoint
// (:15020/stats/prometheus, meshConfig.enablePrometheusMerge): one scrape
// gets the proxy's metrics and the application's, which the proxy fetches
// from where the pod's prometheus.io annotations said before injection
// pointed them at the proxy (ISTIO_PROMETHEUS_ANNOTATIONS).
package mergedmetrics

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// Path is where the merged metrics are served.
const Path = "/stats/prometheus"

// App is where the application serves its metrics (nil: it does not).
type App struct {
	Port int
	Path string
}

// Parse reads ISTIO_PROMETHEUS_ANNOTATIONS, the pod's own prometheus.io
// annotations as the injector kept them ({"scrape":"true","port":"9090",
// "path":"/metrics"}); no annotations or scrape other than "true" is no
// application to scrape.
func Parse(env string) (*App, error) {
	if env == "" {
		return nil, nil
	}
	var a struct{ Scrape, Port, Path string }
	if err := json.Unmarshal([]byte(env), &a); err != nil {
		return nil, fmt.Errorf("ISTIO_PROMETHEUS_ANNOTATIONS %q: %w", env, err)
	}
	if a.Scrape != "true" {
		return nil, nil
	}
	port, err := strconv.Atoi(a.Port)
	if a.Port == "" {
		port, err = 80, nil // Prometheus's default for a pod without prometheus.io/port
	}
	if err != nil || port < 1 || port > 65535 {
		return nil, fmt.Errorf("ISTIO_PROMETHEUS_ANNOTATIONS: port %q is not a port number", a.Port)
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

// maxApp bounds what is read of the application's answer.
const maxApp = 32 << 20

// Handler serves the proxy's metrics (text format) followed by the
// application's as it answered them. An application that does not answer
// costs its own metrics only: the proxy's are served and the failure is
// counted in istio_agent_scrape_failures_total, as Istio's agent does.
func Handler(own prometheus.Gatherer, app *App, reg prometheus.Registerer, log *slog.Logger) http.Handler {
	failures := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_agent_scrape_failures_total", Help: "Failed scrapes of the application's metrics, by what failed."}, []string{"type"})
	if reg != nil {
		if err := reg.Register(failures); err != nil {
			if are, ok := err.(prometheus.AlreadyRegisteredError); ok {
				failures = are.ExistingCollector.(*prometheus.CounterVec)
			}
		}
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var out bytes.Buffer
		families, err := own.Gather()
		if err != nil {
			log.Warn("gather the proxy's metrics", "err", err)
		}
		enc := expfmt.NewEncoder(&out, expfmt.NewFormat(expfmt.TypeTextPlain))
		for _, f := range families {
			if err := enc.Encode(f); err != nil {
				failures.WithLabelValues("envoy").Inc()
				break
			}
		}
		if app != nil {
			b, err := scrape(r.Context(), client, app)
			if err != nil {
				failures.WithLabelValues("application").Inc()
				log.Debug("scrape the application's metrics", "port", app.Port, "path", app.Path, "err", err)
			} else {
				if out.Len() > 0 && len(b) > 0 {
					out.WriteByte('\n')
				}
				out.Write(b)
			}
		}
		w.Header().Set("Content-Type", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
		_, _ = w.Write(out.Bytes())
	})
}

// scrape fetches the application's metrics from the pod's loopback.
func scrape(ctx context.Context, client *http.Client, app *App) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort("127.0.0.1", strconv.Itoa(app.Port))+app.Path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxApp+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxApp {
		return nil, fmt.Errorf("more than %d bytes", maxApp)
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		b = append(b, '\n')
	}
	return b, nil
}
