// Package admin is the proxy's admin interface on localhost:15000, shaped
// like Envoy's so istioctl-style tools can read it: /config_dump (Envoy's
// ConfigDump JSON of what the proxy accepted), /clusters (text, or
// ?format=json as envoy.admin.v3.Clusters), /listeners, /stats,
// /stats/prometheus, /ready, /xds (stream state, last NACK), and POST
// /drain (or Envoy's /drain_listeners) and /quitquitquit.
package admin

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"slices"
	"sort"
	"strings"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	// config_dump renders every Any the control plane sends, including
	// types the proxy reads by name only and never decodes: their
	// messages must be registered in the proxy binary too (the isthmus
	// binary had them through the control plane's packages).
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
	"github.com/isthmus-mesh/isthmus/internal/proxy/xdsclient"
)

// Proxy is what the admin reads of the data plane.
type Proxy interface {
	Snapshot() *config.Snapshot
	Metrics() *prometheus.Registry
	Drain(ctx context.Context) error
}

// XDS is what the admin reads of the xDS stream.
type XDS interface {
	Resources() (xdsclient.State, map[string]map[string]string)
	Status() xdsclient.Status
}

// Server serves the admin endpoints.
type Server struct {
	Proxy Proxy
	XDS   XDS
	// Ready reports whether the proxy serves (config and certificate in).
	Ready func() error
	// Quit asks the process to exit.
	Quit func()
	// Certs is the workload identity, nil without mTLS; config_dump shows
	// it as Envoy's SDS secrets "default" and "ROOTCA" (proxy-config secret).
	Certs Certs
	// Bootstrap is how the proxy started (its node and control plane), as
	// Envoy's bootstrap: config_dump's first section (proxy-config bootstrap).
	Bootstrap *bootstrapv3.Bootstrap
	// Level is the proxy's log level, which /logging reads and sets
	// (istioctl proxy-config log); nil: /logging is not served.
	Level *slog.LevelVar
}

// Certs is what the identity agent holds.
type Certs interface {
	Leaf() *x509.Certificate
	BundlePEM() []byte
}

// secrets is the SecretsConfigDump of the workload certificate and root
// and of the SDS secrets from the control plane (private keys redacted, as
// Envoy prints them).
func secrets(c Certs, sds map[string]*anypb.Any, versions map[string]string) *adminv3.SecretsConfigDump {
	out := &adminv3.SecretsConfigDump{}
	add := func(name, version string, sec *tlsv3.Secret) {
		a, err := anypb.New(sec)
		if err == nil {
			out.DynamicActiveSecrets = append(out.DynamicActiveSecrets, &adminv3.SecretsConfigDump_DynamicSecret{Name: name, VersionInfo: version, Secret: a})
		}
	}
	names := make([]string, 0, len(sds))
	for n := range sds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		var sec tlsv3.Secret
		if err := sds[n].UnmarshalTo(&sec); err != nil {
			continue
		}
		if tc := sec.GetTlsCertificate(); tc != nil && tc.GetPrivateKey() != nil {
			tc.PrivateKey = &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: "[redacted]"}}
		}
		add(n, versions[n], &sec)
	}
	if c == nil {
		return out
	}
	if leaf := c.Leaf(); leaf != nil {
		chain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})
		add("default", "", &tlsv3.Secret{Name: "default", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: chain}}}}})
	}
	if root := c.BundlePEM(); len(root) > 0 {
		add("ROOTCA", "", &tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: root}}}}})
	}
	return out
}

// Handler is the admin mux.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/config_dump", s.configDump)
	// Go's profiler, for the benchmarks (the admin port is localhost only).
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/clusters", s.clusters)
	mux.HandleFunc("/listeners", s.listeners)
	mux.HandleFunc("/ready", s.ready)
	if s.Level != nil {
		mux.HandleFunc("/logging", s.logging)
	}
	mux.Handle("/stats/prometheus", promhttp.HandlerFor(s.Proxy.Metrics(), promhttp.HandlerOpts{}))
	mux.HandleFunc("/stats", s.stats)
	mux.HandleFunc("/xds", func(w http.ResponseWriter, _ *http.Request) {
		st := s.XDS.Status()
		fmt.Fprintf(w, "connected: %v\nacks: %v\nnacks: %v\nlast_nack: %s\n", st.Connected, st.ACKs, st.NACKs, st.LastNACK)
	})
	drain := s.post(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = s.Proxy.Drain(ctx)
	})
	mux.HandleFunc("/drain_listeners", drain) // Envoy's name
	mux.HandleFunc("/drain", drain)
	mux.HandleFunc("/quitquitquit", s.post(func() {
		if s.Quit != nil {
			s.Quit()
		}
	}))
	return mux
}

