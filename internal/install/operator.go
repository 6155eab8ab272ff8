// Package install turns IstioOperator files into the Kubernetes objects of
// a mesh and applies them: the control plane (profiles default and
// minimal), a remote cluster's side (profile remote) and gateways, so that
// the install files users wrote for istioctl work unchanged.
package install

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	meshv1alpha1 "istio.io/api/mesh/v1alpha1"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// The IstioOperator fields isthmus acts on. Anything else in a file is
// reported as a warning by name (never silently dropped); a value of the
// wrong type is an error naming its path.

// Operator is one install.istio.io/v1alpha1 IstioOperator.
type Operator struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Metadata   Metadata `json:"metadata"`
	Spec       Spec     `json:"spec"`
}

// Metadata is the object's name, used to label what it installs.
type Metadata struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
}

// Spec is IstioOperatorSpec's supported subset.
type Spec struct {
	Profile    string     `json:"profile"`
	Revision   string     `json:"revision"`
	Namespace  string     `json:"namespace"`
	Hub        string     `json:"hub"`
	Tag        string     `json:"tag"`
	MeshConfig MeshConfig `json:"meshConfig"`
	Components Components `json:"components"`
	Values     Values     `json:"values"`
}

// MeshConfig lists the mesh settings the control plane reads; the whole
// meshConfig still goes to the ConfigMap istio.
type MeshConfig struct {
	TrustDomain        string   `json:"trustDomain"`
	TrustDomainAliases []string `json:"trustDomainAliases"`
	RootNamespace      string   `json:"rootNamespace"`
	DefaultConfig      struct {
		MeshID string `json:"meshId"`
		// ProxyMetadata is every sidecar's environment (DNS capture).
		ProxyMetadata   map[string]string `json:"proxyMetadata"`
		GatewayTopology struct {
			NumTrustedProxies *uint32 `json:"numTrustedProxies"`
		} `json:"gatewayTopology"`
		// Tracing.Sampling is the percentage of new traces sampled (Istio's 1 unset).
		Tracing struct {
			Sampling *float64 `json:"sampling"`
		} `json:"tracing"`
	} `json:"defaultConfig"`
	// EnableTracing, ExtensionProviders and DefaultProviders.Tracing: the
	// proxies send spans to the opentelemetry provider named.
	EnableTracing      *bool               `json:"enableTracing"`
	ExtensionProviders []ExtensionProvider `json:"extensionProviders"`
	DefaultProviders   struct {
		Tracing []string `json:"tracing"`
	} `json:"defaultProviders"`
	// PathNormalization is how proxies normalize request paths before
	// routing and authorization.
	PathNormalization struct {
		Normalization string `json:"normalization"`
	} `json:"pathNormalization"`
	OutboundTrafficPolicy struct {
		Mode string `json:"mode"`
	} `json:"outboundTrafficPolicy"`
	// AccessLogFile and AccessLogEncoding reach every proxy as an access
	// log on the listeners the control plane sends.
	AccessLogFile     string `json:"accessLogFile"`
	AccessLogEncoding string `json:"accessLogEncoding"`
	// EnablePrometheusMerge (default on) points pods' prometheus.io
	// annotations at the proxy's 15020, which serves the app's metrics too.
	EnablePrometheusMerge *bool `json:"enablePrometheusMerge"`
}

// ExtensionProvider is a meshConfig extension provider isthmus acts on:
// an OpenTelemetry tracing collector, exported to over gRPC. Other kinds
// (zipkin, envoyExtAuthz..., OTLP over http) are warned about by name.
type ExtensionProvider struct {
	Name          string `json:"name"`
	OpenTelemetry *struct {
		Service      string `json:"service"`
		Port         uint32 `json:"port"`
		MaxTagLength uint32 `json:"maxTagLength"`
		Grpc         *struct {
			Timeout string `json:"timeout"`
		} `json:"grpc"`
	} `json:"opentelemetry"`
}

