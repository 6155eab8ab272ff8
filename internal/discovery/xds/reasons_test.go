package xds

import "testing"

// TestReasons: a full push's log line names why, most frequent first,
// and stays one line however many causes were gathered.
func TestReasons(t *testing.T) {
	if got := reasons(nil); got != "" {
		t.Errorf("no reason: %q", got)
	}
	why := map[string]int{"gateways": 1, "Istio configuration": 3, "cluster c2 synced": 1}
	if got, want := reasons(why), "Istio configuration (x3); cluster c2 synced; gateways"; got != want {
		t.Errorf("reasons = %q, want %q", got, want)
	}
	for _, r := range []string{"a", "b", "c", "d"} {
		why[r] = 1
	}
	if got, want := reasons(why), "Istio configuration (x3); a; b; c; cluster c2 synced; 2 more"; got != want {
		t.Errorf("reasons = %q, want %q", got, want)
	}
}
