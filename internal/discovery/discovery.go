// Package discovery is the control plane, istiod's role: it watches the
// clusters of the mesh (its own and those of remote secrets), keeps the
// merged registry, and serves per-proxy configuration over xDS.
//
// The path of one endpoint: remote EndpointSlice -> kubecluster (opened by
// remotesecret) -> registry -> network (split horizon) -> proxyview
// (generation) -> xds (delivery) -> proxy.
package discovery

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	meshv1alpha1 "istio.io/api/mesh/v1alpha1"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/isthmus-mesh/isthmus/internal/dashboard"
	"github.com/isthmus-mesh/isthmus/internal/discovery/ca"
	"github.com/isthmus-mesh/isthmus/internal/discovery/inject"
	"github.com/isthmus-mesh/isthmus/internal/discovery/istioconfig"
	"github.com/isthmus-mesh/isthmus/internal/discovery/jwks"
	"github.com/isthmus-mesh/isthmus/internal/discovery/kubecluster"
	"github.com/isthmus-mesh/isthmus/internal/discovery/leader"
	"github.com/isthmus-mesh/isthmus/internal/discovery/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/discovery/remoteistiod"
	"github.com/isthmus-mesh/isthmus/internal/discovery/remotesecret"
	"github.com/isthmus-mesh/isthmus/internal/discovery/rootcert"
	"github.com/isthmus-mesh/isthmus/internal/discovery/secretaccess"
	"github.com/isthmus-mesh/isthmus/internal/discovery/serviceentry"
	"github.com/isthmus-mesh/isthmus/internal/discovery/traffic"
	"github.com/isthmus-mesh/isthmus/internal/discovery/workloadentry"
	"github.com/isthmus-mesh/isthmus/internal/discovery/xds"
	"github.com/isthmus-mesh/isthmus/internal/rungroup"
	"github.com/isthmus-mesh/isthmus/internal/validation"
	"github.com/isthmus-mesh/isthmus/internal/version"
)

// Config is the control plane's settings, validated once at start.
type Config struct {
	// ClusterID is the cluster the control plane runs in (its proxies' CLUSTER_ID).
	ClusterID string
	// Network is the default network of the local cluster's endpoints.
	Network string
	// Namespace is where the mesh lives and remote secrets are read.
	Namespace string
	// Domain is the cluster DNS domain.
	Domain string
	// XDSAddr serves plaintext ADS (Istio's 15010); empty turns it off.
	XDSAddr string
	// SecureAddr serves ADS and the certificate service over TLS (Istio's
	// 15012); callers authenticate with a service-account token.
	SecureAddr string
	// TrustDomain of the workload identities; empty takes meshConfig.trustDomain
	// from the ConfigMap istio, else cluster.local.
	TrustDomain string
	// WorkloadCertTTL is the default lifetime of workload certificates.
	WorkloadCertTTL time.Duration
	// WebhookAddr serves sidecar injection (/inject) and configuration
	// validation (/validate) over TLS (Istio's 15017);
	// empty turns it off.
	WebhookAddr string
	// ProxyImage is what injected containers run (an isthmus image).
	ProxyImage string
	// ProxyPrivileged runs injected istio-proxy containers privileged.
	ProxyPrivileged bool
	// SidecarDiscoveryAddress is the control plane as injected proxies
	// reach it (default istiod.<namespace>.svc:15012).
	SidecarDiscoveryAddress string
	// MonitoringAddr serves /metrics, /ready and /debug (Istio's 15014).
	MonitoringAddr string
	// RemoteSyncTimeout bounds how long an unsynced remote cluster delays readiness.
	RemoteSyncTimeout time.Duration
	Client            kubernetes.Interface
	// Reviews is the local cluster's client for token and access reviews
	// only (see Clients); nil shares Client.
	Reviews     kubernetes.Interface
	IstioClient istioclient.Interface
	Log         *slog.Logger
	// Instance names this replica (its pod) to Istio's istioctl.
	Instance string
}

// Validate reports the first missing setting.
func (c Config) Validate() error {
	switch {
	case c.ClusterID == "":
		return errors.New("cluster ID is required (--cluster-id, the clusterName of the install)")
	case c.Namespace == "":
		return errors.New("namespace is required")
	case c.Client == nil || c.IstioClient == nil:
		return errors.New("the Kubernetes and Istio clients are required")
	}
	return nil
}

