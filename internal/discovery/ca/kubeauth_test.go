package ca

import (
	"context"
	"net"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// Token reviews are reused per token (accepted and refused alike) and
// limited per caller address, so reconnecting proxies cost one review
// each and a pod spraying made-up tokens cannot flood the API server.
func TestTokenReviewsAreCachedAndLimited(t *testing.T) {
	var reviews atomic.Int32
	client := fake.NewClientset()
	client.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		reviews.Add(1)
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
		if tr.Spec.Token == "good" {
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: "system:serviceaccount:ns:sa"}}
		} else {
			tr.Status = authnv1.TokenReviewStatus{Authenticated: false, Error: "invalid token"}
		}
		return true, tr, nil
	})
	k := &KubeAuthenticator{LocalCluster: "c1", ReviewsPerSecond: 1,
		Client:   func(string) (kubernetes.Interface, bool) { return client, true },
		Clusters: func() []string { return []string{"c1"} }}
	call := func(from, token string) (Caller, error) {
		ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP(from), Port: 40000}})
		ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", "Bearer "+token))
		return k.Authenticate(ctx)
	}

	for range 50 {
		if c, err := call("10.0.0.1", "good"); err != nil || c.ServiceAccount != "sa" {
			t.Fatalf("good token: %v %v", c, err)
		}
		if _, err := call("10.0.0.1", "bad"); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("bad token: %v", err)
		}
	}
	if n := reviews.Load(); n != 2 {
		t.Fatalf("%d token reviews for 100 calls with two tokens, want 2", n)
	}

	// One caller sending a new token each time: its burst (10), then refusals
	// that cost the API server nothing; another caller is not affected.
	refused := 0
	for i := range 30 {
		if _, err := call("10.0.0.2", "made-up-"+string(rune('a'+i))); status.Code(err) == codes.ResourceExhausted {
			refused++
		}
	}
	if refused < 15 || reviews.Load() > 2+15 {
		t.Fatalf("30 made-up tokens from one address: %d refused, %d reviews in all; want most refused without a review", refused, reviews.Load())
	}
	if _, err := call("10.0.0.3", "good-too"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("another caller is reviewed as usual: %v", err)
	}
}
