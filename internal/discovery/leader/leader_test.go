package leader

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// One of two replicas leads; when it stops, it hands the Lease over and
// the other leads within a retry period, not a lease duration.
func TestOneLeaderAndHandOver(t *testing.T) {
	client := fake.NewClientset()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var leads [2]atomic.Int32
	var electors [2]*Elector
	var cancels [2]context.CancelFunc
	done := make(chan int, 2)
	for i := range electors {
		e := New(client, "istio-system", []string{"istiod-a", "istiod-b"}[i], log, nil)
		e.OnLead = func() { leads[i].Add(1) }
		ctx, cancel := context.WithCancel(context.Background())
		electors[i], cancels[i] = e, cancel
		go func() { _ = e.Run(ctx); done <- i }()
		defer cancel()
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(3 * (RetryPeriod + time.Second))
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out: %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("a leader", func() bool { return electors[0].Leading() || electors[1].Leading() })
	first := 0
	if electors[1].Leading() {
		first = 1
	}
	other := 1 - first
	time.Sleep(2 * RetryPeriod)
	if electors[other].Leading() || leads[other].Load() != 0 || leads[first].Load() != 1 {
		t.Fatalf("both lead, or OnLead ran %d and %d times", leads[0].Load(), leads[1].Load())
	}
	lease, err := client.CoordinationV1().Leases("istio-system").Get(context.Background(), LeaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if h := *lease.Spec.HolderIdentity; h != electors[first].Identity || !strings.HasPrefix(h, []string{"istiod-a_", "istiod-b_"}[first]) {
		t.Errorf("lease held by %q, want %q", h, electors[first].Identity)
	}
	start := time.Now()
	cancels[first]()
	if i := <-done; i != first {
		t.Fatalf("elector %d stopped", i)
	}
	if electors[first].Leading() {
		t.Error("a stopped elector still says it leads")
	}
	waitFor("the other replica to lead", electors[other].Leading)
	if took := time.Since(start); took > LeaseDuration {
		t.Errorf("hand-over took %s: the lease was not released", took)
	}
	if leads[other].Load() != 1 {
		t.Errorf("OnLead ran %d times for the new leader", leads[other].Load())
	}
}