// Run serves until ctx ends. It reads top to bottom: the mesh's settings,
// the registry, the CA, the clusters, the Istio configuration and the xDS
// server, the TLS servers and their listeners; then every long-lived part
// runs in one group until ctx ends or one of them fails.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Log
	if limit, ok := memoryLimit(); ok {
		log.Info("memory limit from the container", "GOMEMLIMIT", limit)
	}
	metrics := prometheus.NewRegistry()
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// The mesh's settings: meshConfig fills what flags left empty.
	mesh, err := meshconfig.Load(ctx, cfg.Client, cfg.Namespace)
	if err != nil {
		return err
	}
	cfg = cfg.withMesh(mesh)
	reg := registry.New()
	var meshGateways []registry.Gateway
	for _, g := range mesh.Gateways() {
		meshGateways = append(meshGateways, registry.Gateway{Network: g.Network, Address: g.Address, Port: int32(g.Port)})
	}
	if len(meshGateways) > 0 {
		reg.SetGateways("meshNetworks", meshGateways)
	}

	// The CA, and the clusters whose tokens it reviews and whose namespaces
	// get its root.
	authority := &ca.Store{Client: cfg.Client, Namespace: cfg.Namespace, TrustDomain: cfg.TrustDomain, Log: log}
	if err := authority.Load(ctx); err != nil {
		return err
	}
	running := &members{m: map[string]*member{}}
	authority.Subscribe(func(*ca.Authority) { running.resyncRoots() })
	// One replica writes to the clusters; every replica serves.
	lead := leader.New(cfg.Client, cfg.Namespace, cfg.Instance, log, metrics)
	lead.OnLead = running.resyncRoots
	local, secrets := clusters(cfg, mesh, reg, authority, running, lead, metrics)

	// What each proxy gets, and who may connect for it.
	store := &istioconfig.Store{Client: cfg.IstioClient, Discovery: cfg.Client.Discovery(), Kube: cfg.Client, Log: log}
	rootNamespace := cfg.Namespace
	if r := mesh.Config.GetRootNamespace(); r != "" {
		rootNamespace = r
	}
	// RequestAuthentications' jwksUri keys, fetched here and sent inline.
	keys := &jwks.Resolver{Log: log}
	generator := &proxyview.Generator{Registry: reg, Config: store, Domain: cfg.Domain, RootNamespace: rootNamespace, JWKS: keys.Keys,
		TrustDomains:      append([]string{cfg.TrustDomain}, mesh.Config.GetTrustDomainAliases()...),
		Paths:             mesh.Config.GetPathNormalization().GetNormalization(),
		NumTrustedProxies: mesh.Config.GetDefaultConfig().GetGatewayTopology().GetNumTrustedProxies(),
		RegistryOnly:      mesh.Config.GetOutboundTrafficPolicy().GetMode() == meshv1alpha1.MeshConfig_OutboundTrafficPolicy_REGISTRY_ONLY, Log: log}
	if f := mesh.Config.GetAccessLogFile(); f != "" {
		generator.AccessLog = &proxyview.AccessLog{Path: f, JSON: mesh.Config.GetAccessLogEncoding() == meshv1alpha1.MeshConfig_JSON}
	}
	generator.Tracing = proxyview.TracingOf(mesh.Config)
	ready := &readiness{localSynced: local.Synced, listed: secrets.Listed, remotes: secrets.Statuses}
	xdsServer := xds.NewServer(xds.ServerConfig{Registry: reg, Generator: generator, Ready: ready.check,
		// Gateways' TLS credentials only to authenticated gateways whose
		// service account may read them, asked of the gateway's own cluster.
		Credentials:   &secretaccess.Authorizer{Client: running.reviews},
		ConfigCluster: cfg.ClusterID, SystemNamespace: rootNamespace, Instance: instance(cfg),
		Log: log, Metrics: metrics})
	store.Subscribe(xdsServer.Trigger)
	// ServiceEntries become registry services (their own shard).
	entries := &serviceentry.Source{Registry: reg, Entries: store.ServiceEntries, Workloads: store.WorkloadEntries, Cluster: cfg.ClusterID,
		Resolver: net.DefaultResolver, Log: log}
	store.Subscribe(entries.Changed)
	// WorkloadEntries: endpoints of the config cluster's Services, and
	// workloads their proxies connect as.
	workloads := &workloadentry.Source{Registry: reg, Cluster: cfg.ClusterID, Entries: store.WorkloadEntries, Log: log}
	store.Subscribe(workloads.Changed)
	keys.OnChange = func() { xdsServer.TriggerFor("a JWKS key set changed") }
	auth := &ca.KubeAuthenticator{LocalCluster: cfg.ClusterID, Client: running.reviews, Clusters: running.ids}

	// The TLS servers: the control plane's own certificate first.
	serving := &ca.ServingCert{Store: authority, Log: log, DNSNames: []string{
		"istiod." + cfg.Namespace + ".svc", "istiod." + cfg.Namespace + ".svc." + cfg.Domain,
		"istiod-remote." + cfg.Namespace + ".svc",
	}}
	if err := serving.Issue(); err != nil {
		return fmt.Errorf("control plane certificate: %w", err)
	}
	plainServer, secureServer := grpcServers(serving, auth)
	xdsServer.Register(plainServer, secureServer)
	// The proxies' request counters, pushed beside xDS, for the live
	// topology view; each stream held to the caller its token proved.
	flows := traffic.New(metrics)
	flows.Identify = func(ctx context.Context) (traffic.Caller, bool) {
		id, ok := xds.IdentityOf(ctx)
		return traffic.Caller{Cluster: id.Cluster, Namespace: id.Namespace, ServiceAccount: id.ServiceAccount}, ok
	}
	flows.Register(plainServer, secureServer)
	if err := ca.NewServer(authority, auth, cfg.TrustDomain, cfg.WorkloadCertTTL, log).Register(secureServer, metrics); err != nil {
		return err
	}
	view := meshView{cfg: cfg, local: local, secrets: secrets, reg: reg, xds: xdsServer, traffic: flows}
	monitoring := &http.Server{Handler: monitoringMux(cfg, metrics, reg, ready, local, secrets, xdsServer, view), ReadHeaderTimeout: 10 * time.Second}
	var webhooks *http.Server
	if cfg.WebhookAddr != "" {
		webhooks = webhookServer(cfg, mesh, serving, log)
	}
	ls, err := listen(cfg)
	if err != nil {
		return err
	}

	// Every long-lived part, caches before what serves from them.
	g, _ := rungroup.New(ctx)
	g.Go("local cluster", local.Run)
	g.Go("remote secrets", secrets.Run)
	g.Go("istio config", store.Run)
	g.Go("service entries", entries.Run)
	g.Go("workload entries", workloads.Run)
	staleMesh := prometheus.NewGauge(prometheus.GaugeOpts{Name: "isthmus_mesh_config_stale",
		Help: "1 when ConfigMap istio differs from the mesh config the control plane started with (it applies at the next start)"})
	metrics.MustRegister(staleMesh)
	g.Go("mesh config", func(ctx context.Context) error {
		warned := false
		return mesh.Stale(ctx, cfg.Client, cfg.Namespace, 30*time.Second, func(stale bool) {
			if stale && !warned {
				log.Warn("ConfigMap istio changed since the control plane started; it applies at the next start: re-run isthmus install (which rolls the control plane) or kubectl rollout restart deployment/istiod")
			}
			warned = stale
			staleMesh.Set(map[bool]float64{true: 1}[stale])
		})
	})
	g.Go("jwks", keys.Run)
	g.Go("ca", authority.Run)
	g.Go("leader election", lead.Run)
	g.Go("control plane certificate", serving.Run)
	g.Go("xds push", xdsServer.Run)
	if ls.plain != nil {
		g.Serve("plaintext xDS server", func() error { return plainServer.Serve(ls.plain) }, plainServer.Stop)
	}
	g.Serve("secure xDS and CA server", func() error { return secureServer.Serve(ls.secure) }, secureServer.Stop)
	if webhooks != nil {
		g.Serve("webhook server", func() error { return httpServe(webhooks, tls.NewListener(ls.webhook, webhooks.TLSConfig)) }, func() { _ = webhooks.Close() })
	}
	g.Serve("monitoring server", func() error { return httpServe(monitoring, ls.monitoring) }, func() { _ = monitoring.Close() })
	log.Info("control plane serving", "cluster", cfg.ClusterID, "network", cfg.Network, "xds", cfg.XDSAddr,
		"secure", ls.secure.Addr().String(), "monitoring", ls.monitoring.Addr().String(), "webhook", cfg.WebhookAddr,
		"ca", authority.Current().Source, "trustDomain", cfg.TrustDomain, "meshID", mesh.MeshID())
	return g.Wait()
}

