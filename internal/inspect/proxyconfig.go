package inspect

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"iter"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	// The resource types a config dump can hold, for its Any fields.
	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
)

// Dump is a proxy's config_dump (Envoy's ConfigDump JSON), decoded.
type Dump struct {
	Clusters  []*clusterv3.Cluster
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Secrets   []*adminv3.SecretsConfigDump_DynamicSecret
	// Bootstrap is how the proxy started (nil: the dump has none).
	Bootstrap *bootstrapv3.Bootstrap
}

// ParseDump decodes /config_dump output.
func ParseDump(b []byte) (*Dump, error) {
	var cd adminv3.ConfigDump
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, &cd); err != nil {
		return nil, fmt.Errorf("config_dump: %w", err)
	}
	d := &Dump{}
	for _, a := range cd.GetConfigs() {
		m, err := a.UnmarshalNew()
		if err != nil {
			continue // a section of a type this build does not know
		}
		switch x := m.(type) {
		case *adminv3.ClustersConfigDump:
			for _, c := range x.GetStaticClusters() {
				d.addCluster(c.GetCluster().UnmarshalNew())
			}
			for _, c := range x.GetDynamicActiveClusters() {
				d.addCluster(c.GetCluster().UnmarshalNew())
			}
		case *adminv3.ListenersConfigDump:
			for _, l := range x.GetDynamicListeners() {
				if m, err := l.GetActiveState().GetListener().UnmarshalNew(); err == nil {
					if l, ok := m.(*listenerv3.Listener); ok {
						d.Listeners = append(d.Listeners, l)
					}
				}
			}
		case *adminv3.RoutesConfigDump:
			for _, r := range x.GetDynamicRouteConfigs() {
				if m, err := r.GetRouteConfig().UnmarshalNew(); err == nil {
					if rc, ok := m.(*routev3.RouteConfiguration); ok {
						d.Routes = append(d.Routes, rc)
					}
				}
			}
		case *adminv3.SecretsConfigDump:
			d.Secrets = append(d.Secrets, x.GetDynamicActiveSecrets()...)
		case *adminv3.BootstrapConfigDump:
			d.Bootstrap = x.GetBootstrap()
		}
	}
	return d, nil
}

func (d *Dump) addCluster(m proto.Message, err error) {
	if c, ok := m.(*clusterv3.Cluster); ok && err == nil {
		d.Clusters = append(d.Clusters, c)
	}
}

// ClusterName splits Istio's cluster names: outbound|PORT|SUBSET|HOST,
// inbound|PORT||, and the routers' SNI form outbound_.PORT_.SUBSET_.HOST.
func ClusterName(name string) (fqdn, port, subset, direction string) {
	if p := strings.Split(name, "|"); len(p) == 4 {
		return p[3], p[1], p[2], p[0]
	}
	if rest, ok := strings.CutPrefix(name, "outbound_."); ok {
		if p := strings.SplitN(rest, "_.", 3); len(p) == 3 {
			if p[1] == "_" {
				p[1] = ""
			}
			return p[2], p[0], p[1], "outbound"
		}
	}
	return name, "-", "-", "-"
}

func table(w io.Writer, header string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// WriteClusters prints istioctl's clusters table; fqdn and port filter.
func (d *Dump) WriteClusters(w io.Writer, fqdn string, port int) error {
	var rows [][]string
	for _, c := range d.Clusters {
		h, p, subset, dir := ClusterName(c.GetName())
		if (fqdn != "" && !strings.HasPrefix(h, fqdn)) || (port != 0 && p != strconv.Itoa(port)) {
			continue
		}
		typ := c.GetType().String()
		if c.GetClusterType() != nil {
			typ = c.GetClusterType().GetName()
		}
		rows = append(rows, []string{h, p, dash(subset), dir, typ, istioConfig(c.GetMetadata(), "destination-rule")})
	}
	sort.Slice(rows, func(i, j int) bool { return strings.Join(rows[i], " ") < strings.Join(rows[j], " ") })
	return table(w, "SERVICE FQDN\tPORT\tSUBSET\tDIRECTION\tTYPE\tDESTINATION RULE", rows)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// WriteListeners prints istioctl's listeners table: one row per filter chain.
func (d *Dump) WriteListeners(w io.Writer, port int) error {
	var rows [][]string
	for _, l := range d.Listeners {
		sa := l.GetAddress().GetSocketAddress()
		if port != 0 && int(sa.GetPortValue()) != port {
			continue
		}
		chains := l.GetFilterChains()
		if l.GetDefaultFilterChain() != nil {
			chains = append(chains, l.GetDefaultFilterChain())
		}
		for _, fc := range chains {
			rows = append(rows, []string{sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())), match(fc.GetFilterChainMatch()), destination(fc)})
		}
	}
	return table(w, "ADDRESSES\tPORT\tMATCH\tDESTINATION", rows)
}

