package demoapp

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestDashboardAggregatesProfileAndAccounts(t *testing.T) {
	t.Setenv("CLUSTER_NAME", "cluster-eks")
	t.Setenv("HOSTNAME", "pod-1")
	profile := httptest.NewServer(ProfileHandler())
	defer profile.Close()
	accounts := httptest.NewServer(AccountsHandler())
	defer accounts.Close()
	dash := httptest.NewServer(DashboardHandler(profile.URL, accounts.URL))
	defer dash.Close()

	resp, err := http.Get(dash.URL + "/dashboard?id=4")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var d Dashboard
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		t.Fatal(err)
	}
	if d.Name != NameOf(4) || d.Balance != BalanceOf(4) || d.Profile.Cluster != "cluster-eks" || d.Profile.Pod != "pod-1" {
		t.Fatalf("dashboard answer %+v", d)
	}
}

func TestBadIDIsA400WithHelp(t *testing.T) {
	srv := httptest.NewServer(ProfileHandler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/profile?id=four")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

func TestProfileDelay(t *testing.T) {
	srv := httptest.NewServer(ProfileHandler())
	defer srv.Close()
	start := time.Now()
	resp, err := http.Get(srv.URL + "/profile?id=4&delay=300ms")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("status %d after %s", resp.StatusCode, time.Since(start))
	}
	resp, err = http.Get(srv.URL + "/profile?id=4&delay=1h")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("an hour's delay: status %d, want 400", resp.StatusCode)
	}
}