// withMesh fills from meshConfig the settings flags left empty.
func (c Config) withMesh(mesh *meshconfig.Mesh) Config {
	if c.TrustDomain == "" {
		c.TrustDomain = mesh.Config.GetTrustDomain()
	}
	if c.TrustDomain == "" {
		c.TrustDomain = "cluster.local"
	}
	if c.Network == "" {
		c.Network = mesh.NetworkOf(c.ClusterID)
	}
	if c.SidecarDiscoveryAddress == "" {
		c.SidecarDiscoveryAddress = "istiod." + c.Namespace + ".svc:15012"
	}
	return c
}

// clusters makes the local cluster's controller and the remote secrets'
// controller, which makes one per remote cluster.
func clusters(cfg Config, mesh *meshconfig.Mesh, reg *registry.Registry, authority *ca.Store, running *members, lead *leader.Elector, metrics prometheus.Registerer) (*meshCluster, *remotesecret.Controller) {
	root := func() []byte { return authority.Current().RootPEM() }
	newCluster := func(id string, client, reviews kubernetes.Interface, network string) *meshCluster {
		roots := rootcert.New(client, id, root, cfg.Log)
		roots.Leading = lead.Leading
		var follower *remoteistiod.Follower
		if id != cfg.ClusterID {
			// A remote is written to only when it names this cluster.
			roots.Lead, roots.SystemNamespace = cfg.ClusterID, cfg.Namespace
			follower = &remoteistiod.Follower{Client: client, Cluster: id, Namespace: cfg.Namespace, Log: cfg.Log,
				Managed: func(ns *corev1.Namespace) bool { return lead.Leading() && rootcert.Manages(ns, cfg.ClusterID) },
				Known: func(ctx context.Context, name string) error {
					return ownLoadBalancer(ctx, cfg.Client, cfg.Namespace, cfg.ClusterID, name)
				}}
		}
		return &meshCluster{
			Controller: kubecluster.New(kubecluster.Config{ID: id, Client: client, SystemNamespace: cfg.Namespace,
				DefaultNetwork: network, Domain: cfg.Domain, Registry: reg, Log: cfg.Log}),
			id: id, reviews: reviews, members: running, roots: roots, follower: follower,
		}
	}
	reviews := cfg.Reviews
	if reviews == nil {
		reviews = cfg.Client
	}
	local := newCluster(cfg.ClusterID, cfg.Client, reviews, cfg.Network)
	secrets := &remotesecret.Controller{
		Client: cfg.Client, Namespace: cfg.Namespace, LocalCluster: cfg.ClusterID,
		NewCluster: func(id string, rc *rest.Config) (remotesecret.Cluster, error) {
			client, reviews, err := Clients(rc)
			if err != nil {
				return nil, err
			}
			return newCluster(id, client, reviews, mesh.NetworkOf(id)), nil
		},
		Remove: reg.RemoveCluster, SyncTimeout: cfg.RemoteSyncTimeout, Log: cfg.Log, Metrics: metrics,
	}
	return local, secrets
}

