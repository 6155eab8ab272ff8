package remotesecret

import (
	"context"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
)

// fakeCluster stands for one client of a remote cluster: it syncs when
// its token is one the API server accepts.
type fakeCluster struct {
	token   string
	synced  bool
	running atomic.Bool
}

func (f *fakeCluster) Run(ctx context.Context) error {
	f.running.Store(true)
	<-ctx.Done()
	f.running.Store(false)
	return nil
}
func (f *fakeCluster) Synced() bool { return f.synced }
func (f *fakeCluster) Resync()      {}

// A new secret whose token the remote refuses leaves the previous client
// watching (past the sync timeout) and says why; a good one then replaces
// both; an API server that stops answering makes the cluster stale. The
// API server is a TLS server on loopback that knows two tokens.
func TestRotationAndProbe(t *testing.T) {
	good := map[string]bool{"Bearer good": true, "Bearer good2": true}
	var down atomic.Bool
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case down.Load():
			time.Sleep(2 * time.Second) // frozen: answers later than the probe waits
		case !good[r.Header.Get("Authorization")]:
			http.Error(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Unauthorized","code":401}`, http.StatusUnauthorized)
		default:
			fmt.Fprint(w, "ok")
		}
	}))
	defer api.Close()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw})
	kubeconfig := func(token string) string {
		return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q, certificate-authority-data: %q}}]
users: [{name: u, user: {token: %s}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`, api.URL, base64.StdEncoding.EncodeToString(ca), token)
	}

	var mu sync.Mutex
	var made []*fakeCluster
	client := fake.NewClientset()
	c := &Controller{Client: client, Namespace: "istio-system", LocalCluster: "primary",
		NewCluster: func(id string, rc *rest.Config) (Cluster, error) {
			f := &fakeCluster{token: rc.BearerToken, synced: good["Bearer "+rc.BearerToken]}
			mu.Lock()
			made = append(made, f)
			mu.Unlock()
			return f, nil
		},
		SyncTimeout: 200 * time.Millisecond, ProbeEvery: 300 * time.Millisecond, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = c.Run(ctx) }()

	secrets := client.CoreV1().Secrets("istio-system")
	put := func(token string) {
		t.Helper()
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "istio-remote-secret-remote", Namespace: "istio-system",
			Labels: map[string]string{LabelMultiCluster: "true"}}, Data: map[string][]byte{"remote": []byte(kubeconfig(token))}}
		if _, err := secrets.Update(context.Background(), s, metav1.UpdateOptions{}); err != nil {
			if _, err := secrets.Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	cluster := func(i int) *fakeCluster {
		mu.Lock()
		defer mu.Unlock()
		if i < len(made) {
			return made[i]
		}
		return nil
	}
	status := func() Status {
		for _, s := range c.Statuses() {
			if s.ID == "remote" {
				return s
			}
		}
		return Status{}
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out: %s (status %+v)", what, status())
			}
		}
	}

	put("good")
	waitFor("the first client synced", func() bool { return cluster(0) != nil && cluster(0).running.Load() && status().State == "synced" })

	put("revoked")
	waitFor("the refused token reported", func() bool {
		return status().State == "error" && strings.Contains(status().Error, "refuses the secret's credentials")
	})
	time.Sleep(5 * c.SyncTimeout)
	if !cluster(0).running.Load() || !cluster(1).running.Load() {
		t.Fatalf("past the sync timeout with a refused new token: previous client running %v, new %v; want both",
			cluster(0).running.Load(), cluster(1).running.Load())
	}

	put("good2")
	waitFor("the good secret replaced both", func() bool {
		return cluster(2) != nil && cluster(2).running.Load() && !cluster(0).running.Load() && !cluster(1).running.Load() && status().State == "synced"
	})

	down.Store(true)
	waitFor("stale while the API server does not answer", func() bool { return status().State == "stale" && status().StaleSince != nil })
	down.Store(false)
	waitFor("synced again", func() bool { return status().State == "synced" && status().StaleSince == nil })

	if err := secrets.Delete(context.Background(), "istio-remote-secret-remote", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("the deleted secret's client stopped", func() bool { return !cluster(2).running.Load() && len(c.Statuses()) == 0 })
}

// Listed turns true only once every remote secret present at start-up has
// been applied: the control plane's readiness waits for the clusters they
// name, which it cannot know before.
func TestListedAfterStartupSecrets(t *testing.T) {
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") }))
	defer api.Close()
	ca := base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw}))
	client := fake.NewClientset()
	for i, data := range []string{
		fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: %q, certificate-authority-data: %q}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n", api.URL, ca),
		"not a kubeconfig",
	} {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("istio-remote-secret-r%d", i), Namespace: "istio-system",
			Labels: map[string]string{LabelMultiCluster: "true"}}, Data: map[string][]byte{fmt.Sprintf("r%d", i): []byte(data)}}
		if _, err := client.CoreV1().Secrets("istio-system").Create(context.Background(), s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Adding the good secret's cluster waits for the test.
	adding := make(chan struct{})
	c := &Controller{Client: client, Namespace: "istio-system", LocalCluster: "primary",
		NewCluster: func(string, *rest.Config) (Cluster, error) { <-adding; return &fakeCluster{}, nil },
		ProbeEvery: time.Hour, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if c.Listed() {
		t.Fatal("listed before it ran")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = c.Run(ctx) }()
	time.Sleep(300 * time.Millisecond) // its secrets read, r0 being added
	if c.Listed() {
		t.Fatal("listed while a start-up secret's cluster was still being added")
	}
	close(adding)
	for deadline := time.Now().Add(5 * time.Second); !c.Listed(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("never listed")
		}
	}
	got := map[string]string{}
	for _, s := range c.Statuses() {
		got[s.ID] = s.State
	}
	if got["r0"] != "syncing" || got["r1"] != "error" {
		t.Errorf("states when listed: %v; want r0 syncing and r1 error", got)
	}
}