func match(m *listenerv3.FilterChainMatch) string {
	if m == nil {
		return "ALL"
	}
	var parts []string
	if len(m.GetServerNames()) > 0 {
		parts = append(parts, "SNI: "+strings.Join(m.GetServerNames(), ","))
	}
	if p := m.GetDestinationPort(); p != nil {
		parts = append(parts, "Port: "+strconv.Itoa(int(p.GetValue())))
	}
	if t := m.GetTransportProtocol(); t != "" {
		parts = append(parts, "Trans: "+t)
	}
	if len(m.GetApplicationProtocols()) > 0 {
		parts = append(parts, "App: "+strings.Join(m.GetApplicationProtocols(), ","))
	}
	for _, r := range m.GetPrefixRanges() {
		parts = append(parts, "Addr: "+r.GetAddressPrefix()+"/"+strconv.Itoa(int(r.GetPrefixLen().GetValue())))
	}
	if len(parts) == 0 {
		return "ALL"
	}
	return strings.Join(parts, "; ")
}

func destination(fc *listenerv3.FilterChain) string {
	for _, f := range fc.GetFilters() {
		m, err := f.GetTypedConfig().UnmarshalNew()
		if err != nil {
			continue
		}
		switch x := m.(type) {
		case *tcpproxy.TcpProxy:
			if c := x.GetCluster(); c != "" {
				return "Cluster: " + c
			}
			var names []string
			for _, wc := range x.GetWeightedClusters().GetClusters() {
				names = append(names, wc.GetName())
			}
			return "Clusters: " + strings.Join(names, ",")
		case *hcm.HttpConnectionManager:
			if r := x.GetRds(); r != nil {
				return "Route: " + r.GetRouteConfigName()
			}
			if rc := x.GetRouteConfig(); rc != nil {
				return "Inline Route: " + rc.GetName()
			}
			return "HTTP"
		}
	}
	return "Non-HTTP/Non-TCP"
}

// WriteRoutes prints istioctl's routes table; name filters.
func (d *Dump) WriteRoutes(w io.Writer, name string) error {
	var rows [][]string
	for _, rc := range d.Routes {
		if name != "" && rc.GetName() != name {
			continue
		}
		for _, vh := range rc.GetVirtualHosts() {
			domain := ""
			if ds := vh.GetDomains(); len(ds) > 0 {
				domain = ds[0]
				if len(ds) > 1 {
					domain += fmt.Sprintf(" +%d more", len(ds)-1)
				}
			}
			for _, r := range vh.GetRoutes() {
				rows = append(rows, []string{rc.GetName(), vh.GetName(), domain, routeMatch(r.GetMatch()), routeTarget(r), istioConfig(r.GetMetadata(), "virtual-service")})
			}
		}
	}
	return table(w, "NAME\tVHOST NAME\tDOMAINS\tMATCH\tDESTINATION\tVIRTUAL SERVICE", rows)
}

func routeMatch(m *routev3.RouteMatch) string {
	switch {
	case m.GetPath() != "":
		return m.GetPath()
	case m.GetSafeRegex() != nil:
		return "regex " + m.GetSafeRegex().GetRegex()
	case m.GetPrefix() != "":
		return m.GetPrefix() + "*"
	}
	return "/*"
}

func routeTarget(r *routev3.Route) string {
	a := r.GetRoute()
	if a == nil {
		if r.GetDirectResponse() != nil {
			return fmt.Sprintf("direct response %d", r.GetDirectResponse().GetStatus())
		}
		return "-"
	}
	if c := a.GetCluster(); c != "" {
		return c
	}
	var names []string
	for _, wc := range a.GetWeightedClusters().GetClusters() {
		names = append(names, fmt.Sprintf("%s %d%%", wc.GetName(), wc.GetWeight().GetValue()))
	}
	return strings.Join(names, ", ")
}

// WriteSecrets prints istioctl's secret table: the workload certificate
// ("default") and the roots ("ROOTCA").
func (d *Dump) WriteSecrets(w io.Writer) error {
	var rows [][]string
	for name, sec := range d.secrets() {
		typ, data := "Cert Chain", sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes()
		if vc := sec.GetValidationContext(); vc != nil {
			typ, data = "CA", vc.GetTrustedCa().GetInlineBytes()
		}
		for _, c := range Certificates(data) {
			valid := time.Now().After(c.NotBefore) && time.Now().Before(c.NotAfter)
			rows = append(rows, []string{name, typ, "ACTIVE", strconv.FormatBool(valid), c.SerialNumber.Text(16),
				c.NotAfter.UTC().Format(time.RFC3339), c.NotBefore.UTC().Format(time.RFC3339), identities(c)})
		}
	}
	return table(w, "RESOURCE NAME\tTYPE\tSTATUS\tVALID CERT\tSERIAL NUMBER\tNOT AFTER\tNOT BEFORE\tIDENTITY", rows)
}