// ownLoadBalancer says whether name is the load balancer hostname of a
// Service in the control plane's own namespace (its east-west gateway's):
// the only names the control plane resolves on a remote's behalf.
func ownLoadBalancer(ctx context.Context, client kubernetes.Interface, namespace, cluster, name string) error {
	svcs, err := client.CoreV1().Services(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, s := range svcs.Items {
		for _, in := range s.Status.LoadBalancer.Ingress {
			if in.Hostname != "" && strings.EqualFold(in.Hostname, name) {
				return nil
			}
		}
	}
	return fmt.Errorf("it is not the load balancer hostname of a Service in %s's %s (set it to what `isthmus gateway address --context %s` prints)", cluster, namespace, cluster)
}

// grpcServers are the plaintext xDS server (Istio's 15010) and the TLS one
// for xDS and the CA (15012), where every stream proves who it is with a
// token, as istiod's XDS_AUTH; xds then holds the node to the token's pod.
func grpcServers(serving *ca.ServingCert, auth *ca.KubeAuthenticator) (plain, secure *grpc.Server) {
	keep := []grpc.ServerOption{
		xds.ServerOption(), xds.ReadBuffers(),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}
	plain = grpc.NewServer(keep...)
	secure = grpc.NewServer(append(keep,
		grpc.Creds(credentials.NewTLS(&tls.Config{GetCertificate: serving.GetCertificate, MinVersion: tls.VersionTLS12})),
		grpc.StreamInterceptor(xds.Authenticated(func(ctx context.Context) (xds.Identity, error) {
			who, err := auth.Authenticate(ctx)
			return xds.Identity{Cluster: who.Cluster, Namespace: who.Namespace, ServiceAccount: who.ServiceAccount}, err
		})))...)
	return plain, secure
}

// webhookServer serves sidecar injection and configuration validation.
func webhookServer(cfg Config, mesh *meshconfig.Mesh, serving *ca.ServingCert, log *slog.Logger) *http.Server {
	injector := &inject.Config{Image: cfg.ProxyImage, Privileged: cfg.ProxyPrivileged, ClusterID: cfg.ClusterID, Network: cfg.Network,
		DiscoveryAddress: cfg.SidecarDiscoveryAddress, MeshID: mesh.MeshID(), ProxyMetadata: mesh.Config.GetDefaultConfig().GetProxyMetadata(),
		PrometheusMerge: mesh.Config.GetEnablePrometheusMerge() == nil || mesh.Config.GetEnablePrometheusMerge().GetValue(), Log: log}
	mux := http.NewServeMux()
	mux.Handle("/inject", injector.Handler())
	mux.Handle("/inject/", injector.Handler())
	mux.Handle("/validate", validation.Handler(log))
	return &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		TLSConfig: &tls.Config{GetCertificate: serving.GetCertificate, MinVersion: tls.VersionTLS12}}
}