// Components are the parts of an install a profile turns on or off.
type Components struct {
	Base            *Component `json:"base"`
	Pilot           *Component `json:"pilot"`
	IstiodRemote    *Component `json:"istiodRemote"`
	Cni             *Component `json:"cni"`
	IngressGateways []Gateway  `json:"ingressGateways"`
	EgressGateways  []Gateway  `json:"egressGateways"`
}

// Component is an on/off part with Kubernetes settings.
type Component struct {
	Enabled *bool `json:"enabled"`
	K8s     *K8s  `json:"k8s"`
}

// Gateway is one gateway Deployment and its Service.
type Gateway struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Enabled   *bool             `json:"enabled"`
	Label     map[string]string `json:"label"`
	K8s       *K8s              `json:"k8s"`
}

// K8s is the supported subset of KubernetesResourcesSpec.
type K8s struct {
	Env                []corev1.EnvVar   `json:"env"`
	ReplicaCount       *int32            `json:"replicaCount"`
	PodAnnotations     map[string]string `json:"podAnnotations"`
	ServiceAnnotations map[string]string `json:"serviceAnnotations"`
	Service            *ServiceSpec      `json:"service"`
}

// ServiceSpec is the supported part of a gateway Service's spec.
type ServiceSpec struct {
	Type  corev1.ServiceType   `json:"type"`
	Ports []corev1.ServicePort `json:"ports"`
	// LoadBalancerSourceRanges are the only clients the load balancer
	// admits: clouds write them into its security group or network
	// security group, so an east-west gateway opens to the other
	// clusters' egress addresses only.
	LoadBalancerSourceRanges []string                            `json:"loadBalancerSourceRanges"`
	ExternalTrafficPolicy    corev1.ServiceExternalTrafficPolicy `json:"externalTrafficPolicy"`
}

// Values are the Helm values isthmus reads.
type Values struct {
	Global       Global `json:"global"`
	IstiodRemote struct {
		InjectionPath string `json:"injectionPath"`
		InjectionURL  string `json:"injectionURL"`
	} `json:"istiodRemote"`
	Gateways struct {
		IngressGateway GatewayValues `json:"istio-ingressgateway"`
	} `json:"gateways"`
	Pilot PilotValues `json:"pilot"`
}

// PilotValues are values.pilot: how many control plane replicas, as
// Istio's chart renders them (a HorizontalPodAutoscaler from autoscaleMin
// to autoscaleMax on CPU, else replicaCount; a PodDisruptionBudget once
// more than one replica is the floor).
type PilotValues struct {
	AutoscaleEnabled *bool  `json:"autoscaleEnabled"`
	AutoscaleMin     *int32 `json:"autoscaleMin"`
	AutoscaleMax     *int32 `json:"autoscaleMax"`
	ReplicaCount     *int32 `json:"replicaCount"`
	CPU              struct {
		TargetAverageUtilization *int32 `json:"targetAverageUtilization"`
	} `json:"cpu"`
	// Resources of the discovery container (Istio's default requests
	// 500m CPU and 2048Mi: the autoscaler's utilization is of requests).
	Resources *corev1.ResourceRequirements `json:"resources"`
}

// autoscaled says whether an autoscaler scales the control plane
// (values.pilot.autoscaleEnabled, Istio's default true).
func (l *Loaded) autoscaled() bool {
	e := l.Spec.Values.Pilot.AutoscaleEnabled
	return e == nil || *e
}

