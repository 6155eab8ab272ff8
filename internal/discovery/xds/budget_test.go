package xds

import (
	"context"
	"testing"
	"time"
)

// A large response waits for budget until an earlier one is acknowledged
// (its watch ends); small ones never wait; a watch that ends while
// waiting gives up.
func TestSendBudget(t *testing.T) {
	b := newSendBudget(100 << 10)
	first, ack := context.WithCancel(context.Background())
	if !b.take(first, 80<<10) {
		t.Fatal("the first large response did not get budget")
	}
	if !b.take(context.Background(), 10) {
		t.Fatal("a small response waited")
	}
	got := make(chan bool, 1)
	go func() { got <- b.take(context.Background(), 80<<10) }()
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
	go func() { got <- b.take(gone, 80<<10) }()
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