// monitoringMux is the monitoring port: metrics, readiness, debug views.
func monitoringMux(cfg Config, metrics *prometheus.Registry, reg *registry.Registry, ready *readiness, local *meshCluster, secrets *remotesecret.Controller, xdsServer *xds.Server, view dashboard.Source) *http.ServeMux {
	mux := http.NewServeMux()
	// The live topology page (isthmus dashboard port-forwards to it).
	page := dashboard.Handler(view)
	mux.Handle("/dashboard", page)
	mux.Handle("/dashboard/", page)
	mux.Handle("/metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
	// Go's profiler, as istiod serves it (its monitoring port is cluster-internal).
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready.check(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/debug/clusterz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, append([]remotesecret.Status{{ID: cfg.ClusterID, State: syncState(local.Synced())}}, secrets.Statuses()...))
	})
	mux.HandleFunc("/version", func(w http.ResponseWriter, _ *http.Request) {
		// clientVersion is Istio's version.Version, which istioctl version reads.
		writeJSON(w, map[string]any{"version": version.String(), "cluster": cfg.ClusterID,
			"clientVersion": map[string]string{"version": version.String(), "revision": version.String(), "golang_version": runtime.Version(), "status": "Clean", "tag": version.String()}})
	})
	mux.HandleFunc("/debug/syncz", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, xdsServer.Syncz()) })
	mux.HandleFunc("/debug/convergence", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, xdsServer.Convergence()) })
	mux.HandleFunc("/debug/registryz", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, dump(reg)) })
	return mux
}

// readiness is the control plane's: its own cluster synced, the remote
// secrets present at start-up read, and each of their clusters synced or
// given up on (its sync timed out, or its secret is broken). Once ready it
// stays ready, as istiod: a remote added later syncs while every replica
// keeps serving, rather than taking them all out of their Service.
type readiness struct {
	localSynced, listed func() bool
	remotes             func() []remotesecret.Status
	ready               atomic.Bool
}

