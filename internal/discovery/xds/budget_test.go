package xds

import (
	"context"
	"testing"
	"time"
)

// A large response waits for budget until an earlier one is acknowledged;
// small ones never wait; a stream that ends while waiting gives up.
func TestSendBudget(t *testing.T) {
	b := newSendBudget(100 << 10)
	take := func(ctx context.Context, n int) bool { _, ok := b.take(ctx, n); return ok }
	ack, ok := b.take(context.Background(), 80<<10)
	if !ok {
		t.Fatal("the first large response did not get budget")
	}
	if !take(context.Background(), 10) {
		t.Fatal("a small response waited")
	}
	got := make(chan bool, 1)
	go func() { got <- take(context.Background(), 80<<10) }()
	select {
	case <-got:
		t.Fatal("a second large response was sent before the first was acknowledged")
	case <-time.After(100 * time.Millisecond):
	}
	ack()
	select {
	case ok := <-got:
		if !ok {
			t.Fatal("the second large response gave up")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the acknowledgement did not return the budget")
	}
	gone, end := context.WithCancel(context.Background())
	go func() { got <- take(gone, 80<<10) }()
	end()
	select {
	case ok := <-got:
		if ok {
			t.Fatal("a cancelled watch got budget while another held it")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a cancelled watch kept waiting")
	}
}
