package ca

import (
	"context"
	"crypto/sha256"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/cache"
	"k8s.io/client-go/kubernetes"
)

// DefaultAudience is the audience of the projected token proxies present
// (Istio's global.sds.token.aud).
const DefaultAudience = "istio-ca"

// Caller is an authenticated workload.
type Caller struct {
	Cluster        string
	Namespace      string
	ServiceAccount string
}

// Identity is the caller's SPIFFE ID in a trust domain.
func (c Caller) Identity(trustDomain string) string {
	return "spiffe://" + trustDomain + "/ns/" + c.Namespace + "/sa/" + c.ServiceAccount
}

// KubeAuthenticator checks a Kubernetes service-account token with a
// TokenReview in the cluster the caller says it is in (gRPC metadata
// `clusterid`, as Istio's agent sends it), so a remote cluster's tokens are
// reviewed by the remote API server that issued them.
//
// Answers are reused briefly (a token accepted for 30 s, refused for 5 s):
// a proxy's xDS stream and its certificate requests, and the reconnects of
// many proxies at once, then cost one review per token. Reviews are
// limited per caller address (ReviewsPerSecond, bursts of ten times that),
// so one pod sending made-up tokens cannot flood an API server.
type KubeAuthenticator struct {
	LocalCluster string
	// Client returns the API client of a cluster the mesh knows.
	Client func(clusterID string) (kubernetes.Interface, bool)
	// Clusters lists the known cluster IDs, for the error message.
	Clusters  func() []string
	Audiences []string
	// ReviewsPerSecond per caller address; zero means 20. Remote proxies
	// reach the control plane through their east-west gateway and share
	// its address.
	ReviewsPerSecond float64

	mu      sync.Mutex // one limiter per address, made once
	once    sync.Once
	answers *cache.LRUExpireCache // sha256(cluster, token) -> answer
	callers *cache.LRUExpireCache // address -> *rate.Limiter, forgotten when quiet
}

// Reuse of a review's answer, and how long a quiet caller's budget is kept.
const (
	acceptedFor = 30 * time.Second
	refusedFor  = 5 * time.Second
	callerQuiet = 10 * time.Minute
)

type answer struct {
	caller Caller
	err    error
}

// Authenticate reads `authorization: Bearer <token>` and `clusterid`
// from the incoming gRPC metadata.
func (k *KubeAuthenticator) Authenticate(ctx context.Context) (Caller, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	token := ""
	if v := md.Get("authorization"); len(v) > 0 {
		token, _ = strings.CutPrefix(v[0], "Bearer ")
	}
	if token == "" {
		return Caller{}, status.Error(codes.Unauthenticated, "no bearer token in the authorization metadata (the proxy sends its istio-token)")
	}
	cluster := k.LocalCluster
	if v := md.Get("clusterid"); len(v) > 0 && v[0] != "" {
		cluster = v[0]
	}
	client, ok := k.Client(cluster)
	if !ok {
		known := k.Clusters()
		sort.Strings(known)
		return Caller{}, status.Errorf(codes.Unauthenticated, "client claims to be in cluster %q, but this control plane knows only %s (is its remote secret applied?)", cluster, strings.Join(known, ", "))
	}
	k.once.Do(func() { k.answers, k.callers = cache.NewLRUExpireCache(16384), cache.NewLRUExpireCache(16384) })
	key := sha256.Sum256([]byte(cluster + "\x00" + token))
	if a, ok := k.answers.Get(key); ok {
		return a.(answer).caller, a.(answer).err
	}
	if !k.limiter(ctx).Allow() {
		return Caller{}, status.Error(codes.ResourceExhausted, "too many token reviews from this address; retry later")
	}
	caller, final, err := k.review(ctx, client, cluster, token)
	if final {
		ttl := acceptedFor
		if err != nil {
			ttl = refusedFor
		}
		k.answers.Add(key, answer{caller: caller, err: err}, ttl)
	}
	return caller, err
}

// limiter is the review budget of the caller's address, kept while the
// address keeps asking.
func (k *KubeAuthenticator) limiter(ctx context.Context) *rate.Limiter {
	addr := "unknown"
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr = p.Addr.String()
		if host, _, err := net.SplitHostPort(addr); err == nil {
			addr = host
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	l, ok := k.callers.Get(addr)
	if !ok {
		per := k.ReviewsPerSecond
		if per == 0 {
			per = 20
		}
		l = rate.NewLimiter(rate.Limit(per), int(per*10))
	}
	k.callers.Add(addr, l, callerQuiet)
	return l.(*rate.Limiter)
}

// review asks the cluster about a token; final says the answer is the
// token's own (worth reusing), not a failure to ask.
func (k *KubeAuthenticator) review(ctx context.Context, client kubernetes.Interface, cluster, token string) (Caller, bool, error) {
	auds := k.Audiences
	if len(auds) == 0 {
		auds = []string{DefaultAudience}
	}
	review, err := client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: auds},
	}, metav1.CreateOptions{})
	if err != nil {
		return Caller{}, false, status.Errorf(codes.Unavailable, "token review in cluster %q failed: %v", cluster, err)
	}
	st := review.Status
	if !st.Authenticated {
		why := st.Error
		if why == "" {
			why = "not authenticated"
		}
		return Caller{}, true, status.Errorf(codes.Unauthenticated, "token rejected by cluster %q: %s (expired, wrong audience, deleted pod, or issued by another cluster?)", cluster, why)
	}
	if len(st.Audiences) > 0 && !slices.ContainsFunc(st.Audiences, func(a string) bool { return slices.Contains(auds, a) }) {
		return Caller{}, true, status.Errorf(codes.Unauthenticated, "token audiences %v do not include %v", st.Audiences, auds)
	}
	parts := strings.Split(st.User.Username, ":")
	if len(parts) != 4 || parts[0] != "system" || parts[1] != "serviceaccount" || parts[2] == "" || parts[3] == "" {
		return Caller{}, true, status.Errorf(codes.Unauthenticated, "token of %q is not a service account's", st.User.Username)
	}
	return Caller{Cluster: cluster, Namespace: parts[2], ServiceAccount: parts[3]}, true, nil
}