func (r *readiness) check() error {
	if r.ready.Load() {
		return nil
	}
	if !r.localSynced() {
		return errors.New("local cluster not synced")
	}
	if !r.listed() {
		return errors.New("remote secrets not read yet")
	}
	for _, s := range r.remotes() {
		if s.State == "syncing" {
			return fmt.Errorf("remote cluster %s syncing", s.ID)
		}
	}
	r.ready.Store(true)
	return nil
}

// listeners are the control plane's ports (plain and webhook nil when off).
type listeners struct{ plain, secure, webhook, monitoring net.Listener }

// listen opens every port, or none: a port taken closes the others.
func listen(cfg Config) (listeners, error) {
	var ls listeners
	var opened []net.Listener
	for _, p := range []struct {
		what, addr string
		into       *net.Listener
		// optional ports are off without an address; the others then
		// listen on any free port.
		optional bool
	}{
		{"xDS", cfg.XDSAddr, &ls.plain, true}, {"secure xDS and CA", cfg.SecureAddr, &ls.secure, false},
		{"injection webhook", cfg.WebhookAddr, &ls.webhook, true}, {"monitoring", cfg.MonitoringAddr, &ls.monitoring, false},
	} {
		if p.addr == "" && p.optional {
			continue
		}
		l, err := net.Listen("tcp", p.addr)
		if err != nil {
			for _, o := range opened {
				o.Close()
			}
			return listeners{}, fmt.Errorf("%s listener: %w", p.what, err)
		}
		opened = append(opened, l)
		*p.into = l
	}
	return ls, nil
}

// httpServe serves until Close, which is a clean stop.
func httpServe(s *http.Server, l net.Listener) error {
	if err := s.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Clients makes a cluster's two API clients: one that watches and writes
// (informers, root certificates) and one only for token and access
// reviews, each with its own rate limit, so proxies' authentication and
// certificate renewals never queue behind a burst of other requests.
func Clients(rc *rest.Config) (client, reviews kubernetes.Interface, err error) {
	watch := rest.CopyConfig(rc)
	watch.QPS, watch.Burst = 100, 200
	if client, err = kubernetes.NewForConfig(watch); err != nil {
		return nil, nil, err
	}
	review := rest.CopyConfig(rc)
	review.QPS, review.Burst = 50, 100
	if reviews, err = kubernetes.NewForConfig(review); err != nil {
		return nil, nil, err
	}
	return client, reviews, nil
}

func syncState(ok bool) string {
	if ok {
		return "synced"
	}
	return "syncing"
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// registryDump is the /debug/registryz view.
type registryDump struct {
	Gateways []registry.Gateway `json:"gateways"`
	Services []serviceDump      `json:"services"`
}

type serviceDump struct {
	*registry.Service
	Endpoints []registry.Endpoint `json:"endpoints"`
}

func dump(reg *registry.Registry) registryDump {
	d := registryDump{Gateways: reg.Gateways()}
	for _, s := range reg.Services() {
		d.Services = append(d.Services, serviceDump{Service: s, Endpoints: reg.Endpoints(s.Hostname)})
	}
	return d
}

// memoryLimit keeps the Go heap under 90% of the container's memory limit
// (cgroup v2 memory.max), as istiod does, unless GOMEMLIMIT says otherwise:
// pushes to many proxies allocate in bursts, and without a limit the
// collector lets the heap double before it runs.
func memoryLimit() (int64, bool) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return 0, false
	}
	b, err := os.ReadFile("/sys/fs/cgroup/memory.max")
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n <= 0 {
		return 0, false // "max": no limit
	}
	limit := n / 10 * 9
	debug.SetMemoryLimit(limit)
	return limit, true
}

// instance is how this replica names itself in istioctl's debug answers
// (istiod's IstioControlPlaneInstance).
func instance(cfg Config) xds.ControlPlane {
	cp := xds.ControlPlane{Component: "istiod", ID: cfg.Instance}
	cp.Info.Version = version.String()
	return cp
}
