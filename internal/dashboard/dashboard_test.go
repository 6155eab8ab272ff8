package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/test/browser"
)

// example is the document of the package's specification.
const example = `{
 "time": "2026-12-06T05:00:00Z",
 "clusters": [{"id":"cluster-eks","network":"network1","primary":true,"state":"synced","staleSince":null,"error":""},
              {"id":"cluster-aks","network":"network2","primary":false,"state":"stale","staleSince":"2026-12-06T04:59:40Z","error":""}],
 "gateways": [{"cluster":"cluster-aks","network":"network2","namespace":"istio-system","name":"istio-eastwestgateway","addresses":["198.18.2.10"],"ready":true}],
 "workloads": [{"cluster":"cluster-eks","namespace":"multicluster","name":"sleep","proxies":1}],
 "edges": [{"source":{"cluster":"cluster-eks","namespace":"multicluster","workload":"sleep"},
            "destination":{"cluster":"cluster-aks","namespace":"multicluster","workload":"profile-v2","service":"profile.multicluster.svc.cluster.local"},
            "rps":12.5,"errorRate":0.02}],
 "convergence": {"p50Seconds":0.012,"p99Seconds":0.09,"samples":120}
}`

func exampleMesh() *Mesh {
	at := time.Date(2026, 12, 6, 5, 0, 0, 0, time.UTC)
	stale := at.Add(-20 * time.Second)
	return &Mesh{
		Time: at,
		Clusters: []Cluster{
			{ID: "cluster-eks", Network: "network1", Primary: true, State: StateSynced},
			{ID: "cluster-aks", Network: "network2", State: StateStale, StaleSince: &stale},
		},
		Gateways:  []Gateway{{Cluster: "cluster-aks", Network: "network2", Namespace: "istio-system", Name: "istio-eastwestgateway", Addresses: []string{"198.18.2.10"}, Ready: true}},
		Workloads: []Workload{{Cluster: "cluster-eks", Namespace: "multicluster", Name: "sleep", Proxies: 1}},
		Edges: []Edge{{
			Source:      Endpoint{Cluster: "cluster-eks", Namespace: "multicluster", Workload: "sleep"},
			Destination: Endpoint{Cluster: "cluster-aks", Namespace: "multicluster", Workload: "profile-v2", Service: "profile.multicluster.svc.cluster.local"},
			RPS:         12.5, ErrorRate: 0.02,
		}},
		Convergence: Convergence{P50Seconds: 0.012, P99Seconds: 0.09, Samples: 120},
	}
}

func get(t *testing.T, h http.Handler, method, target string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	return rec.Result()
}

func body(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestMeshJSON: the document has exactly the specified shape, and lists
// the Source leaves nil are [] (never null).
func TestMeshJSON(t *testing.T) {
	h := Handler(SourceFunc(func(context.Context) (*Mesh, error) { return exampleMesh(), nil }))
	resp := get(t, h, http.MethodGet, "/dashboard/api/mesh")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if got := resp.Header.Get("Cache-Control"); got != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", got)
	}
	if got := resp.Header.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type %q", got)
	}
	var got, want any
	if err := json.Unmarshal([]byte(body(t, resp)), &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(example), &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		g, _ := json.MarshalIndent(got, "", " ")
		t.Errorf("document:\n%s\nwant the specification's:\n%s", g, example)
	}

	sparse := &Mesh{Time: time.Unix(0, 0).UTC(), Gateways: []Gateway{{Cluster: "c", Name: "g"}},
		Edges:       []Edge{{RPS: math.NaN(), ErrorRate: math.Inf(1)}},
		Convergence: Convergence{P50Seconds: math.NaN(), P99Seconds: math.NaN()}}
	h = Handler(SourceFunc(func(context.Context) (*Mesh, error) { return sparse, nil }))
	doc := body(t, get(t, h, http.MethodGet, "/dashboard/api/mesh"))
	for _, want := range []string{`"clusters":[]`, `"workloads":[]`, `"addresses":[]`, `"rps":0,"errorRate":0`, `"p50Seconds":0,"p99Seconds":0`} {
		if !strings.Contains(doc, want) {
			t.Errorf("document %s: want %s", doc, want)
		}
	}
	if strings.Contains(doc, "null,") {
		t.Errorf("document %s has a null list", doc)
	}
	if sparse.Gateways[0].Addresses != nil || sparse.Clusters != nil || !math.IsNaN(sparse.Edges[0].RPS) {
		t.Error("the handler changed the Source's Mesh")
	}
}

