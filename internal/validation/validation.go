package validation

import (
	"encoding/json"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"
)

// Result is what validation says of one object.
type Result struct {
	Kind, Namespace, Name string
	// Errors refuse the object: each is "spec.path: what is wrong".
	Errors []string
	// Warnings accept it: fields isthmus does not act on.
	Warnings []string
}

// String names the object as kubectl does: Kind namespace/name.
func (r Result) String() string {
	if r.Namespace == "" {
		return r.Kind + " " + r.Name
	}
	return r.Kind + " " + r.Namespace + "/" + r.Name
}

// kind is one validated Istio kind.
type kind struct {
	new   func() proto.Message
	check func(m proto.Message, c *checker)
	// supported are the field paths (proto names) isthmus acts on; any
	// other set field gets a warning.
	supported map[string]bool
}

var destination = []string{"destination", "destination.host", "destination.subset", "destination.port", "destination.port.number", "weight"}

var trafficPolicy = []string{"load_balancer", "load_balancer.simple",
	"load_balancer.locality_lb_setting", "load_balancer.locality_lb_setting.enabled", "load_balancer.locality_lb_setting.failover_priority",
	"load_balancer.locality_lb_setting.failover", "load_balancer.locality_lb_setting.failover.from", "load_balancer.locality_lb_setting.failover.to",
	"load_balancer.locality_lb_setting.distribute", "load_balancer.locality_lb_setting.distribute.from", "load_balancer.locality_lb_setting.distribute.to",
	"load_balancer.consistent_hash", "load_balancer.consistent_hash.http_header_name", "load_balancer.consistent_hash.http_cookie",
	"load_balancer.consistent_hash.http_cookie.name", "load_balancer.consistent_hash.http_cookie.path", "load_balancer.consistent_hash.use_source_ip",
	"load_balancer.consistent_hash.http_query_parameter_name", "load_balancer.consistent_hash.ring_hash", "load_balancer.consistent_hash.maglev",
	"connection_pool", "connection_pool.tcp", "connection_pool.tcp.max_connections", "connection_pool.tcp.connect_timeout",
	"connection_pool.http", "connection_pool.http.http1_max_pending_requests", "connection_pool.http.http2_max_requests", "connection_pool.http.max_retries",
	"outlier_detection", "outlier_detection.consecutive_5xx_errors", "outlier_detection.consecutive_gateway_errors", "outlier_detection.interval",
	"outlier_detection.base_ejection_time", "outlier_detection.max_ejection_percent",
	"tls", "tls.mode", "tls.sni", "tls.subject_alt_names", "tls.credential_name", "tls.ca_certificates", "tls.insecure_skip_verify"}

