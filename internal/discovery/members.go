package discovery

import (
	"context"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/isthmus-mesh/isthmus/internal/discovery/kubecluster"
	"github.com/isthmus-mesh/isthmus/internal/discovery/remoteistiod"
	"github.com/isthmus-mesh/isthmus/internal/discovery/rootcert"
	"github.com/isthmus-mesh/isthmus/internal/rungroup"
)

// members are the clusters of the mesh that are running now, with their
// API clients: the CA reviews a caller's token in the caller's cluster, and
// each cluster gets the trust bundle in every namespace.
type members struct {
	mu sync.Mutex
	m  map[string]*member
}

type member struct {
	// reviews asks the cluster's API server about tokens and access.
	reviews kubernetes.Interface
	roots   *rootcert.Publisher
}

func (ms *members) reviews(id string) (kubernetes.Interface, bool) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	m, ok := ms.m[id]
	if !ok {
		return nil, false
	}
	return m.reviews, true
}

func (ms *members) ids() []string {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	var out []string
	for id := range ms.m {
		out = append(out, id)
	}
	return out
}

// resyncRoots republishes the bundle everywhere (the CA changed).
func (ms *members) resyncRoots() {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	for _, m := range ms.m {
		m.roots.Resync()
	}
}

// meshCluster is one cluster's registry controller plus its membership:
// while it runs, its reviews client answers token and access reviews, and
// its namespaces get the root certificate. A rotated remote secret starts the new one before
// the old one stops; the old one then leaves without removing the new.
type meshCluster struct {
	*kubecluster.Controller
	id      string
	reviews kubernetes.Interface
	members *members
	roots   *rootcert.Publisher
	// follower, for a remote, keeps its istiod endpoints at its
	// remotePilotAddress when that is a DNS name.
	follower *remoteistiod.Follower
}

func (c *meshCluster) Run(ctx context.Context) error {
	me := &member{reviews: c.reviews, roots: c.roots}
	join := func() {
		c.members.mu.Lock()
		c.members.m[c.id] = me
		c.members.mu.Unlock()
	}
	c.members.mu.Lock()
	_, replacing := c.members.m[c.id]
	c.members.mu.Unlock()
	if !replacing {
		join()
	}
	defer func() {
		c.members.mu.Lock()
		if c.members.m[c.id] == me {
			delete(c.members.m, c.id)
		}
		c.members.mu.Unlock()
	}()
	g, _ := rungroup.New(ctx)
	if replacing {
		// A rotated secret's client reviews tokens only once it has
		// synced: new credentials the cluster refuses (a revoked token)
		// must not take over from the previous client, which keeps
		// working until this one syncs.
		g.Go("cluster "+c.id+" membership", func(ctx context.Context) error {
			for !c.Controller.Synced() {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(100 * time.Millisecond):
				}
			}
			join()
			<-ctx.Done() // a part of the group that returns stops the group
			return nil
		})
	}
	g.Go("cluster "+c.id+" registry", c.Controller.Run)
	g.Go("cluster "+c.id+" root certificates", c.roots.Run)
	if c.follower != nil {
		g.Go("cluster "+c.id+" istiod endpoints", c.follower.Run)
	}
	return g.Wait()
}