// post guards a state-changing endpoint, as Envoy does.
func (s *Server) post(fn func()) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "this endpoint changes state; use POST", http.StatusMethodNotAllowed)
			return
		}
		go fn()
		fmt.Fprintln(w, "OK")
	}
}

func (s *Server) ready(w http.ResponseWriter, _ *http.Request) {
	if err := s.Ready(); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "LIVE")
}

// ConfigDump is Envoy's ConfigDump of the accepted resources.
func ConfigDump(boot *bootstrapv3.Bootstrap, st xdsclient.State, versions map[string]map[string]string, certs Certs) *adminv3.ConfigDump {
	names := func(t string) []string {
		var out []string
		for n := range st[t] {
			out = append(out, n)
		}
		sort.Strings(out)
		return out
	}
	ver := func(t, n string) string { return versions[t][n] }
	clusters := &adminv3.ClustersConfigDump{}
	for _, n := range names(resource.ClusterType) {
		clusters.DynamicActiveClusters = append(clusters.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{VersionInfo: ver(resource.ClusterType, n), Cluster: st[resource.ClusterType][n]})
	}
	listeners := &adminv3.ListenersConfigDump{}
	for _, n := range names(resource.ListenerType) {
		listeners.DynamicListeners = append(listeners.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{Name: n,
			ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{VersionInfo: ver(resource.ListenerType, n), Listener: st[resource.ListenerType][n]}})
	}
	routes := &adminv3.RoutesConfigDump{}
	for _, n := range names(resource.RouteType) {
		routes.DynamicRouteConfigs = append(routes.DynamicRouteConfigs, &adminv3.RoutesConfigDump_DynamicRouteConfig{VersionInfo: ver(resource.RouteType, n), RouteConfig: st[resource.RouteType][n]})
	}
	endpoints := &adminv3.EndpointsConfigDump{}
	for _, n := range names(resource.EndpointType) {
		endpoints.DynamicEndpointConfigs = append(endpoints.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{VersionInfo: ver(resource.EndpointType, n), EndpointConfig: st[resource.EndpointType][n]})
	}
	dump := &adminv3.ConfigDump{}
	var msgs []proto.Message
	if boot != nil {
		msgs = append(msgs, &adminv3.BootstrapConfigDump{Bootstrap: boot})
	}
	// No extension is configured by discovery (ECDS): an empty section,
	// so proxy-config ecds says so rather than fail.
	msgs = append(msgs, clusters, &adminv3.EcdsConfigDump{}, listeners, routes, endpoints)
	if certs != nil || len(st[resource.SecretType]) > 0 {
		msgs = append(msgs, secrets(certs, st[resource.SecretType], versions[resource.SecretType]))
	}
	for _, m := range msgs {
		a, err := anypb.New(m)
		if err == nil {
			dump.Configs = append(dump.Configs, a)
		}
	}
	return dump
}