func TestRoutes(t *testing.T) {
	calls := 0
	h := Handler(SourceFunc(func(context.Context) (*Mesh, error) { calls++; return exampleMesh(), nil }))

	resp := get(t, h, http.MethodGet, "/dashboard/")
	page := body(t, resp)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("page: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if !strings.Contains(page, "<script>") || !strings.Contains(page, "'api/mesh'") {
		t.Error("page without its script or its relative api/mesh")
	}
	// Offline: no URL but the SVG namespace, no external script or style.
	for _, u := range regexp.MustCompile(`https?://[^\s"'<>)]*`).FindAllString(page, -1) {
		if u != "http://www.w3.org/2000/svg" {
			t.Errorf("page refers to %s", u)
		}
	}
	if regexp.MustCompile(`(?i)<(script|link|img|iframe)[^>]*(src|href)=`).MatchString(page) {
		t.Error("page loads a resource")
	}
	if strings.Contains(page, "innerHTML") || strings.Contains(page, "insertAdjacentHTML") || strings.Contains(page, "document.write") {
		t.Error("page parses strings as HTML")
	}
	csp := resp.Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "script-src 'sha256-") || !strings.Contains(csp, "style-src 'sha256-") || !strings.Contains(csp, "connect-src 'self'") {
		t.Errorf("Content-Security-Policy %q", csp)
	}

	head := get(t, h, http.MethodHead, "/dashboard/")
	if head.StatusCode != http.StatusOK {
		t.Errorf("HEAD /dashboard/: %d", head.StatusCode)
	}

	// /dashboard redirects, relative to where the page is mounted.
	resp = get(t, h, http.MethodGet, "/dashboard?x=1")
	loc := resp.Header.Get("Location")
	base, _ := url.Parse("http://127.0.0.1:15014/dashboard?x=1")
	rel, err := url.Parse(loc)
	if resp.StatusCode != http.StatusMovedPermanently || err != nil || base.ResolveReference(rel).String() != "http://127.0.0.1:15014/dashboard/?x=1" {
		t.Errorf("/dashboard: %d Location %q", resp.StatusCode, loc)
	}

	for _, p := range []string{"/dashboard/x", "/dashboard/api", "/dashboard/api/", "/dashboard/api/mesh/", "/dashboard/api/meshes", "/dashboard//", "/", "/dashboardx", "/other"} {
		if resp := get(t, h, http.MethodGet, p); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", p, resp.StatusCode)
		}
	}
	before := calls
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions} {
		for _, p := range []string{"/dashboard/", "/dashboard/api/mesh", "/dashboard"} {
			resp := get(t, h, m, p)
			if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
				t.Errorf("%s %s: %d Allow %q, want 405", m, p, resp.StatusCode, resp.Header.Get("Allow"))
			}
		}
	}
	if calls != before {
		t.Error("a refused method asked the Source")
	}
}

