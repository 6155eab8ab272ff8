package xds

import (
	"context"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"
)

// sendBudget bounds the bytes of large responses handed to streams and
// not yet acknowledged. gRPC keeps a whole encoded message in memory
// until the client has read it, so a first push of a thousand clusters to
// a thousand proxies that read slowly held every copy at once (750 MB of
// send buffers in the scale bench). Small responses, the usual endpoint
// update, never wait. Istio bounds concurrent pushes for the same reason
// (PILOT_PUSH_THROTTLE).
type sendBudget struct {
	sem *semaphore.Weighted
	max int64
}

const (
	// largeResponse is the size from which a response waits for budget.
	largeResponse = 64 << 10
	// sendBudgetBytes is how much large responses may hold at once.
	sendBudgetBytes = 8 << 20
	// ackWait is how long a response holds its budget without an
	// acknowledgement (a stuck client must not stall every push).
	ackWait = 10 * time.Second
)

func newSendBudget(max int64) *sendBudget {
	return &sendBudget{sem: semaphore.NewWeighted(max), max: max}
}

// take waits until a response of n bytes may be sent on a stream and
// returns false if the stream ends first. The caller releases the budget
// when the client acknowledges the response (or the stream ends); it
// comes back by itself after ackWait.
func (b *sendBudget) take(stream context.Context, n int) (release func(), ok bool) {
	if n < largeResponse {
		return func() {}, true
	}
	w := min(int64(n), b.max)
	if err := b.sem.Acquire(stream, w); err != nil {
		return nil, false
	}
	var once sync.Once
	release = func() { once.Do(func() { b.sem.Release(w) }) }
	time.AfterFunc(ackWait, release)
	return release, true
}
