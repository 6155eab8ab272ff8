package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/config/metrics/v3"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/isthmus-mesh/isthmus/internal/nds"
	"github.com/isthmus-mesh/isthmus/internal/proxy/admin"
	"github.com/isthmus-mesh/isthmus/internal/proxy/apphealth"
	"github.com/isthmus-mesh/isthmus/internal/proxy/dnsproxy"
	"github.com/isthmus-mesh/isthmus/internal/proxy/identity"
	"github.com/isthmus-mesh/isthmus/internal/proxy/mergedmetrics"
	"github.com/isthmus-mesh/isthmus/internal/proxy/metricsink"
	"github.com/isthmus-mesh/isthmus/internal/proxy/telemetry"
	"github.com/isthmus-mesh/isthmus/internal/proxy/xdsclient"
	"github.com/isthmus-mesh/isthmus/internal/rungroup"
	"github.com/isthmus-mesh/isthmus/internal/version"
)

// Node is who the proxy says it is to the control plane (Istio's node ID
// and metadata).
type Node struct {
	Type      string // sidecar or router
	IP        string
	Pod       string
	Namespace string
	Domain    string
	// Metadata: CLUSTER_ID, NETWORK, SERVICE_ACCOUNT, REQUESTED_NETWORK_VIEW, ...
	Metadata map[string]string
	Labels   map[string]string
}

// ID is Istio's node ID: type~ip~pod.namespace~namespace.svc.domain.
func (n Node) ID() string {
	return fmt.Sprintf("%s~%s~%s.%s~%s.svc.%s", n.Type, n.IP, n.Pod, n.Namespace, n.Namespace, n.Domain)
}

func (n Node) proto() *core.Node {
	md := map[string]any{}
	for k, v := range n.Metadata {
		md[k] = v
	}
	if len(n.Labels) > 0 {
		l := map[string]any{}
		for k, v := range n.Labels {
			l[k] = v
		}
		md["LABELS"] = l
	}
	md["NAMESPACE"] = n.Namespace
	if _, ok := md["ISTIO_VERSION"]; !ok {
		md["ISTIO_VERSION"] = version.String()
	}
	md["INSTANCE_IPS"] = n.IP
	s, _ := structpb.NewStruct(md)
	return &core.Node{Id: n.ID(), Metadata: s, UserAgentName: "isthmus"}
}

// workloadName is the injector's WORKLOAD_NAME, else the pod name without
// the ReplicaSet and pod suffixes (profile-7d9f8c6b5d-x2x9z -> profile).
func workloadName(meta, pod string) string {
	if meta != "" {
		return meta
	}
	parts := strings.Split(pod, "-")
	switch {
	case len(parts) >= 3:
		return strings.Join(parts[:len(parts)-2], "-")
	case len(parts) == 2:
		return parts[0]
	}
	return pod
}

// RunConfig is a proxy process.
type RunConfig struct {
	Node Node
	// DiscoveryAddr is the control plane, e.g. istiod.istio-system.svc:15012.
	DiscoveryAddr string
	// Plaintext uses xDS without TLS or token (the control plane's 15010),
	// for development.
	Plaintext bool
	// CAAddr is the certificate service; empty with Plaintext means no
	// workload certificate (plaintext data plane).
	CAAddr       string
	ServerName   string
	RootCertFile string
	TokenFile    string
	CertTTL      time.Duration
	AdminAddr    string
	StatusAddr   string
	StatsAddr    string
	// AppHealthAddr answers the application's rewritten kubelet probes
	// (Istio's 15020 /app-health/...) from AppProbers.
	AppHealthAddr string
	AppProbers    apphealth.Probers
	// AppMetrics is where the application serves its metrics, which the
	// app health port's /stats/prometheus merges with the proxy's (nil:
	// the proxy's alone).
	AppMetrics *mergedmetrics.App
	// AccessLog is where request lines go ("" for none, /dev/stdout as
	// meshConfig.accessLogFile usually says).
	AccessLog string
	// AccessLogEncoding is TEXT (Istio's default line) or JSON.
	AccessLogEncoding string
	// DrainDuration is how long open connections get after SIGTERM.
	DrainDuration time.Duration
	// DNSAddr is where the sidecar answers the app's DNS from the control
	// plane's name table (ISTIO_META_DNS_CAPTURE: Istio's 127.0.0.1:15053,
	// where proxy init --redirect-dns sends it); empty: no DNS proxy.
	DNSAddr string
	Log     *slog.Logger
	// LogLevel is Log's level, which the admin port's /logging changes.
	LogLevel *slog.LevelVar
}

// gcPercent is the proxy's GOGC unless the environment sets one. A
// sidecar's live heap is small (about 6 MB at 1000 rps) and it allocates
// little per request, so Go's default (collect when the heap doubles)
// mostly keeps garbage resident: 50 keeps 2-3 MB less of it (37-38 ->
// 35 MB RSS at 1000 rps, BENCHMARKS.md) for collections twice as often,
// which cost well under 0.1% of its CPU there.
const gcPercent = 50