var kinds = map[string]kind{
	"networking.istio.io/Gateway": {new: func() proto.Message { return &networking.Gateway{} }, check: checkGateway, supported: fields([]string{
		"selector", "servers", "servers.port", "servers.port.number", "servers.port.protocol", "servers.port.name", "servers.hosts", "servers.name",
		"servers.tls", "servers.tls.mode", "servers.tls.credential_name", "servers.tls.https_redirect"})},
	"networking.istio.io/VirtualService": {new: func() proto.Message { return &networking.VirtualService{} }, check: checkVirtualService, supported: fields(
		[]string{"hosts", "gateways", "http", "http.name", "http.match", "http.match.name", "http.match.port", "http.match.gateways", "http.match.source_namespace", "http.route", "http.timeout",
			"http.retries", "http.retries.attempts", "http.retries.per_try_timeout", "http.retries.retry_on",
			"http.fault", "http.fault.delay", "http.fault.delay.fixed_delay", "http.fault.delay.percentage", "http.fault.delay.percentage.value",
			"http.fault.abort", "http.fault.abort.http_status", "http.fault.abort.percentage", "http.fault.abort.percentage.value",
			"http.rewrite", "http.rewrite.uri", "http.rewrite.authority",
			"http.rewrite.uri_regex_rewrite", "http.rewrite.uri_regex_rewrite.match", "http.rewrite.uri_regex_rewrite.rewrite",
			"http.redirect", "http.redirect.uri", "http.redirect.authority", "http.redirect.port", "http.redirect.derive_port", "http.redirect.scheme", "http.redirect.redirect_code",
			"http.direct_response", "http.direct_response.status", "http.direct_response.body", "http.direct_response.body.string", "http.direct_response.body.bytes",
			"http.headers", "http.route.headers",
			"http.cors_policy", "http.cors_policy.allow_origin", "http.cors_policy.allow_methods", "http.cors_policy.allow_headers",
			"http.cors_policy.expose_headers", "http.cors_policy.max_age", "http.cors_policy.allow_credentials", "http.cors_policy.unmatched_preflights",
			"http.mirror", "http.mirror.host", "http.mirror.subset", "http.mirror.port", "http.mirror.port.number",
			"http.mirror_percentage", "http.mirror_percentage.value", "http.mirror_percent", "http.mirrors", "http.mirrors.percentage", "http.mirrors.percentage.value"},
		prefixed("http.mirrors.", destination[:5]),
		stringMatch("http.cors_policy.allow_origins"),
		headerOps("http.headers"), headerOps("http.route.headers"), []string{
			"tcp", "tcp.match", "tcp.match.port", "tcp.route", "tls", "tls.match", "tls.match.sni_hosts", "tls.match.port", "tls.route"},
		prefixed("http.route.", destination), prefixed("tcp.route.", destination), prefixed("tls.route.", destination),
		stringMatch("http.match.uri"), stringMatch("http.match.method"), stringMatch("http.match.headers"), stringMatch("http.match.without_headers"),
		stringMatch("http.match.authority"), stringMatch("http.match.scheme"), stringMatch("http.match.query_params"))},
	"networking.istio.io/DestinationRule": {new: func() proto.Message { return &networking.DestinationRule{} }, check: checkDestinationRule, supported: fields(
		[]string{"host", "subsets", "subsets.name", "subsets.labels", "subsets.traffic_policy", "traffic_policy",
			"traffic_policy.port_level_settings", "traffic_policy.port_level_settings.port", "traffic_policy.port_level_settings.port.number",
			"subsets.traffic_policy.port_level_settings", "subsets.traffic_policy.port_level_settings.port", "subsets.traffic_policy.port_level_settings.port.number"},
		prefixed("traffic_policy.", trafficPolicy), prefixed("traffic_policy.port_level_settings.", trafficPolicy),
		prefixed("subsets.traffic_policy.", trafficPolicy), prefixed("subsets.traffic_policy.port_level_settings.", trafficPolicy))},
	"networking.istio.io/ServiceEntry": {new: func() proto.Message { return &networking.ServiceEntry{} }, check: checkServiceEntry, supported: fields([]string{
		"hosts", "addresses", "ports", "ports.number", "ports.protocol", "ports.name", "ports.target_port", "location", "resolution",
		"endpoints", "endpoints.address", "endpoints.ports", "endpoints.labels", "endpoints.network", "endpoints.locality",
		"endpoints.service_account", "workload_selector", "workload_selector.labels"})},
	"networking.istio.io/Sidecar": {new: func() proto.Message { return &networking.Sidecar{} }, check: checkSidecar, supported: fields([]string{
		"workload_selector", "workload_selector.labels", "egress", "egress.hosts", "outbound_traffic_policy", "outbound_traffic_policy.mode",
		"ingress", "ingress.port", "ingress.port.number", "ingress.port.protocol", "ingress.port.name", "ingress.default_endpoint"})},
	"networking.istio.io/WorkloadEntry": {new: func() proto.Message { return &networking.WorkloadEntry{} }, check: checkWorkloadEntry, supported: fields([]string{
		"address", "ports", "labels", "network", "locality", "service_account"})},
	"security.istio.io/PeerAuthentication": {new: func() proto.Message { return &security.PeerAuthentication{} }, check: checkPeerAuthentication, supported: fields([]string{
		"selector", "selector.match_labels", "mtls", "mtls.mode", "port_level_mtls", "port_level_mtls.mode"})},
	"security.istio.io/RequestAuthentication": {new: func() proto.Message { return &security.RequestAuthentication{} }, check: checkRequestAuthentication, supported: fields(
		[]string{"selector", "selector.match_labels", "jwt_rules"},
		prefixed("jwt_rules.", []string{"issuer", "audiences", "jwks_uri", "jwks", "from_headers", "from_headers.name", "from_headers.prefix",
			"from_params", "from_cookies", "output_payload_to_header", "forward_original_token", "output_claim_to_headers",
			"output_claim_to_headers.header", "output_claim_to_headers.claim"}))},
	"security.istio.io/AuthorizationPolicy": {new: func() proto.Message { return &security.AuthorizationPolicy{} }, check: checkAuthorizationPolicy, supported: fields(
		[]string{"selector", "selector.match_labels", "action", "provider", "provider.name", "rules", "rules.from", "rules.from.source", "rules.to", "rules.to.operation",
			"rules.when", "rules.when.key", "rules.when.values", "rules.when.not_values"},
		prefixed("rules.from.source.", []string{"principals", "not_principals", "namespaces", "not_namespaces", "service_accounts", "not_service_accounts",
			"trust_domains", "not_trust_domains", "ip_blocks", "not_ip_blocks", "remote_ip_blocks", "not_remote_ip_blocks",
			"request_principals", "not_request_principals"}),
		prefixed("rules.to.operation.", []string{"methods", "not_methods", "paths", "not_paths", "ports", "not_ports", "hosts", "not_hosts"}))},
}

