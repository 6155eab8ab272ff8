package mergedmetrics

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestParse(t *testing.T) {
	for env, want := range map[string]*App{
		"":                                 nil,
		`{"scrape":"false","port":"9090"}`: nil,
		`{"scrape":"true","port":"9090"}`:  {9090, "/metrics"},
		`{"scrape":"true","port":"8080","path":"stats"}`: {8080, "/stats"},
		`{"scrape":"true","path":"/m"}`:                  {80, "/m"},
	} {
		got, err := Parse(env)
		if err != nil || (got == nil) != (want == nil) || (got != nil && *got != *want) {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", env, got, err, want)
		}
	}
	for _, bad := range []string{`{"scrape":"true","port":"http"}`, `{"scrape":"true","port":"70000"}`, `not json`} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q): no error", bad)
		}
	}
}

// One scrape of 15020 has the proxy's metrics and the app's; an app that
// does not answer costs its own metrics only, and is counted.
func TestMergesTheAppsMetrics(t *testing.T) {
	own := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "istio_requests_total", Help: "h"})
	own.MustRegister(c)
	c.Add(3)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, "# TYPE app_orders_total counter\napp_orders_total 7")
	})}
	go app.Serve(l)
	defer app.Close()
	port := l.Addr().(*net.TCPAddr).Port
	scrape := func(h http.Handler) string {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", Path, nil))
		return rec.Body.String()
	}
	log := slog.New(slog.DiscardHandler)
	body := scrape(Handler(own, &App{Port: port, Path: "/metrics"}, own, log))
	if !strings.Contains(body, "istio_requests_total 3") || !strings.Contains(body, "app_orders_total 7\n") {
		t.Errorf("merged metrics:\n%s", body)
	}
	failing := Handler(own, &App{Port: port, Path: "/missing"}, own, log)
	scrape(failing)
	body = scrape(failing)
	if !strings.Contains(body, "istio_requests_total 3") || strings.Contains(body, "app_orders_total") ||
		!strings.Contains(body, `istio_agent_scrape_failures_total{type="application"} 1`) {
		t.Errorf("an app that fails:\n%s", body)
	}
	if body := scrape(Handler(own, nil, own, log)); !strings.Contains(body, "istio_requests_total 3") {
		t.Errorf("no app:\n%s", body)
	}
}