func (s *Server) configDump(w http.ResponseWriter, _ *http.Request) {
	st, versions := s.XDS.Resources()
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(ConfigDump(s.Bootstrap, st, versions, s.Certs))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

func sortedClusters(snap *config.Snapshot) []*config.Cluster {
	out := make([]*config.Cluster, 0, len(snap.Clusters))
	for _, c := range snap.Clusters {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// clusters prints endpoints as Envoy does: `name::addr::key::value` lines,
// or envoy.admin.v3.Clusters with ?format=json (istioctl proxy-config endpoints).
func (s *Server) clusters(w http.ResponseWriter, r *http.Request) {
	snap := s.Proxy.Snapshot()
	if r.URL.Query().Get("format") == "json" {
		out := &adminv3.Clusters{}
		for _, c := range sortedClusters(snap) {
			cs := &adminv3.ClusterStatus{Name: c.Name}
			for _, e := range c.Endpoints {
				health := core.HealthStatus_HEALTHY
				if !e.Healthy {
					health = core.HealthStatus_UNHEALTHY
				}
				cs.HostStatuses = append(cs.HostStatuses, &adminv3.HostStatus{
					Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
						Address: e.Addr.Addr().String(), PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(e.Addr.Port())}}}},
					HealthStatus: &adminv3.HostHealthStatus{EdsHealthStatus: health},
					Weight:       e.Weight,
					Locality:     &core.Locality{Region: e.Locality.Region, Zone: e.Locality.Zone, SubZone: e.Locality.Subzone},
				})
			}
			out.ClusterStatuses = append(out.ClusterStatuses, cs)
		}
		b, _ := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(out)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
		return
	}
	var b strings.Builder
	for _, c := range sortedClusters(snap) {
		for _, e := range c.Endpoints {
			health := "healthy"
			if !e.Healthy {
				health = "/failed_eds_health"
			}
			fmt.Fprintf(&b, "%s::%s::health_flags::%s\n%s::%s::weight::%d\n%s::%s::region::%s\n%s::%s::zone::%s\n",
				c.Name, e.Addr, health, c.Name, e.Addr, e.Weight, c.Name, e.Addr, e.Locality.Region, c.Name, e.Addr, e.Locality.Zone)
		}
	}
	_, _ = w.Write([]byte(b.String()))
}

func (s *Server) listeners(w http.ResponseWriter, _ *http.Request) {
	snap := s.Proxy.Snapshot()
	var names []string
	for n, l := range snap.Listeners {
		names = append(names, n+"::"+l.Addr.String())
	}
	sort.Strings(names)
	fmt.Fprintln(w, strings.Join(names, "\n"))
}

// stats prints the Prometheus counters as Envoy's `name: value` lines.
func (s *Server) stats(w http.ResponseWriter, _ *http.Request) {
	families, err := s.Proxy.Metrics().Gather()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			if h := m.GetHistogram(); h != nil {
				v = float64(h.GetSampleCount())
			}
			fmt.Fprintf(w, "%s{%s}: %g\n", f.GetName(), strings.Join(labels, ","), v)
		}
	}
}

// Envoy's log levels as the proxy's slog levels: trace below debug,
// critical above error, off above everything the proxy logs.
type envoyLevel struct {
	name  string
	level slog.Level
}

var levels = []envoyLevel{{"trace", slog.LevelDebug - 4}, {"debug", slog.LevelDebug}, {"info", slog.LevelInfo}, {"warning", slog.LevelWarn},
	{"error", slog.LevelError}, {"critical", slog.LevelError + 4}, {"off", slog.LevelError + 8}}

// loggerName is the proxy's one logger: every part of it logs through it.
const loggerName = "isthmus"

// logging is Envoy's /logging: POST lists the loggers and their levels;
// POST ?level=L sets every logger, ?NAME=L one (the proxy has one,
// isthmus). An unknown logger or level changes nothing and is a 404, as
// in Envoy.
func (s *Server) logging(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "this endpoint changes state; use POST", http.StatusMethodNotAllowed)
		return
	}
	// Every name and level is checked before any is set.
	set := -1
	for k, v := range r.URL.Query() {
		if k != "level" && k != loggerName {
			http.Error(w, fmt.Sprintf("error: unknown logger name %q (the proxy has one logger, %s)", k, loggerName), http.StatusNotFound)
			return
		}
		i := slices.IndexFunc(levels, func(l envoyLevel) bool { return l.name == v[len(v)-1] })
		if i < 0 {
			http.Error(w, fmt.Sprintf("error: unknown logger level %q", v[len(v)-1]), http.StatusNotFound)
			return
		}
		set = i
	}
	if set >= 0 {
		s.Level.Set(levels[set].level)
	}
	name := "off"
	for _, l := range levels {
		if s.Level.Level() <= l.level {
			name = l.name
			break
		}
	}
	fmt.Fprintf(w, "active loggers:\n  %s: %s\n", loggerName, name)
}
