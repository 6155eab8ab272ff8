package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func run(t *testing.T, ctx context.Context, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = Execute(ctx, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestDashboardHelp(t *testing.T) {
	code, out, _ := run(t, context.Background(), "dashboard", "--help")
	if code != 0 {
		t.Fatalf("dashboard --help: exit %d", code)
	}
	for _, want := range []string{
		"--context", "--kubeconfig", "-i, --istioNamespace string", `(default "istio-system")`,
		"--address string", `(default "localhost")`, "-p, --port int",
		"app=istiod", "15014", "stale", "east-west gateways", "Istio metrics", "p50 and p99",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dashboard --help lacks %q:\n%s", want, out)
		}
	}
	if _, out, _ := run(t, context.Background(), "--help"); !strings.Contains(out, "\n  dashboard ") {
		t.Errorf("isthmus --help does not list dashboard:\n%s", out)
	}
}

func TestDashboardBadFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"dashboard", "controlz"}, "unknown command"},
		{[]string{"dashboard", "--port", "70000"}, "--port 70000"},
		{[]string{"dashboard", "-p", "-1"}, "--port -1"},
		{[]string{"dashboard", "-p", "x"}, "invalid argument"},
		{[]string{"dashboard", "--browser"}, "unknown flag"},
	} {
		code, _, stderr := run(t, context.Background(), c.args...)
		if code == 0 || !strings.Contains(stderr, c.want) {
			t.Errorf("isthmus %s: exit %d, %q; want an error with %q", strings.Join(c.args, " "), code, stderr, c.want)
		}
	}
}

// apiServer is a fake Kubernetes API server that answers pod lists with one
// control plane pod that is not running, and records what it was asked.
type apiServer struct {
	*httptest.Server
	mu   sync.Mutex
	asks []string
}

func newAPIServer(t *testing.T) *apiServer {
	s := &apiServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.asks = append(s.asks, r.Method+" "+r.URL.Path+"?"+r.URL.RawQuery)
		s.mu.Unlock()
		ns, ok := strings.CutPrefix(r.URL.Path, "/api/v1/namespaces/")
		ns, ok2 := strings.CutSuffix(ns, "/pods")
		if !ok || !ok2 {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[
			{"metadata":{"name":"istiod-7d9f","namespace":%q,"labels":{"app":"istiod"}},"status":{"phase":"Pending"}}]}`, ns)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *apiServer) asked() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.asks...)
}

// TestDashboardLooksForTheControlPlane: --kubeconfig, --context and -i name
// the cluster and namespace where the page's data is looked for, and a
// control plane that is not running is the data's error, saying so.
func TestDashboardLooksForTheControlPlane(t *testing.T) {
	first, second := newAPIServer(t), newAPIServer(t)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
current-context: first
clusters:
- name: first
  cluster: {server: %q}
- name: second
  cluster: {server: %q}
users:
- name: admin
  user: {token: t}
contexts:
- name: first
  context: {cluster: first, user: admin}
- name: second
  context: {cluster: second, user: admin}
`, first.URL, second.URL)
	if err := os.WriteFile(kubeconfig, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var stdout, stderr syncBuffer
	exited := make(chan int, 1)
	go func() {
		exited <- Execute(ctx, []string{"dashboard", "--kubeconfig", kubeconfig, "--context", "second", "-i", "mesh-system", "--address", "127.0.0.1", "-p", "0"}, &stdout, &stderr)
	}()
	var url string
	for url == "" && ctx.Err() == nil {
		url = strings.TrimSpace(stdout.String())
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.HasPrefix(url, "http://127.0.0.1:") || !strings.HasSuffix(url, "/dashboard/") {
		t.Fatalf("printed %q, want the page's address (stderr %q)", url, stderr.String())
	}
	resp, err := http.Get(url + "api/mesh")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError || !strings.Contains(string(body), "no running control plane") || !strings.Contains(string(body), "mesh-system") {
		t.Errorf("api/mesh answered %s %q: want no running control plane in mesh-system", resp.Status, body)
	}
	// A page elsewhere reaching it through a name rebound to 127.0.0.1.
	req, _ := http.NewRequest(http.MethodGet, url+"api/mesh", nil)
	req.Host = "attacker.example:80"
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Error(err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("a request for Host attacker.example: %s, want 403", resp.Status)
		}
	}
	if got := first.asked(); len(got) != 0 {
		t.Errorf("the first context's cluster was asked %v", got)
	}
	want := "GET /api/v1/namespaces/mesh-system/pods?labelSelector=app%3Distiod"
	if got := second.asked(); len(got) != 1 || got[0] != want {
		t.Errorf("the second context's cluster was asked %v, want %q", got, want)
	}
	cancel()
	if code := <-exited; code != 0 {
		t.Errorf("exit %d after Ctrl-C, want 0 (stderr %q)", code, stderr.String())
	}
}

// syncBuffer is a bytes.Buffer the command writes while the test reads.
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