// replicas is how the control plane is scaled: with an autoscaler, its
// bounds (Istio's defaults 1 to 5) and the Deployment's replicas only when
// components.pilot.k8s.replicaCount sets them (Istio's overlay; else the
// autoscaler owns them); without, the Deployment's replicas.
func (l *Loaded) replicas() (fixed *int32, lo, hi int32) {
	v := l.Spec.Values.Pilot
	var k8s *int32
	if c := l.Spec.Components.Pilot; c != nil && c.K8s != nil {
		k8s = c.K8s.ReplicaCount
	}
	if l.autoscaled() {
		lo, hi = 1, 5
		if v.AutoscaleMin != nil {
			lo = *v.AutoscaleMin
		}
		if v.AutoscaleMax != nil {
			hi = *v.AutoscaleMax
		}
		return k8s, lo, hi
	}
	fixed = ptr.To[int32](1)
	for _, n := range []*int32{v.ReplicaCount, k8s} {
		if n != nil {
			fixed = n
		}
	}
	return fixed, 0, 0
}

// Global is values.global.
type Global struct {
	MeshID         string `json:"meshID"`
	Network        string `json:"network"`
	Hub            string `json:"hub"`
	Tag            string `json:"tag"`
	IstioNamespace string `json:"istioNamespace"`
	MultiCluster   struct {
		ClusterName string `json:"clusterName"`
		Enabled     *bool  `json:"enabled"`
	} `json:"multiCluster"`
	RemotePilotAddress string `json:"remotePilotAddress"`
	Proxy              struct {
		Privileged *bool `json:"privileged"`
	} `json:"proxy"`
	MeshNetworks map[string]any `json:"meshNetworks"`
}

// GatewayValues are values.gateways.istio-ingressgateway: they apply to
// every ingress gateway of the file, as in Istio.
type GatewayValues struct {
	InjectionTemplate  string             `json:"injectionTemplate"`
	ServiceAnnotations map[string]string  `json:"serviceAnnotations"`
	Type               corev1.ServiceType `json:"type"`
}

// Loaded is the merged IstioOperator of one install, with what the user
// should know about it.
type Loaded struct {
	Operator
	// raw is the merged document, kept whole for meshConfig.
	raw map[string]any
	// Warnings name fields isthmus does not act on.
	Warnings []string
}

// Load reads and merges IstioOperator files (later files and then --set
// values override earlier ones, lists are replaced) and checks them.
func Load(files []string, sets []string) (*Loaded, error) {
	merged := map[string]any{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		doc, err := parseOne(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		merged = merge(merged, doc)
	}
	for _, s := range sets {
		path, value, ok := strings.Cut(s, "=")
		if !ok || path == "" {
			return nil, fmt.Errorf("--set %q: want path=value, for example --set values.global.network=network1", s)
		}
		path = strings.TrimPrefix(path, "spec.")
		if err := setPath(merged, append([]string{"spec"}, splitPath(path)...), scalar(value)); err != nil {
			return nil, fmt.Errorf("--set %s: %w", s, err)
		}
	}
	return check(merged)
}

// Parse checks one IstioOperator document given as bytes.
func Parse(b []byte) (*Loaded, error) {
	doc, err := parseOne(b)
	if err != nil {
		return nil, err
	}
	return check(doc)
}

func parseOne(b []byte) (map[string]any, error) {
	var docs []map[string]any
	for _, part := range splitDocs(b) {
		j, err := yaml.YAMLToJSON(part)
		if err != nil {
			return nil, fmt.Errorf("not YAML: %w", err)
		}
		if strings.TrimSpace(string(j)) == "null" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(j, &m); err != nil {
			return nil, fmt.Errorf("want an IstioOperator object: %w", err)
		}
		docs = append(docs, m)
	}
	switch len(docs) {
	case 0:
		return nil, fmt.Errorf("empty file; want an IstioOperator (apiVersion install.istio.io/v1alpha1)")
	case 1:
	default:
		return nil, fmt.Errorf("%d YAML documents; want one IstioOperator per file (pass several files with -f)", len(docs))
	}
	doc := docs[0]
	if av, _ := doc["apiVersion"].(string); av != "install.istio.io/v1alpha1" {
		return nil, fmt.Errorf("apiVersion %q: want install.istio.io/v1alpha1", av)
	}
	if k, _ := doc["kind"].(string); k != "IstioOperator" {
		return nil, fmt.Errorf("kind %q: want IstioOperator", k)
	}
	return doc, nil
}

func splitDocs(b []byte) [][]byte {
	var out [][]byte
	var cur []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.TrimRight(line, " \t\r") == "---" {
			out = append(out, []byte(strings.Join(cur, "\n")))
			cur = nil
			continue
		}
		cur = append(cur, line)
	}
	return append(out, []byte(strings.Join(cur, "\n")))
}

