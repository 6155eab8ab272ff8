package ca

import (
	"context"
	"slices"
	"sort"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
type KubeAuthenticator struct {
	LocalCluster string
	// Client returns the API client of a cluster the mesh knows.
	Client func(clusterID string) (kubernetes.Interface, bool)
	// Clusters lists the known cluster IDs, for the error message.
	Clusters  func() []string
	Audiences []string
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
	auds := k.Audiences
	if len(auds) == 0 {
		auds = []string{DefaultAudience}
	}
	review, err := client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: auds},
	}, metav1.CreateOptions{})
	if err != nil {
		return Caller{}, status.Errorf(codes.Unavailable, "token review in cluster %q failed: %v", cluster, err)
	}
	st := review.Status
	if !st.Authenticated {
		why := st.Error
		if why == "" {
			why = "not authenticated"
		}
		return Caller{}, status.Errorf(codes.Unauthenticated, "token rejected by cluster %q: %s (expired, wrong audience, deleted pod, or issued by another cluster?)", cluster, why)
	}
	if len(st.Audiences) > 0 && !slices.ContainsFunc(st.Audiences, func(a string) bool { return slices.Contains(auds, a) }) {
		return Caller{}, status.Errorf(codes.Unauthenticated, "token audiences %v do not include %v", st.Audiences, auds)
	}
	parts := strings.Split(st.User.Username, ":")
	if len(parts) != 4 || parts[0] != "system" || parts[1] != "serviceaccount" || parts[2] == "" || parts[3] == "" {
		return Caller{}, status.Errorf(codes.Unauthenticated, "token of %q is not a service account's", st.User.Username)
	}
	return Caller{Cluster: cluster, Namespace: parts[2], ServiceAccount: parts[3]}, nil
}
