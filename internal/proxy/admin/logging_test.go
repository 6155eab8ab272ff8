package admin

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// istioctl proxy-config log: POST /logging lists the loggers, ?level=L
// sets them all, ?NAME=L one; unknown names and levels change nothing.
func TestLoggingAsEnvoysAdmin(t *testing.T) {
	level := new(slog.LevelVar)
	h := http.HandlerFunc((&Server{Level: level}).logging)
	do := func(method, target string) (int, string) {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(method, target, nil))
		return w.Code, w.Body.String()
	}
	if code, body := do(http.MethodPost, "/logging"); code != 200 || body != "active loggers:\n  isthmus: info\n" {
		t.Errorf("list: %d %q", code, body)
	}
	if code, _ := do(http.MethodGet, "/logging?level=debug"); code != http.StatusMethodNotAllowed || level.Level() != slog.LevelInfo {
		t.Errorf("GET changed the level or was allowed: %d %v", code, level.Level())
	}
	if code, body := do(http.MethodPost, "/logging?level=debug"); code != 200 || level.Level() != slog.LevelDebug || !strings.Contains(body, "isthmus: debug") {
		t.Errorf("level=debug: %d %q %v", code, body, level.Level())
	}
	if code, body := do(http.MethodPost, "/logging?isthmus=warning"); code != 200 || level.Level() != slog.LevelWarn || !strings.Contains(body, "isthmus: warning") {
		t.Errorf("isthmus=warning: %d %q", code, body)
	}
	for _, q := range []string{"http=debug", "level=loud", "level=trace&http=debug", "isthmus=trace&level=loud"} {
		if code, _ := do(http.MethodPost, "/logging?"+q); code != http.StatusNotFound || level.Level() != slog.LevelWarn {
			t.Errorf("%s: %d, level %v; want 404 and no change", q, code, level.Level())
		}
	}
	if _, body := do(http.MethodPost, "/logging?level=off"); !strings.Contains(body, "isthmus: off") {
		t.Errorf("off: %q", body)
	}
}