// check walks the merged document against the supported fields, then
// decodes it and checks values that depend on each other.
func check(doc map[string]any) (*Loaded, error) {
	var r report
	walk("", doc, typeOfOperator, &r)
	if len(r.errs) > 0 {
		return nil, fmt.Errorf("invalid IstioOperator:\n  %s", strings.Join(r.errs, "\n  "))
	}
	j, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	l := &Loaded{raw: doc}
	if err := json.Unmarshal(j, &l.Operator); err != nil {
		return nil, fmt.Errorf("invalid IstioOperator: %w", err)
	}
	l.Warnings = r.unsupported
	if err := l.validate(); err != nil {
		return nil, err
	}
	return l, nil
}

// validate checks what the schema cannot: known profiles, names, and the
// settings a profile cannot do without.
func (l *Loaded) validate() error {
	s := &l.Spec
	p := l.ProfileName()
	if _, ok := profiles[p]; !ok {
		return fmt.Errorf("spec.profile %q: isthmus knows the profiles %s", p, strings.Join(ProfileNames(), ", "))
	}
	if m := s.MeshConfig.OutboundTrafficPolicy.Mode; m != "" && m != "ALLOW_ANY" && m != "REGISTRY_ONLY" {
		return fmt.Errorf("spec.meshConfig.outboundTrafficPolicy.mode %q: want ALLOW_ANY or REGISTRY_ONLY", m)
	}
	if err := checkTracing(&s.MeshConfig); err != nil {
		return err
	}
	if e := s.MeshConfig.AccessLogEncoding; e != "" && e != "TEXT" && e != "JSON" {
		return fmt.Errorf("spec.meshConfig.accessLogEncoding %q: want TEXT or JSON", e)
	}
	if n := s.MeshConfig.PathNormalization.Normalization; n != "" {
		if _, ok := meshv1alpha1.MeshConfig_ProxyPathNormalization_NormalizationType_value[n]; !ok {
			return fmt.Errorf("spec.meshConfig.pathNormalization.normalization %q: want DEFAULT, NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES", n)
		}
	}
	if s.Revision != "" {
		l.Warnings = append(l.Warnings, fmt.Sprintf("spec.revision %q: revisions are not supported; installing the default revision", s.Revision))
	}
	if n := s.Values.Global.MultiCluster.ClusterName; n != "" {
		if errs := validation.IsDNS1123Label(n); len(errs) > 0 {
			return fmt.Errorf("spec.values.global.multiCluster.clusterName %q: %s", n, strings.Join(errs, "; "))
		}
	}
	if ns := l.Namespace(); len(validation.IsDNS1123Label(ns)) > 0 {
		return fmt.Errorf("spec.namespace %q is not a valid namespace name", ns)
	}
	remote := l.enabled("istiodRemote")
	if a := s.Values.Global.RemotePilotAddress; remote && s.Values.IstiodRemote.InjectionURL == "" {
		if a == "" || strings.Contains(a, "<") {
			return fmt.Errorf("profile %s needs spec.values.global.remotePilotAddress: the address of the primary cluster's east-west gateway, an IP or the load balancer's DNS name (print it with `isthmus gateway address --context PRIMARY`)", p)
		}
		if net.ParseIP(a) == nil && len(validation.IsDNS1123Subdomain(a)) > 0 {
			return fmt.Errorf("spec.values.global.remotePilotAddress %q: want an IP address or a DNS name such as the load balancer's hostname (no scheme, no port)", a)
		}
	} else if a != "" && !remote {
		l.Warnings = append(l.Warnings, "spec.values.global.remotePilotAddress is used only by the remote profile (istiodRemote); ignored here")
	}
	if remote {
		if ip := s.Values.IstiodRemote.InjectionPath; ip != "" && !strings.HasPrefix(ip, "/inject") {
			return fmt.Errorf("spec.values.istiodRemote.injectionPath %q: want /inject or /inject/cluster/CLUSTER/net/NETWORK", ip)
		}
		if len(l.raw) > 0 && hasKey(l.raw, "spec", "meshConfig") {
			l.Warnings = append(l.Warnings, "spec.meshConfig in a remote profile: the primary's control plane serves this cluster with its own mesh config; ignored here")
		}
		if s.Values.Global.Proxy.Privileged != nil {
			l.Warnings = append(l.Warnings, "spec.values.global.proxy.privileged in a remote profile: this cluster's sidecars are injected by the primary's control plane, with the primary's setting")
		}
	}
	if err := checkGateways("ingressGateways", l.gateways()); err != nil {
		return err
	}
	if err := checkGateways("egressGateways", l.egressGateways()); err != nil {
		return err
	}
	for i, e := range l.egressGateways() {
		if slices.ContainsFunc(l.gateways(), func(g Gateway) bool {
			return g.Name == e.Name && first(g.Namespace, l.Namespace()) == first(e.Namespace, l.Namespace())
		}) {
			return fmt.Errorf("spec.components.egressGateways[%d].name %q: an ingress gateway has that name; their Deployments and Services would overwrite each other", i, e.Name)
		}
	}
	if t := s.Values.Gateways.IngressGateway.InjectionTemplate; t != "" && t != "gateway" {
		l.Warnings = append(l.Warnings, fmt.Sprintf("spec.values.gateways.istio-ingressgateway.injectionTemplate %q: isthmus has the template gateway only; using it", t))
	}
	switch fixed, lo, hi := l.replicas(); {
	case l.autoscaled() && (lo < 1 || hi < lo):
		return fmt.Errorf("spec.values.pilot: autoscaleMin %d and autoscaleMax %d: want 1 <= autoscaleMin <= autoscaleMax", lo, hi)
	case l.autoscaled() && fixed != nil && *fixed > 1:
		l.Warnings = append(l.Warnings, fmt.Sprintf("spec.components.pilot.k8s.replicaCount %d with values.pilot.autoscaleEnabled (the default): the autoscaler may scale the control plane down to autoscaleMin %d; set autoscaleMin (or autoscaleEnabled: false) for a floor of replicas", *fixed, lo))
	case fixed != nil && *fixed < 1:
		return fmt.Errorf("spec.values.pilot: %d control plane replicas: want at least 1", *fixed)
	}
	if u := s.Values.Pilot.CPU.TargetAverageUtilization; u != nil && (*u < 1 || *u > 100) {
		return fmt.Errorf("spec.values.pilot.cpu.targetAverageUtilization %d: want a percentage of the CPU request, 1 to 100", *u)
	}
	if c := s.Components.Cni; c != nil && c.Enabled != nil && *c.Enabled {
		l.Warnings = append(l.Warnings, "spec.components.cni: the CNI plugin is not supported; pods get the istio-init container")
	}
	return nil
}