// notActedOn are Istio's kinds isthmus admits but does not act on, and
// what happens instead: every object of them is warned about when it is
// applied and by analyze, so nobody believes it took effect.
var notActedOn = map[string]string{
	"networking.istio.io/WorkloadGroup":    "isthmus does not read WorkloadGroup yet: no WorkloadEntry is made from it",
	"networking.istio.io/EnvoyFilter":      "isthmus's proxy is not Envoy and applies no EnvoyFilter patches",
	"networking.istio.io/ProxyConfig":      "isthmus does not read ProxyConfig: proxies take their settings from meshConfig.defaultConfig only",
	"telemetry.istio.io/Telemetry":         "isthmus does not read Telemetry: proxies always report Istio's standard metrics; access logs come from meshConfig accessLogFile, tracing from meshConfig defaultProviders.tracing",
	"extensions.istio.io/WasmPlugin":       "isthmus's proxy runs no Wasm plugins",
	"extensions.istio.io/TrafficExtension": "isthmus's proxy runs no traffic extensions",
}

// headerOps are a Headers field's request and response set, add, remove.
func headerOps(f string) []string {
	var out []string
	for _, dir := range []string{".request", ".response"} {
		out = append(out, f+dir, f+dir+".set", f+dir+".add", f+dir+".remove")
	}
	return out
}

// stringMatch is a StringMatch field and its exact, prefix and regex.
func stringMatch(f string) []string {
	return []string{f, f + ".exact", f + ".prefix", f + ".regex"}
}

func prefixed(p string, fields []string) []string {
	out := make([]string, len(fields))
	for i, f := range fields {
		out[i] = p + f
	}
	return out
}

// fields is the set of field paths of the lists, made once per kind.
func fields(lists ...[]string) map[string]bool {
	out := map[string]bool{}
	for _, l := range lists {
		for _, f := range l {
			out[f] = true
		}
	}
	return out
}

// Object validates one object given as JSON. ok is false for kinds that
// are not Istio configuration isthmus reads.
func Object(raw []byte) (r Result, ok bool, err error) {
	var obj struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name, Namespace string
		} `json:"metadata"`
		Spec json.RawMessage `json:"spec"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil {
		return r, false, fmt.Errorf("not a Kubernetes object: %w", err)
	}
	group, _, _ := strings.Cut(obj.APIVersion, "/")
	k, ok := kinds[group+"/"+obj.Kind]
	ignored, isIgnored := notActedOn[group+"/"+obj.Kind]
	if !ok && !isIgnored {
		return r, false, nil
	}
	r = Result{Kind: obj.Kind, Namespace: obj.Metadata.Namespace, Name: obj.Metadata.Name}
	if isIgnored {
		r.Warnings = append(r.Warnings, ignored)
	}
	if !ok {
		return r, true, nil
	}
	spec := []byte(obj.Spec)
	if len(spec) == 0 || string(spec) == "null" {
		spec = []byte("{}")
	}
	m := k.new()
	if r.Errors = decode(spec, m); len(r.Errors) > 0 {
		return r, true, nil
	}
	c := &checker{}
	k.check(m, c)
	r.Errors = c.errs
	if k.supported != nil {
		for _, p := range unsupported(m.ProtoReflect(), k.supported) {
			if _, ok := m.(*security.AuthorizationPolicy); ok && strings.HasPrefix(p, "spec.rules[") {
				// Authorization fails closed (see proxyview.ResolveAuthz).
				r.Warnings = append(r.Warnings, p+": "+FailsClosed)
				continue
			}
			r.Warnings = append(r.Warnings, p+": not supported by isthmus; ignored")
		}
	}
	r.Warnings = append(r.Warnings, unsupportedValues(m)...)
	return r, true, nil
}

// checker collects errors by path.
type checker struct{ errs []string }

func (c *checker) errf(path, format string, args ...any) {
	c.errs = append(c.errs, path+": "+fmt.Sprintf(format, args...))
}
