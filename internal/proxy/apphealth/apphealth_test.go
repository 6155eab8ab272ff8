package apphealth

import (
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestProbers(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" && r.Header.Get("X-Probe") == "yes" {
			return
		}
		http.Error(w, "no", http.StatusInternalServerError)
	}))
	defer app.Close()
	_, port, _ := net.SplitHostPort(app.Listener.Addr().String())
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	_, closedPort, _ := net.SplitHostPort(closed.Addr().String())
	closed.Close()
	p, err := Parse(`{
	  "/app-health/app/readyz": {"httpGet": {"path": "/healthz", "port": ` + port + `, "httpHeaders": [{"name": "X-Probe", "value": "yes"}]}, "timeoutSeconds": 1},
	  "/app-health/app/livez": {"httpGet": {"path": "/other", "port": ` + port + `}},
	  "/app-health/app/startupz": {"tcpSocket": {"port": ` + port + `}},
	  "/app-health/quoted/readyz": {"tcpSocket": {"port": "` + port + `"}},
	  "/app-health/named/readyz": {"tcpSocket": {"port": "http"}},
	  "/app-health/tls/readyz": {"httpGet": {"path": "/healthz", "port": ` + port + `, "scheme": "HTTPS"}},
	  "/app-health/down/readyz": {"tcpSocket": {"port": ` + closedPort + `}}}`)
	if err != nil {
		t.Fatal(err)
	}
	h := p.Handler()
	for path, want := range map[string]int{"/app-health/app/readyz": 200, "/app-health/app/livez": 500, "/app-health/app/startupz": 200,
		"/app-health/quoted/readyz": 200, "/app-health/named/readyz": 503, "/app-health/tls/readyz": 503,
		"/app-health/down/readyz": 503, "/app-health/none/readyz": 404} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != want {
			t.Errorf("%s: %d, want %d (%s)", path, rec.Code, want, rec.Body.String())
		}
	}
	if _, err := Parse("{nope"); err == nil {
		t.Error("a broken ISTIO_KUBE_APP_PROBERS must be an error")
	}
}
