package proxy

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the proxy's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// meshConfig accessLogEncoding JSON: one JSON object per request, with
// Istio's default keys.
func TestAccessLogJSON(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer up.Close()
	var log syncBuffer
	_, front := startProxyWith(t, up.Listener.Addr().String(), nil, nil, proxySetup{opts: Options{AccessLog: &log, AccessLogJSON: true}})
	req, _ := http.NewRequest("GET", "http://"+front+"/shop?x=1", nil)
	req.Host = "shop.example"
	req.Header.Set("User-Agent", "test-agent")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	var line map[string]any
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline) && log.String() == ""; time.Sleep(10 * time.Millisecond) {
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(log.String())), &line); err != nil {
		t.Fatalf("not one JSON object: %q: %v", log.String(), err)
	}
	for k, want := range map[string]any{"method": "GET", "path": "/shop?x=1", "response_code": float64(200), "authority": "shop.example",
		"user_agent": "test-agent", "upstream_cluster": "up", "bytes_sent": float64(2)} {
		if line[k] != want {
			t.Errorf("%s = %v, want %v (line %v)", k, line[k], want, line)
		}
	}
	for _, k := range []string{"start_time", "duration", "downstream_remote_address", "requested_server_name", "x_forwarded_for"} {
		if _, ok := line[k]; !ok {
			t.Errorf("no key %s in %v", k, line)
		}
	}
}