// checkGateways refuses what a gateway list (spec.components.FIELD) cannot be.
func checkGateways(field string, gws []Gateway) error {
	for i, g := range gws {
		if g.Name == "" {
			return fmt.Errorf("spec.components.%s[%d].name: a gateway needs a name", field, i)
		}
		if errs := validation.IsDNS1123Label(g.Name); len(errs) > 0 {
			return fmt.Errorf("spec.components.%s[%d].name %q: %s", field, i, g.Name, strings.Join(errs, "; "))
		}
		if g.K8s == nil || g.K8s.Service == nil {
			continue
		}
		for _, r := range g.K8s.Service.LoadBalancerSourceRanges {
			if _, _, err := net.ParseCIDR(r); err != nil {
				return fmt.Errorf("spec.components.%s[%d].k8s.service.loadBalancerSourceRanges: %q is not a CIDR such as 203.0.113.0/24", field, i, r)
			}
		}
		if p := g.K8s.Service.ExternalTrafficPolicy; p != "" && p != corev1.ServiceExternalTrafficPolicyCluster && p != corev1.ServiceExternalTrafficPolicyLocal {
			return fmt.Errorf("spec.components.%s[%d].k8s.service.externalTrafficPolicy %q: want Cluster or Local", field, i, p)
		}
	}
	return nil
}

