// Package secretaccess decides which workloads receive the TLS credentials
// (Kubernetes Secrets) that gateways name with credentialName, as istiod
// does: a workload whose token was reviewed receives the Secrets of its
// own namespace when its service account may list Secrets there, which
// the API server of the workload's own cluster answers
// (SubjectAccessReview). Gateways' `-sds` Roles grant exactly that.
package secretaccess

import (
	"context"
	"fmt"
	"sync"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/cache"
	"k8s.io/client-go/kubernetes"

	"github.com/isthmus-mesh/isthmus/internal/discovery/xds"
)

// CacheTTL is how long an answer (yes or no) is reused: a gateway's
// reconnects and pushes do not each cost an API call, and a Role granted
// or taken away is seen within this time at the next push.
const CacheTTL = time.Minute

// Authorizer asks each workload's cluster whether its service account may
// read the Secrets of its namespace.
type Authorizer struct {
	// Client returns the API client of a cluster the mesh knows.
	Client func(cluster string) (kubernetes.Interface, bool)

	once    sync.Once
	answers *cache.LRUExpireCache // xds.Identity -> answer
}

// answer is a review's outcome: nil, or why not.
type answer struct{ err error }

// AuthorizeCredentials returns nil when id may receive its namespace's
// credentials, else why not. An API server that cannot be asked means
// no: credentials never go out on a guess.
func (a *Authorizer) AuthorizeCredentials(ctx context.Context, id xds.Identity) error {
	a.once.Do(func() { a.answers = cache.NewLRUExpireCache(4096) })
	if got, ok := a.answers.Get(id); ok {
		return got.(answer).err
	}
	err := a.review(ctx, id)
	if ctx.Err() != nil && err != nil {
		return err // the caller gave up: not an answer worth keeping
	}
	a.answers.Add(id, answer{err}, CacheTTL)
	return err
}

func (a *Authorizer) review(ctx context.Context, id xds.Identity) error {
	client, ok := a.Client(id.Cluster)
	if !ok {
		return fmt.Errorf("cluster %q is not (or no longer) part of the mesh", id.Cluster)
	}
	user := "system:serviceaccount:" + id.Namespace + ":" + id.ServiceAccount
	r, err := client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{
		Spec: authzv1.SubjectAccessReviewSpec{
			User:   user,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + id.Namespace, "system:authenticated"},
			ResourceAttributes: &authzv1.ResourceAttributes{
				Namespace: id.Namespace, Verb: "list", Resource: "secrets",
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("cannot ask cluster %q whether %s may read Secrets (SubjectAccessReview): %w", id.Cluster, user, err)
	}
	if !r.Status.Allowed {
		why := r.Status.Reason
		if why == "" {
			why = "no Role grants it"
		}
		return fmt.Errorf("%s may not list Secrets in namespace %s of cluster %q (%s); bind it a Role such as the gateway's -sds Role", user, id.Namespace, id.Cluster, why)
	}
	return nil
}