func TestSourceError(t *testing.T) {
	h := Handler(SourceFunc(func(context.Context) (*Mesh, error) {
		return nil, errors.New("registry not synced yet")
	}))
	resp := get(t, h, http.MethodGet, "/dashboard/api/mesh")
	if b := body(t, resp); resp.StatusCode != http.StatusInternalServerError || !strings.Contains(b, "registry not synced yet") {
		t.Errorf("%d %q", resp.StatusCode, b)
	}
	if resp.Header.Get("Cache-Control") != "no-store" {
		t.Error("an error answer may be cached")
	}
	h = Handler(SourceFunc(func(context.Context) (*Mesh, error) { return nil, nil }))
	if resp := get(t, h, http.MethodGet, "/dashboard/api/mesh"); resp.StatusCode != http.StatusInternalServerError {
		t.Errorf("nil Mesh: %d", resp.StatusCode)
	}
}

// fakeMesh is a control plane whose mesh changes while the page watches:
// the rates rise at every call, and the test moves it through its phases.
type fakeMesh struct {
	mu    sync.Mutex
	phase int
	calls int
}

const (
	phaseLive = iota
	phaseStale
	phaseFailing
	phaseBack
)

const evilName = `<img src=x onerror="window.__pwned=1">`

func (f *fakeMesh) set(phase int) {
	f.mu.Lock()
	f.phase = phase
	f.mu.Unlock()
}

func (f *fakeMesh) Mesh(context.Context) (*Mesh, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.phase == phaseFailing {
		return nil, errors.New(`registry unavailable <b id="injected">bold</b>`)
	}
	now := time.Now().UTC() // nanoseconds, as the control plane writes them
	aks := Cluster{ID: "cluster-aks", Network: "network2", State: StateSynced}
	if f.phase == phaseStale {
		since := now.Add(-20 * time.Second)
		aks.State, aks.StaleSince = StateStale, &since
	}
	ep := func(cluster, workload string) Endpoint {
		return Endpoint{Cluster: cluster, Namespace: "multicluster", Workload: workload}
	}
	profile := func(cluster, workload string) Endpoint {
		e := ep(cluster, workload)
		e.Service = "profile.multicluster.svc.cluster.local"
		return e
	}
	n := float64(f.calls)
	return &Mesh{
		Time:     now,
		Clusters: []Cluster{{ID: "cluster-eks", Network: "network1", Primary: true, State: StateSynced}, aks},
		Gateways: []Gateway{
			{Cluster: "cluster-eks", Network: "network1", Namespace: "istio-system", Name: "istio-eastwestgateway", Addresses: []string{"198.18.1.10"}, Ready: true},
			{Cluster: "cluster-aks", Network: "network2", Namespace: "istio-system", Name: "istio-eastwestgateway", Addresses: []string{"198.18.2.10"}, Ready: true},
		},
		Workloads: []Workload{
			{Cluster: "cluster-eks", Namespace: "multicluster", Name: "sleep", Proxies: 1},
			{Cluster: "cluster-eks", Namespace: "multicluster", Name: "profile-v1", Proxies: 2},
			{Cluster: "cluster-aks", Namespace: "multicluster", Name: "profile-v2", Proxies: 1},
			{Cluster: "cluster-aks", Namespace: "multicluster", Name: evilName, Proxies: 1},
		},
		Edges: []Edge{
			{Source: ep("cluster-eks", "sleep"), Destination: profile("cluster-eks", "profile-v1"), RPS: 10 + n, ErrorRate: 0},
			{Source: ep("cluster-eks", "sleep"), Destination: profile("cluster-aks", "profile-v2"), RPS: 5 + n/2, ErrorRate: 0.02},
			{Source: ep("cluster-eks", "sleep"), Destination: ep("cluster-aks", evilName), RPS: 1, ErrorRate: 0.5},
			{Source: ep("cluster-eks", ""), Destination: profile("cluster-eks", "profile-v1"), RPS: 0.25, ErrorRate: 0},
		},
		Convergence: Convergence{P50Seconds: 0.012, P99Seconds: 0.09, Samples: 120},
	}, nil
}