// tuneGC sets gcPercent unless GOGC is set.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
}

// Run serves until ctx ends (or the admin port's quitquitquit), then
// drains. The certificate agent starts first: nothing is served before the
// workload has its certificate. Every part runs in one group, so a failing
// part is named and stops the proxy; the status and admin ports answer
// until the drain is over.
func Run(ctx context.Context, cfg RunConfig) error {
	log := cfg.Log
	tuneGC()
	ctx, quit := context.WithCancel(ctx)
	defer quit()
	g, gctx := rungroup.New(ctx)
	stop := func(err error) error {
		quit()
		if werr := g.Wait(); err == nil {
			err = werr
		}
		return err
	}
	var agent *identity.Agent
	if cfg.CAAddr != "" {
		root, err := os.ReadFile(cfg.RootCertFile)
		if err != nil {
			return fmt.Errorf("root certificate to verify the control plane: %w", err)
		}
		agent, err = identity.New(identity.Config{CAAddr: cfg.CAAddr, CAServerName: cfg.ServerName, RootCert: root,
			TokenFile: cfg.TokenFile, ClusterID: cfg.Node.Metadata["CLUSTER_ID"], TTL: cfg.CertTTL, Log: log})
		if err != nil {
			return err
		}
		g.Go("certificate agent", agent.Run)
	}
	opts := []grpc.DialOption{grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		// Redial a control plane that went away from 500 ms up to 2 s
		// (gRPC's default: 1 s up to 120 s): its Service usually has
		// another replica, and one that was gone for minutes gets its
		// proxies back within seconds of its return (a remote's proxies
		// after the east-west gateway, which redials the same way).
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 500 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 5 * time.Second})}
	var callCtx func(context.Context) (context.Context, error)
	switch {
	case cfg.Plaintext:
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	case agent == nil:
		return errors.New("xDS over TLS needs the CA address (--ca-address) for the root and token")
	default:
		opts = append(opts, grpc.WithTransportCredentials(agent.ControlPlaneCredentials()))
		callCtx = agent.CallMetadata
	}
	target := cfg.DiscoveryAddr
	if !strings.Contains(target, "://") {
		target = "passthrough:///" + target
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return stop(fmt.Errorf("control plane %s: %w", cfg.DiscoveryAddr, err))
	}
	defer conn.Close()

	if agent != nil {
		log.Info("waiting for the workload certificate before serving", "ca", cfg.CAAddr)
		select {
		case <-agent.Ready():
		case <-gctx.Done():
			return stop(nil)
		}
	}
	principal := "unknown"
	if agent != nil {
		principal = agent.ID().String()
	}
	md := cfg.Node.Metadata
	self := telemetry.NewSelf(cfg.Node.ID(), workloadName(md["WORKLOAD_NAME"], cfg.Node.Pod), cfg.Node.Namespace, md["CLUSTER_ID"], principal, cfg.Node.Labels)
	popts := Options{Identity: agent, Self: self, Log: log, AccessLogJSON: cfg.AccessLogEncoding == "JSON"}
	if cfg.AccessLog != "" {
		f, own, err := openAccessLog(cfg.AccessLog)
		if err != nil {
			return stop(fmt.Errorf("access log: %w", err))
		}
		if own {
			defer f.Close()
		}
		popts.AccessLog = f
	}
	p := New(popts)
	xcfg := xdsclient.Config{Node: cfg.Node.proto(), Conn: conn, CallContext: callCtx, Applier: p, Log: log}
	var names *dnsproxy.Server
	if cfg.DNSAddr != "" {
		// Before the first table, queries go to the cluster's DNS: the
		// app may start before the control plane answered.
		dns, err := dnsproxy.New(dnsproxy.Options{Namespace: cfg.Node.Namespace, Domain: cfg.Node.Namespace + ".svc." + cfg.Node.Domain,
			ForwardBeforeSync: true, Registerer: p.Metrics()})
		if err != nil {
			return stop(fmt.Errorf("DNS proxy: %w", err))
		}
		if _, err := dns.Listen(cfg.DNSAddr); err != nil {
			return stop(fmt.Errorf("DNS proxy: %w", err))
		}
		g.Go("DNS proxy", dns.Run)
		xcfg.Applier = &NamesApplier{Next: p, DNS: dns}
		names = dns
		xcfg.Extra = []string{nds.TypeURL}
		log.Info("answering DNS from the control plane's name table", "addr", cfg.DNSAddr, "upstreams", dns.Upstreams())
	}
	xc := xdsclient.New(xcfg)
	ready := func() error {
		select {
		case <-p.Ready():
		default:
			return errors.New("no configuration from the control plane yet")
		}
		if p.Draining() {
			return errors.New("draining")
		}
		// As Istio's agent: with DNS capture, not ready before the name
		// table, or a mesh name the app asks for could go unanswered.
		if names != nil && !names.Ready() {
			return errors.New("no DNS name table from the control plane yet")
		}
		return nil
	}
	adm := &admin.Server{Proxy: p, XDS: xc, Ready: ready, Quit: quit, Bootstrap: cfg.bootstrap(), Level: cfg.LogLevel}
	if agent != nil {
		adm.Certs = agent
	}
	status := http.NewServeMux()
	status.HandleFunc("/healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	stats := http.NewServeMux()
	stats.Handle("/stats/prometheus", promhttp.HandlerFor(p.Metrics(), promhttp.HandlerOpts{}))
	// 15020: the app's rewritten probes, and the merged metrics the pod's
	// prometheus.io annotations point at.
	appPort := http.NewServeMux()
	appPort.Handle(mergedmetrics.Path, mergedmetrics.Handler(p.Metrics(), cfg.AppMetrics, p.Metrics(), log))
	appPort.Handle("/", cfg.AppProbers.Handler())
	// When the group stops, the proxy drains; the ports close after it.
	drained := make(chan struct{})
	g.Go("drain", func(ctx context.Context) error {
		<-ctx.Done()
		defer close(drained)
		log.Info("draining", "for", cfg.DrainDuration)
		dctx, cancel := context.WithTimeout(context.Background(), cfg.DrainDuration)
		defer cancel()
		if err := p.Drain(dctx); err != nil {
			log.Warn("drain", "err", err)
		}
		return nil
	})
	for _, s := range []struct {
		name, addr string
		h          http.Handler
	}{{"admin", cfg.AdminAddr, adm.Handler()}, {"status", cfg.StatusAddr, status}, {"stats", cfg.StatsAddr, stats}, {"app health", cfg.AppHealthAddr, appPort}} {
		if s.addr == "" {
			continue
		}
		l, err := net.Listen("tcp", s.addr)
		if err != nil {
			return stop(fmt.Errorf("%s port: listen %s: %w", s.name, s.addr, err))
		}
		srv := &http.Server{Handler: s.h, ReadHeaderTimeout: 10 * time.Second}
		g.Serve(s.name+" port", func() error {
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		}, func() { <-drained; _ = srv.Close() })
	}
	log.Info("proxy starting", "node", cfg.Node.ID(), "discovery", cfg.DiscoveryAddr, "plaintext", cfg.Plaintext)
	g.Go("xDS client", xc.Run)
	sink := &metricsink.Sink{Conn: conn, Node: cfg.Node.proto(), Gatherer: p.Metrics(), Every: statsFlush, CallContext: callCtx, Log: log}
	g.Go("metrics sink", sink.Run)
	return g.Wait()
}

