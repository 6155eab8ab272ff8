package check

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/demoapp"
)

// TestProbeCalls: the client retries errors (a sidecar not ready yet) and
// stops once every wanted cluster answered; a cluster that never answers
// leaves it calling until its timeout.
func TestProbeCalls(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := n.Add(1)
		if i <= 2 {
			http.Error(w, "no healthy upstream", http.StatusServiceUnavailable)
			return
		}
		t.Setenv("CLUSTER_NAME", map[bool]string{true: "a", false: "b"}[i%2 == 0])
		demoapp.ProfileHandler().ServeHTTP(w, r)
	}))
	defer srv.Close()
	start := time.Now()
	res := ProbeCalls(context.Background(), srv.URL+"/profile?id=1", []string{"a", "b"}, 10*time.Second, time.Millisecond)
	if len(res.Missing([]string{"a", "b"})) != 0 || res.Failed != 2 || res.LastError == "" || time.Since(start) > 5*time.Second {
		t.Errorf("%+v after %s", res, time.Since(start))
	}
	res = ProbeCalls(context.Background(), srv.URL+"/profile?id=1", []string{"a", "c"}, 300*time.Millisecond, 10*time.Millisecond)
	if m := res.Missing([]string{"a", "c"}); len(m) != 1 || m[0] != "c" || res.Answered["a"] == 0 {
		t.Errorf("%+v", res)
	}
	// Nothing listens: connection errors until the timeout.
	srv.Close()
	res = ProbeCalls(context.Background(), srv.URL+"/profile?id=1", []string{"a"}, 200*time.Millisecond, 10*time.Millisecond)
	if res.Failed == 0 || res.LastError == "" || len(res.Answered) != 0 {
		t.Errorf("%+v", res)
	}
}
