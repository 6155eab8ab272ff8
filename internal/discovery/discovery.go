// Package discovery is the control plane, istiod's role: it watches the
// clusters of the mesh (its own and those of remote secrets), keeps the
// merged registry, and serves per-proxy configuration over xDS.
//
// The path of one endpoint: remote EndpointSlice -> kubecluster (opened by
// remotesecret) -> registry -> network (split horizon) -> xds -> proxy.
package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/client-go/kubernetes"

	"github.com/isthmus-mesh/isthmus/internal/discovery/config"
	"github.com/isthmus-mesh/isthmus/internal/discovery/kubecluster"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/discovery/remotesecret"
	"github.com/isthmus-mesh/isthmus/internal/discovery/xds"
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
	// XDSAddr serves plaintext ADS (Istio's 15010).
	XDSAddr string
	// MonitoringAddr serves /metrics, /ready and /debug (Istio's 15014).
	MonitoringAddr string
	// RemoteSyncTimeout bounds how long an unsynced remote cluster delays readiness.
	RemoteSyncTimeout time.Duration
	Client            kubernetes.Interface
	IstioClient       istioclient.Interface
	Log               *slog.Logger
}

// Validate reports the first missing setting.
func (c Config) Validate() error {
	switch {
	case c.ClusterID == "":
		return errors.New("cluster ID is required (--cluster-id, the clusterName of the install)")
	case c.Namespace == "":
		return errors.New("namespace is required")
	case c.Client == nil || c.IstioClient == nil:
		return errors.New("Kubernetes and Istio clients are required")
	}
	return nil
}

// Run serves until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Log
	metrics := prometheus.NewRegistry()
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg := registry.New()
	newCluster := func(id string, client kubernetes.Interface, network string) *kubecluster.Controller {
		return kubecluster.New(kubecluster.Config{ID: id, Client: client, SystemNamespace: cfg.Namespace,
			DefaultNetwork: network, Domain: cfg.Domain, Registry: reg, Log: log})
	}
	local := newCluster(cfg.ClusterID, cfg.Client, cfg.Network)
	secrets := &remotesecret.Controller{
		Client: cfg.Client, Namespace: cfg.Namespace, LocalCluster: cfg.ClusterID,
		NewCluster: func(id string, c kubernetes.Interface) remotesecret.Cluster { return newCluster(id, c, "") },
		Remove:     reg.RemoveCluster, SyncTimeout: cfg.RemoteSyncTimeout, Log: log, Metrics: metrics,
	}
	xdsServer := xds.NewServer(reg, log, metrics)
	xdsServer.Domain = cfg.Domain
	store := &config.Store{Client: cfg.IstioClient, Discovery: cfg.Client.Discovery(), Log: log}
	store.Subscribe(xdsServer.Trigger)
	xdsServer.Config = store

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	grpcServer := grpc.NewServer(
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	xdsServer.Register(ctx, grpcServer)
	xl, err := net.Listen("tcp", cfg.XDSAddr)
	if err != nil {
		return fmt.Errorf("xDS listener: %w", err)
	}
	ml, err := net.Listen("tcp", cfg.MonitoringAddr)
	if err != nil {
		xl.Close()
		return fmt.Errorf("monitoring listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !local.Synced() {
			http.Error(w, "local cluster not synced", http.StatusServiceUnavailable)
			return
		}
		for _, s := range secrets.Statuses() {
			if s.State == "syncing" {
				http.Error(w, "remote cluster "+s.ID+" syncing", http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/debug/clusterz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, append([]remotesecret.Status{{ID: cfg.ClusterID, State: syncState(local.Synced()), Secret: "(local)"}}, secrets.Statuses()...))
	})
	mux.HandleFunc("/debug/syncz", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, xdsServer.Status()) })
	mux.HandleFunc("/debug/registryz", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, dump(reg)) })
	httpServer := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	errc := make(chan error, 6)
	run := func(name string, fn func() error) {
		go func() {
			if err := fn(); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
				return
			}
			errc <- nil
		}()
	}
	run("local cluster", func() error { return local.Run(ctx) })
	run("remote secrets", func() error { return secrets.Run(ctx) })
	run("istio config", func() error { return store.Run(ctx) })
	run("xds push", func() error { return xdsServer.Run(ctx) })
	run("xds server", func() error { return grpcServer.Serve(xl) })
	run("monitoring", func() error {
		if err := httpServer.Serve(ml); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	log.Info("control plane serving", "cluster", cfg.ClusterID, "network", cfg.Network, "xds", xl.Addr().String(), "monitoring", ml.Addr().String())
	var first error
	select {
	case <-ctx.Done():
	case first = <-errc:
	}
	cancel()
	grpcServer.Stop()
	_ = httpServer.Close()
	return first
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
