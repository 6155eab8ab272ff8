// Package browser drives a page in Debian's Chromium, headless, for tests
// (chromedp over the DevTools protocol): open a URL, evaluate JavaScript,
// wait for a condition, and collect what the page threw or its
// Content-Security-Policy blocked.
package browser

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// Chromium is Debian's browser (apt-get install chromium).
const Chromium = "/usr/bin/chromium"

// Page is one open page.
type Page struct {
	t   testing.TB
	ctx context.Context

	mu       sync.Mutex
	problems []string
	seen     map[string]bool
}

// Open starts a browser with a fresh profile, opens url and stops the
// browser when the test ends. The flags keep Chromium off the network
// (this machine's is closed; it would try Google's hosts at every start).
func Open(t testing.TB, url string, within time.Duration) *Page {
	t.Helper()
	if _, err := os.Stat(Chromium); err != nil {
		t.Fatalf("the browser test needs Debian's Chromium at %s (%v): run `apt-get install chromium`", Chromium, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), within)
	var output buffer
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(Chromium),
		chromedp.Headless,
		chromedp.NoSandbox, // root, in a container
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.WindowSize(1400, 1000),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.CombinedOutput(&output),
	)
	bctx, cancelBrowser := chromedp.NewContext(allocCtx)
	// Registered after TempDir's: runs before it, so the browser has
	// stopped when its profile is removed.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("chromium's output:\n%s", output.String())
		}
		cancelBrowser()
		cancelAlloc()
		cancel()
	})
	p := &Page{t: t, ctx: bctx, seen: map[string]bool{}}
	if err := chromedp.Listen(bctx, p.note); err != nil {
		t.Fatalf("starting %s: %v", Chromium, err)
	}
	if err := chromedp.Do(bctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("opening %s: %v", url, err)
	}
	return p
}

// note keeps the page's exceptions and what its Content-Security-Policy
// blocked, each once (a page that polls repeats itself).
func (p *Page) note(ev any) {
	var s string
	switch ev := ev.(type) {
	case *runtime.EventExceptionThrown:
		s = "exception: " + ev.ExceptionDetails.Text
		if o := ev.ExceptionDetails.Exception; o != nil {
			s += " " + o.Description
		}
	case *log.EventEntryAdded:
		if strings.Contains(ev.Entry.Text, "Content Security Policy") {
			s = "blocked by the Content-Security-Policy: " + ev.Entry.Text
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if s != "" && !p.seen[s] {
		p.seen[s] = true
		p.problems = append(p.problems, s)
	}
}

// Problems are the page's exceptions and blocked loads so far.
func (p *Page) Problems() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.problems...)
}

// Eval evaluates a JavaScript expression in the page.
func (p *Page) Eval(expr string) any {
	p.t.Helper()
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[any](expr))
	if err != nil {
		p.t.Fatalf("%s: %v", expr, err)
	}
	return v
}

// Wait polls until the expression is true, failing the test after within
// with what the page shows.
func (p *Page) Wait(what, expr string, within time.Duration) {
	p.t.Helper()
	wctx, cancel := context.WithTimeout(p.ctx, within)
	defer cancel()
	var last error
	for {
		ok, err := chromedp.Run(wctx, chromedp.Evaluate[bool]("!!("+expr+")"))
		if err == nil && ok {
			return
		}
		if err != nil {
			last = err
		}
		select {
		case <-wctx.Done():
			p.t.Fatalf("waiting for %s: %v (%v); the page says: %v", what, wctx.Err(), last, p.Eval(`document.body.innerText`))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// JS is a JavaScript string literal of s.
func JS(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// ByData is a JavaScript expression for the element whose data-NAME
// attribute is value (found without a selector, so any value works).
func ByData(name, value string) string {
	return fmt.Sprintf(`[...document.querySelectorAll('[data-%s]')].find((e) => e.getAttribute('data-%s') === %s)`, name, name, JS(value))
}

// buffer is what Chromium writes, read when a test fails.
type buffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
