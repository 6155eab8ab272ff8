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
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func TestParse(t *testing.T) {
	for env, want := range map[string]*App{
		"":                                 nil,
		`{"scrape":"false","port":"9090"}`: nil,
		`{"scrape":"true","port":"9090"}`:  {9090, "/metrics"},
		`{"port":"8080","path":"stats"}`:   {8080, "/stats"},
		`{"scrape":"true","path":"/m"}`:    {80, "/m"},
	} {
		got, err := Parse(env)
		if err != nil || (got == nil) != (want == nil) || (got != nil && *got != *want) {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", env, got, err, want)
		}
	}
	for _, bad := range []string{`{"scrape":"true","port":"http"}`, `{"scrape":"true","port":"70000"}`, `not json`,
		`{"scrape":"true","port":"15020"}`, `{"scrape":"true","port":"15090"}`} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q): no error", bad)
		}
	}
}

// One scrape of 15020 is one valid exposition of the proxy's metrics and
// the app's: the app keeps its runtime metrics' names, cannot forge the
// mesh's, cannot send the proxy elsewhere, and an app that fails costs
// its own metrics only, counted.
func TestMergesTheAppsMetrics(t *testing.T) {
	own := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "istio_requests_total", Help: "h"})
	own.MustRegister(c, collectors.NewGoCollector())
	c.Add(3)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fetched := 0
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetched++
		switch r.URL.Path {
		case "/metrics":
			io.WriteString(w, "# TYPE app_orders_total counter\napp_orders_total 7\n# TYPE go_goroutines gauge\ngo_goroutines 12345\n"+
				"# TYPE istio_requests_total counter\nistio_requests_total 999\n")
		case "/redirect":
			http.Redirect(w, r, "http://127.0.0.1:1/elsewhere", http.StatusFound)
		case "/openmetrics":
			io.WriteString(w, "# TYPE x info\nx_info{a=\"b\"} 1\n# EOF\n")
		default:
			http.NotFound(w, r)
		}
	})}
	go app.Serve(l)
	defer app.Close()
	port := l.Addr().(*net.TCPAddr).Port
	scrape := func(h http.Handler, guarded bool) string {
		t.Helper()
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", Path, nil)
		if guarded {
			req.Header.Set(guard, "1")
		}
		h.ServeHTTP(rec, req)
		parser := expfmt.NewTextParser(model.UTF8Validation)
		if _, err := parser.TextToMetricFamilies(strings.NewReader(rec.Body.String())); err != nil {
			t.Errorf("merged output is not one valid exposition: %v\n%s", err, rec.Body.String())
		}
		return rec.Body.String()
	}
	log := slog.New(slog.DiscardHandler)
	body := scrape(Handler(own, &App{Port: port, Path: "/metrics"}, own, log), false)
	for _, want := range []string{"istio_requests_total 3\n", "app_orders_total 7\n", "go_goroutines 12345\n"} {
		if !strings.Contains(body, want) {
			t.Errorf("merged metrics lack %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "istio_requests_total 999") {
		t.Errorf("the app forged the mesh's metric:\n%s", body)
	}
	for _, path := range []string{"/missing", "/redirect", "/openmetrics"} {
		failing := Handler(own, &App{Port: port, Path: path}, own, log)
		scrape(failing, false)
		body = scrape(failing, false)
		if !strings.Contains(body, "istio_requests_total 3") || strings.Contains(body, "app_orders_total") || strings.Contains(body, "x_info") {
			t.Errorf("an app at %s:\n%s", path, body)
		}
	}
	if !strings.Contains(body, `istio_agent_scrape_failures_total{type="application"}`) {
		t.Errorf("failures not counted:\n%s", body)
	}
	before := fetched
	scrape(Handler(own, &App{Port: port, Path: "/metrics"}, own, log), true)
	if fetched != before {
		t.Errorf("a scrape carrying the proxy's own guard fetched the app again")
	}
	if body := scrape(Handler(own, nil, own, log), false); !strings.Contains(body, "istio_requests_total 3") {
		t.Errorf("no app:\n%s", body)
	}
}
