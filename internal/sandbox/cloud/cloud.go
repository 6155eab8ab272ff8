// Package cloud is what the sandbox's internet segment offers around its
// clusters, as a cloud provider does: the load balancers of clusters whose
// Services are published by hostname (EKS-like), and the internet's DNS,
// which answers those names. It runs as one process in the internet
// namespace, so the clusters know nothing of it: a hostname cluster's
// Services get their name and address from here (loadbalancer, hostname
// mode), the DNS answers the name (A records, 5 s TTL), and nftables in
// the internet namespace forwards the address to the node's NodePorts, as
// an NLB with instance targets does. A moved address is followed within a
// second: the name answers the new address, and the old one is refused,
// its connections' NAT state dropped.
package cloud

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/miekg/dns"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/isthmus-mesh/isthmus/internal/rungroup"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/loadbalancer"
)

// Zone holds every hostname load balancer's name, each cluster's under
// <cluster>.elb.isthmus.test. .test is reserved for testing (RFC 2606), so
// no name here can ever be a real one.
const Zone = "elb.isthmus.test"

// Domain is where a cluster's load balancer names live.
func Domain(cluster string) string { return cluster + "." + Zone }

// Cluster is one cluster whose load balancers are known by hostname.
type Cluster struct {
	Name string
	// Pool is the cluster's /24, where its load balancers' addresses come from.
	Pool netip.Prefix
	// Node is the node's address, where the NodePorts are.
	Node netip.Addr
	// Client reaches the cluster's API server from the internet namespace.
	Client kubernetes.Interface
}

// Cloud runs the hostname load balancers and the internet's DNS.
type Cloud struct {
	// DNS is where the internet's DNS listens, UDP and TCP.
	DNS      netip.AddrPort
	Clusters []Cluster
	Log      *slog.Logger

	watched []*watched
	dirty   chan struct{}
}

// watched is a cluster and what its informer knows of its Services.
type watched struct {
	Cluster
	services corelisters.ServiceLister
	synced   cache.InformerSynced
}

// Run serves until ctx ends.
func (c *Cloud) Run(ctx context.Context) error {
	c.dirty = make(chan struct{}, 1)
	g, gctx := rungroup.New(ctx)
	for _, cl := range c.Clusters {
		factory := informers.NewSharedInformerFactory(cl.Client, 0)
		lb := &loadbalancer.Controller{Pool: cl.Pool, Domain: Domain(cl.Name), Client: cl.Client, Log: c.Log.With("cluster", cl.Name)}
		if err := lb.Watch(factory); err != nil {
			return err
		}
		inf := factory.Core().V1().Services()
		changed := func(any) { c.touch() }
		if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: changed, DeleteFunc: changed, UpdateFunc: func(_, obj any) { changed(obj) },
		}); err != nil {
			return err
		}
		c.watched = append(c.watched, &watched{Cluster: cl, services: inf.Lister(), synced: inf.Informer().HasSynced})
		factory.Start(gctx.Done())
		g.Go("load balancers of "+cl.Name, lb.Run)
	}
	g.Go("load balancer forwarding", c.forwardLoop)
	mux := dns.NewServeMux()
	mux.HandleFunc(".", c.handleDNS)
	for _, proto := range []string{"udp", "tcp"} {
		srv := &dns.Server{Addr: c.DNS.String(), Net: proto, Handler: mux}
		g.Serve("internet DNS ("+proto+")", srv.ListenAndServe, func() { _ = srv.Shutdown() })
	}
	c.Log.Info("cloud serving", "dns", c.DNS, "zone", Zone, "clusters", len(c.Clusters))
	if err := g.Wait(); err != nil {
		return fmt.Errorf("cloud: %w", err)
	}
	return nil
}

// touch asks the forwarding loop to look again, without blocking an informer.
func (c *Cloud) touch() {
	select {
	case c.dirty <- struct{}{}:
	default:
	}
}