// statsFlush is how often the proxy pushes its metrics (Envoy's default
// stats_flush_interval).
const statsFlush = 5 * time.Second

// bootstrap is the proxy's start as Envoy's bootstrap would say it: its
// node, its admin address, and its control plane as the one ADS source
// (incremental, as the proxy asks).
func (cfg RunConfig) bootstrap() *bootstrapv3.Bootstrap {
	ads := &core.ConfigSource{ResourceApiVersion: core.ApiVersion_V3, ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}}
	b := &bootstrapv3.Bootstrap{Node: cfg.Node.proto(),
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{CdsConfig: ads, LdsConfig: ads,
			AdsConfig: &core.ApiConfigSource{ApiType: core.ApiConfigSource_DELTA_GRPC, TransportApiVersion: core.ApiVersion_V3,
				GrpcServices: []*core.GrpcService{{TargetSpecifier: &core.GrpcService_GoogleGrpc_{GoogleGrpc: &core.GrpcService_GoogleGrpc{
					TargetUri: cfg.DiscoveryAddr, StatPrefix: "xds-grpc"}}}}}}}
	// The metrics sink: Istio's request counters to the control plane,
	// on the xDS connection, every flush interval.
	sink, _ := anypb.New(&metricsv3.MetricsServiceConfig{TransportApiVersion: core.ApiVersion_V3, EmitTagsAsLabels: true,
		GrpcService: b.DynamicResources.AdsConfig.GrpcServices[0]})
	b.StatsSinks = []*metricsv3.StatsSink{{Name: "envoy.stat_sinks.metrics_service", ConfigType: &metricsv3.StatsSink_TypedConfig{TypedConfig: sink}}}
	b.StatsFlushInterval = durationpb.New(statsFlush)
	if host, port, err := net.SplitHostPort(cfg.AdminAddr); err == nil {
		if p, err := strconv.Atoi(port); err == nil {
			b.Admin = &bootstrapv3.Admin{Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
				Address: host, PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(p)}}}}}
		}
	}
	return b
}