// secrets yields the dump's active secrets by name, in the dump's order.
func (d *Dump) secrets() iter.Seq2[string, *tlsv3.Secret] {
	return func(yield func(string, *tlsv3.Secret) bool) {
		for _, s := range d.Secrets {
			m, err := s.GetSecret().UnmarshalNew()
			if err != nil {
				continue
			}
			if sec, ok := m.(*tlsv3.Secret); ok && !yield(s.GetName(), sec) {
				return
			}
		}
	}
}

// Roots are the certificates the proxy trusts for its peers: the ROOTCA
// secret's trusted CA (Istio's SDS resource name), decoded once from the
// PEM Envoy's SDS carries.
func (d *Dump) Roots() ([]*x509.Certificate, error) {
	for name, sec := range d.secrets() {
		if name != "ROOTCA" {
			continue
		}
		roots := Certificates(sec.GetValidationContext().GetTrustedCa().GetInlineBytes())
		if len(roots) == 0 {
			return nil, fmt.Errorf("the ROOTCA secret holds no PEM certificate")
		}
		return roots, nil
	}
	return nil, fmt.Errorf("no active ROOTCA secret: the proxy has not received its trusted roots (is it connected to the control plane?)")
}

// WorkloadCertificate is the proxy's own certificate: the leaf of the
// "default" secret's chain (Istio's SDS resource name for the workload
// identity), as proxy-config secret lists it.
func (d *Dump) WorkloadCertificate() (*x509.Certificate, error) {
	for name, sec := range d.secrets() {
		if name != "default" {
			continue
		}
		chain := Certificates(sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
		if len(chain) == 0 {
			return nil, fmt.Errorf("the default secret holds no PEM certificate")
		}
		return chain[0], nil
	}
	return nil, fmt.Errorf("no active default secret: the proxy has no workload certificate (is it connected to the control plane's CA?)")
}

// SharedRoot is a certificate both proxies trust, or nil: two proxies can
// verify each other's workload certificates when they share a root (the
// test istioctl's rootca-compare makes).
func SharedRoot(a, b []*x509.Certificate) *x509.Certificate {
	for _, x := range a {
		for _, y := range b {
			if x.Equal(y) {
				return x
			}
		}
	}
	return nil
}

// Certificates are the X.509 certificates of a PEM bundle (what does not
// parse is skipped).
func Certificates(b []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		if c, err := x509.ParseCertificate(blk.Bytes); err == nil {
			out = append(out, c)
		}
	}
}

func identities(c *x509.Certificate) string {
	var out []string
	for _, u := range c.URIs {
		out = append(out, u.String())
	}
	if len(out) == 0 {
		return c.Subject.CommonName
	}
	return strings.Join(out, ",")
}

// WriteEndpoints prints istioctl's endpoints table from /clusters?format=json.
func WriteEndpoints(w io.Writer, clustersJSON []byte, cluster string) error {
	var cs adminv3.Clusters
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(clustersJSON, &cs); err != nil {
		return fmt.Errorf("/clusters: %w", err)
	}
	var rows [][]string
	for _, c := range cs.GetClusterStatuses() {
		if cluster != "" && c.GetName() != cluster {
			continue
		}
		for _, h := range c.GetHostStatuses() {
			sa := h.GetAddress().GetSocketAddress()
			status := "HEALTHY"
			if h.GetHealthStatus().GetEdsHealthStatus() != core.HealthStatus_HEALTHY {
				status = "UNHEALTHY"
			}
			outlier := "OK"
			if h.GetHealthStatus().GetFailedOutlierCheck() {
				outlier = "FAILED"
			}
			rows = append(rows, []string{sa.GetAddress() + ":" + strconv.Itoa(int(sa.GetPortValue())), status, outlier, c.GetName()})
		}
	}
	return table(w, "ENDPOINT\tSTATUS\tOUTLIER CHECK\tCLUSTER", rows)
}

// Marshal prints resources as a JSON array or YAML list (-o json|yaml).
func Marshal[T proto.Message](w io.Writer, format string, items []T) error {
	var raw []json.RawMessage
	for _, it := range items {
		b, err := protojson.Marshal(it)
		if err != nil {
			return err
		}
		raw = append(raw, b)
	}
	b, err := json.MarshalIndent(raw, "", "  ")
	if err != nil {
		return err
	}
	if format == "yaml" {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return err
		}
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// istioConfig is NAME.NAMESPACE of the Istio object of a kind that made a
// cluster or route (Istio's filter_metadata.istio.config path), as
// istioctl's DESTINATION RULE and VIRTUAL SERVICE columns; "" for none.
func istioConfig(md *core.Metadata, kind string) string {
	path := md.GetFilterMetadata()["istio"].GetFields()["config"].GetStringValue()
	parts := strings.Split(path, "/")
	// /apis/GROUP/VERSION/namespaces/NS/KIND/NAME
	if len(parts) != 8 || parts[4] != "namespaces" || parts[6] != kind {
		return ""
	}
	return parts[7] + "." + parts[5]
}