func hasKey(m map[string]any, path ...string) bool {
	for i, k := range path {
		v, ok := m[k]
		if !ok {
			return false
		}
		if i == len(path)-1 {
			return true
		}
		if m, ok = v.(map[string]any); !ok {
			return false
		}
	}
	return false
}

// merge overlays b on a: maps merge key by key, anything else is replaced.
func merge(a, b map[string]any) map[string]any {
	out := make(map[string]any, len(a)+len(b))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		am, aok := out[k].(map[string]any)
		bm, bok := v.(map[string]any)
		if aok && bok {
			out[k] = merge(am, bm)
		} else {
			out[k] = v
		}
	}
	return out
}

// splitPath splits a --set path: a.b[0].c -> a, b, [0], c. Keys may hold
// dashes (gateways.istio-ingressgateway).
func splitPath(p string) []string {
	var out []string
	for _, part := range strings.Split(p, ".") {
		for {
			i := strings.IndexByte(part, '[')
			if i < 0 {
				break
			}
			if i > 0 {
				out = append(out, part[:i])
			}
			j := strings.IndexByte(part, ']')
			if j < i {
				out = append(out, part)
				part = ""
				break
			}
			out = append(out, part[i:j+1])
			part = part[j+1:]
		}
		if part != "" {
			out = append(out, part)
		}
	}
	return out
}

// setPath sets a value at a path of map keys and [index] list elements,
// making maps on the way. As in Helm, [n] one past the end of a list (or
// [0] where there is none yet) appends, so --set can add the first
// loadBalancerSourceRanges of a gateway.
func setPath(m map[string]any, path []string, v any) error {
	_, err := setIn(m, path, 0, v)
	return err
}

// setIn sets path[i:] under cur and returns cur, or the list that
// replaces it when an element was appended.
func setIn(cur any, path []string, i int, v any) (any, error) {
	if i == len(path) {
		return v, nil
	}
	k := path[i]
	if strings.HasPrefix(k, "[") {
		n, err := strconv.Atoi(strings.Trim(k, "[]"))
		l, ok := cur.([]any)
		if cur == nil {
			ok = true
		}
		if err != nil || !ok || n < 0 || n > len(l) {
			return nil, fmt.Errorf("%s: no list element %s there", strings.Join(path[:i], "."), k)
		}
		if n == len(l) {
			l = append(l, nil)
		}
		next, err := setIn(l[n], path, i+1, v)
		if err != nil {
			return nil, err
		}
		l[n] = next
		return l, nil
	}
	if cur == nil {
		cur = map[string]any{}
	}
	cm, ok := cur.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s is not an object", strings.Join(path[:i], "."))
	}
	next, err := setIn(cm[k], path, i+1, v)
	if err != nil {
		return nil, err
	}
	cm[k] = next
	return cm, nil
}

// scalar types a --set value as Helm does: booleans and numbers, else a string.
func scalar(s string) any {
	switch s {
	case "true":
		return true
	case "false":
		return false
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return float64(n)
	}
	return s
}