// TestBrowser drives the page in Debian's Chromium against a control plane
// whose data changes between polls.
func TestBrowser(t *testing.T) {
	src := &fakeMesh{}
	// Served under a path prefix, as behind a proxy: the page's links must
	// be relative.
	mux := http.NewServeMux()
	h := Handler(src)
	mux.Handle("/dashboard", h)
	mux.Handle("/dashboard/", h)
	mux.Handle("/prefix/", http.StripPrefix("/prefix", h))
	srv := httptest.NewServer(mux) // on 127.0.0.1
	defer srv.Close()

	start := time.Now()
	page := browser.Open(t, srv.URL+"/prefix/dashboard", 45*time.Second)
	eval := page.Eval
	wait := func(what, expr string) {
		t.Helper()
		page.Wait(what, expr, 10*time.Second)
	}
	byData, js := browser.ByData, browser.JS
	if u := eval(`location.pathname`); u != "/prefix/dashboard/" {
		t.Errorf("/prefix/dashboard led to %v", u)
	}
	wait("a first picture", `document.body.dataset.updated`)

	// Both clusters, in their networks, with their role and state.
	for _, c := range []struct{ id, network, role string }{{"cluster-eks", "network1", "primary"}, {"cluster-aks", "network2", "remote"}} {
		el := byData("cluster", c.id)
		got := eval(fmt.Sprintf(`(() => { const c = %s; return c ? [c.dataset.state, c.closest('[data-network]').dataset.network, c.closest('[data-network]').innerText, c.innerText].join('|') : 'missing'; })()`, el))
		parts := strings.SplitN(fmt.Sprint(got), "|", 4)
		if len(parts) != 4 || parts[0] != "synced" || parts[1] != c.network || !strings.Contains(parts[2], c.network) || !strings.Contains(parts[3], c.id) || !strings.Contains(parts[3], c.role) {
			t.Errorf("cluster %s: %q, want synced, in %s, %s", c.id, got, c.network, c.role)
		}
	}
	if got := eval(`(() => { const g = ` + byData("gateway", "istio-eastwestgateway@cluster-aks") + `; return g ? g.innerText : 'missing'; })()`); !strings.Contains(fmt.Sprint(got), "198.18.2.10") || !strings.Contains(fmt.Sprint(got), "ready") {
		t.Errorf("cluster-aks's gateway: %q", got)
	}
	for _, w := range []string{"sleep.multicluster@cluster-eks", "profile-v1.multicluster@cluster-eks", "profile-v2.multicluster@cluster-aks"} {
		if eval(byData("workload", w)+` !== undefined`) != true {
			t.Errorf("no workload %s", w)
		}
	}
	if eval(byData("workload", "sleep.multicluster@cluster-eks")+`.closest('[data-cluster]').dataset.cluster`) != "cluster-eks" {
		t.Error("sleep is not inside cluster-eks")
	}
	if got := fmt.Sprint(eval(`document.getElementById('convergence').innerText`)); !strings.Contains(got, "p50 12 ms") || !strings.Contains(got, "p99 90 ms") || !strings.Contains(got, "120 samples") {
		t.Errorf("convergence: %q", got)
	}

	// The edges from sleep: drawn, labelled, coloured by their error rate,
	// and their rates follow the data.
	edges := map[string]string{
		"sleep.multicluster@cluster-eks->profile-v1.multicluster@cluster-eks":       "ok",
		"sleep.multicluster@cluster-eks->profile-v2.multicluster@cluster-aks":       "warn",
		"sleep.multicluster@cluster-eks->" + evilName + ".multicluster@cluster-aks": "bad",
		".multicluster@cluster-eks->profile-v1.multicluster@cluster-eks":            "ok",
	}
	rps := map[string]float64{}
	for key, level := range edges {
		got := fmt.Sprint(eval(fmt.Sprintf(`(() => { const e = %s; if (!e) return 'missing';
			const p = e.querySelector('path'), b = p && p.getBBox();
			const l = %s;
			return [e.dataset.rps, e.dataset.errorRate, e.getAttribute('class'), b && (b.width + b.height) > 20, l ? l.textContent : 'no label'].join('|'); })()`, byData("edge", key), byData("edge-label", key))))
		parts := strings.Split(got, "|")
		if len(parts) != 5 {
			t.Errorf("edge %s: %q", key, got)
			continue
		}
		r, err := strconv.ParseFloat(parts[0], 64)
		if err != nil || r <= 0 || parts[2] != "edge "+level || parts[3] != "true" || !strings.Contains(parts[4], " rps") || !strings.Contains(parts[4], "%") {
			t.Errorf("edge %s: %q: want data-rps > 0, class edge %s, a drawn line, a label with rps and %%", key, got, level)
		}
		rps[key] = r
		if level == "warn" && (parts[1] != "0.02" || parts[4] != parts[0]+" rps · 2.0% errors") {
			t.Errorf("edge %s: data-error-rate %s, label %q: want 0.02, %q", key, parts[1], parts[4], parts[0]+" rps · 2.0% errors")
		}
	}
	for _, key := range []string{"sleep.multicluster@cluster-eks->profile-v1.multicluster@cluster-eks", "sleep.multicluster@cluster-eks->profile-v2.multicluster@cluster-aks"} {
		wait("the rate of "+key+" to rise", fmt.Sprintf(`parseFloat(%s.dataset.rps) > %v`, byData("edge", key), rps[key]))
	}

	// A name is text: nothing it holds becomes an element or runs.
	if got := eval(`(() => { const w = ` + byData("workload", evilName+".multicluster@cluster-aks") + `; return [document.querySelectorAll('img').length, typeof window.__pwned, w ? w.querySelector('.name').textContent : 'missing', w ? w.innerText.includes(` + js(evilName) + `) : false].join('|'); })()`); got != "0|undefined|"+evilName+"|true" {
		t.Errorf("the workload named %s: %q, want no img, nothing run, the name shown as text", evilName, got)
	}

	// cluster-aks's API server stops answering.
	src.set(phaseStale)
	aks := byData("cluster", "cluster-aks")
	wait("cluster-aks marked stale", aks+`.dataset.state === 'stale'`)
	note := fmt.Sprint(eval(aks + `.querySelector('.note.stale').innerText`))
	if !regexp.MustCompile(`^stale since \d\d:\d\d:\d\d \(20s\)`).MatchString(note) || !strings.Contains(fmt.Sprint(eval(aks+`.innerText`)), "stale since") {
		t.Errorf("stale cluster-aks says %q", note)
	}
	if eval(byData("cluster", "cluster-eks")+`.dataset.state`) != "synced" {
		t.Error("cluster-eks is no longer synced")
	}

	// The control plane fails: the banner says so, the last picture stays.
	src.set(phaseFailing)
	wait("the banner", `!document.getElementById('banner').hidden && document.getElementById('banner').innerText.includes('control plane not answering')`)
	banner := fmt.Sprint(eval(`document.getElementById('banner').innerText`))
	if !strings.Contains(banner, `registry unavailable <b id="injected">bold</b>`) || eval(`document.getElementById('injected') === null`) != true {
		t.Errorf("banner %q: want the error as text", banner)
	}
	if eval(`document.getElementById('banner').getBoundingClientRect().height > 0`) != true {
		t.Error("the banner is not visible")
	}
	if eval(aks+`.dataset.state`) != "stale" || eval(byData("edge", "sleep.multicluster@cluster-eks->profile-v2.multicluster@cluster-aks")+` !== undefined`) != true {
		t.Error("the picture went away with the control plane")
	}

	// It answers again: the banner goes.
	src.set(phaseBack)
	wait("the banner to go", `document.getElementById('banner').hidden`)
	wait("cluster-aks synced again", aks+`.dataset.state === 'synced'`)

	for _, p := range page.Problems() {
		t.Error(p)
	}
	t.Logf("browser test ran %v", time.Since(start).Round(time.Millisecond))
}