// ProfileName is spec.profile, default when empty.
func (l *Loaded) ProfileName() string {
	if l.Spec.Profile == "" {
		return "default"
	}
	return l.Spec.Profile
}

// Namespace is where the mesh's namespaced objects go.
func (l *Loaded) Namespace() string {
	for _, n := range []string{l.Spec.Namespace, l.Spec.Values.Global.IstioNamespace} {
		if n != "" {
			return n
		}
	}
	return "istio-system"
}

// enabled says whether a component is on: the file's enabled, else the profile's.
func (l *Loaded) enabled(component string) bool {
	var c *Component
	switch component {
	case "base":
		c = l.Spec.Components.Base
	case "pilot":
		c = l.Spec.Components.Pilot
	case "istiodRemote":
		c = l.Spec.Components.IstiodRemote
	}
	if c != nil && c.Enabled != nil {
		return *c.Enabled
	}
	return slices.Contains(profiles[l.ProfileName()].components, component)
}

// egressGateways are the file's enabled egress gateways (no profile of
// isthmus has one; Istio's demo profile does).
func (l *Loaded) egressGateways() []Gateway {
	return slices.DeleteFunc(slices.Clone(l.Spec.Components.EgressGateways), func(g Gateway) bool { return g.Enabled != nil && !*g.Enabled })
}

// gateways are the enabled ingress gateways: the profile's, overlaid by
// name with the file's.
func (l *Loaded) gateways() []Gateway {
	out := slices.Clone(profiles[l.ProfileName()].gateways)
	for _, g := range l.Spec.Components.IngressGateways {
		i := slices.IndexFunc(out, func(p Gateway) bool { return p.Name == g.Name })
		if i < 0 {
			out = append(out, g)
			continue
		}
		p := out[i]
		if g.Enabled != nil {
			p.Enabled = g.Enabled
		}
		if g.Label != nil {
			p.Label = g.Label
		}
		if g.K8s != nil {
			p.K8s = g.K8s
		}
		if g.Namespace != "" {
			p.Namespace = g.Namespace
		}
		out[i] = p
	}
	return slices.DeleteFunc(out, func(g Gateway) bool { return g.Enabled != nil && !*g.Enabled })
}

// checkTracing refuses a tracing setup that cannot work: a provider
// without a name, service or port, a default tracing provider that is
// not an opentelemetry one, a sampling outside 0..100.
func checkTracing(m *MeshConfig) error {
	otel := map[string]bool{}
	for i, p := range m.ExtensionProviders {
		if p.Name == "" {
			return fmt.Errorf("spec.meshConfig.extensionProviders[%d]: a provider needs a name", i)
		}
		if o := p.OpenTelemetry; o != nil {
			if o.Service == "" || o.Port == 0 || o.Port > 65535 {
				return fmt.Errorf("spec.meshConfig.extensionProviders[%d] (%s): opentelemetry needs a service and a port", i, p.Name)
			}
			if o.Grpc != nil && o.Grpc.Timeout != "" {
				if _, err := time.ParseDuration(o.Grpc.Timeout); err != nil {
					return fmt.Errorf("spec.meshConfig.extensionProviders[%d] (%s): opentelemetry.grpc.timeout: %v", i, p.Name, err)
				}
			}
			otel[p.Name] = true
		}
	}
	for i, name := range m.DefaultProviders.Tracing {
		if !otel[name] {
			return fmt.Errorf("spec.meshConfig.defaultProviders.tracing[%d] %q: no opentelemetry extension provider of that name (isthmus's proxies export spans as OTLP over gRPC)", i, name)
		}
	}
	if v := m.DefaultConfig.Tracing.Sampling; v != nil && (*v < 0 || *v > 100) {
		return fmt.Errorf("spec.meshConfig.defaultConfig.tracing.sampling %g: want a percentage, 0 to 100", *v)
	}
	return nil
}
