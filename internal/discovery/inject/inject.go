// Package inject is the sidecar injection webhook, istiod's /inject: a
// Kubernetes mutating admission webhook that adds to a pod of the mesh the
// init container that captures its traffic (`isthmus-proxy proxy init`)
// and the istio-proxy container (`isthmus-proxy proxy sidecar`, uid 1337)
// with what it needs: its identity in the environment, the istio-token projected volume
// (audience istio-ca), the mesh root (ConfigMap istio-ca-root-cert), and a
// readiness probe on 15021.
//
// The path /inject/cluster/CLUSTER/net/NETWORK sets the sidecar's cluster
// ID and network, as istiodRemote.injectionPath does for a remote cluster.
package inject

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-mesh/isthmus/internal/admission"
)

// Istio's names.
const (
	AnnotationInject = "sidecar.istio.io/inject"
	AnnotationStatus = "sidecar.istio.io/status"
	// AnnotationRewriteProbes "false" keeps the app's probes as they are.
	AnnotationRewriteProbes = "sidecar.istio.io/rewriteAppHTTPProbers"
	// AnnotationTemplates picks injection templates; isthmus has sidecar
	// (the default) and gateway.
	AnnotationTemplates = "inject.istio.io/templates"
	// AnnotationProxyConfig is a pod's ProxyConfig over the mesh's
	// defaultConfig; isthmus reads its proxyMetadata.
	AnnotationProxyConfig = "proxy.istio.io/config"
	LabelTLSMode          = "security.istio.io/tlsMode"
	LabelNetwork          = "topology.istio.io/network"
	ProxyName             = "istio-proxy"
	InitName              = "istio-init"
	// Traffic annotations passed to `proxy init`.
	annIncludeInbound  = "traffic.sidecar.istio.io/includeInboundPorts"
	annExcludeInbound  = "traffic.sidecar.istio.io/excludeInboundPorts"
	annIncludeOutbound = "traffic.sidecar.istio.io/includeOutboundIPRanges"
	annExcludeOutbound = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
	annExcludeOutPorts = "traffic.sidecar.istio.io/excludeOutboundPorts"
)

// ProxyCommand is the command of every injected container: the image's
// isthmus-proxy (internal/image.ProxyBinaryPath; a test ties them), the
// data plane without the control plane and Kubernetes' client packages of
// isthmus, so that a pod's memory holds only the proxy. The args keep
// Istio's shape, [proxy sidecar|router|init] (isthmus-proxy takes the
// command lines of isthmus), which the control plane reads to tell a
// gateway's pod.
const ProxyCommand = "/usr/local/bin/isthmus-proxy"

// Config is what every injected sidecar gets.
type Config struct {
	// Image holds isthmus-proxy at ProxyCommand; in a real cluster the
	// isthmus image.
	Image string
	// ClusterID and Network are the defaults when the path names none.
	ClusterID, Network string
	// DiscoveryAddress is the control plane as the pod reaches it.
	DiscoveryAddress string
	MeshID           string
	// Privileged runs istio-proxy privileged (values.global.proxy.privileged).
	Privileged bool
	// ProxyMetadata is meshConfig.defaultConfig.proxyMetadata: environment
	// of every sidecar, as Istio's template writes it
	// (ISTIO_META_DNS_CAPTURE=true also makes the init container send the
	// app's DNS to the sidecar).
	ProxyMetadata map[string]string
	// PrometheusMerge is meshConfig.enablePrometheusMerge (Istio's default
	// on): pods are scraped at the proxy's 15020, which serves the app's
	// metrics with its own.
	PrometheusMerge bool
	Log             *slog.Logger
}

// Handler serves AdmissionReview v1 requests.
func (c *Config) Handler() http.Handler {
	return admission.Handler(func(r *http.Request, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
		cluster, network := c.ClusterID, c.Network
		// /inject/cluster/CLUSTER/net/NETWORK
		if rest, ok := strings.CutPrefix(r.URL.Path, "/inject/"); ok {
			parts := strings.Split(strings.Trim(rest, "/"), "/")
			for i := 0; i+1 < len(parts); i += 2 {
				switch parts[i] {
				case "cluster":
					cluster = parts[i+1]
				case "net":
					network = parts[i+1]
				}
			}
		}
		resp := &admissionv1.AdmissionResponse{Allowed: true}
		var pod corev1.Pod
		if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
			// Never block a pod over our own problem: allow it unchanged.
			c.Log.Error("injection: cannot read the pod; admitted without a sidecar", "err", err)
		} else if patch, why, err := c.patch(&pod, req.Namespace, cluster, network); err != nil {
			// The pod's own annotation is wrong: refused, as Istio's
			// injector refuses it, rather than run without what it asked.
			resp.Allowed = false
			resp.Result = &metav1.Status{Status: metav1.StatusFailure, Code: http.StatusBadRequest, Reason: metav1.StatusReasonBadRequest, Message: err.Error()}
		} else if patch != nil {
			b, _ := json.Marshal(patch)
			pt := admissionv1.PatchTypeJSONPatch
			resp.Patch, resp.PatchType = b, &pt
			c.Log.Info("sidecar injected", "namespace", req.Namespace, "pod", podName(&pod), "cluster", cluster, "network", network)
		} else {
			c.Log.Debug("not injected", "namespace", req.Namespace, "pod", podName(&pod), "why", why)
		}
		return resp
	})
}

func podName(p *corev1.Pod) string {
	if p.Name != "" {
		return p.Name
	}
	return p.GenerateName + "*"
}

// op is one JSON Patch operation.
type op struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// patch returns the operations that inject a pod, or nil and why not; an
// error when the pod to inject asks what cannot be read.
func (c *Config) patch(pod *corev1.Pod, namespace, cluster, network string) ([]op, string, error) {
	if v, ok := pod.Annotations[AnnotationInject]; ok && (v == "false" || v == "n" || v == "no") {
		return nil, "opted out by annotation", nil
	}
	if pod.Spec.HostNetwork {
		return nil, "host network", nil
	}
	if namespace == "" {
		namespace = pod.Namespace
	}
	for i, ctr := range pod.Spec.Containers {
		if ctr.Name != ProxyName {
			continue
		}
		if ctr.Image == "auto" && slices.Contains(strings.Split(pod.Annotations[AnnotationTemplates], ","), "gateway") {
			md, err := c.proxyMetadata(pod)
			if err != nil {
				return nil, "", err
			}
			return c.gatewayPatch(pod, i, namespace, cluster, network, md), "", nil
		}
		return nil, "already injected", nil // re-invocation adds nothing
	}
	md, err := c.proxyMetadata(pod)
	if err != nil {
		return nil, "", err
	}
	var ops []op
	if pod.Labels == nil {
		ops = append(ops, op{"add", "/metadata/labels", map[string]string{}})
	}
	if pod.Annotations == nil {
		ops = append(ops, op{"add", "/metadata/annotations", map[string]string{}})
	}
	ops = append(ops,
		op{"add", "/metadata/labels/" + escape(LabelTLSMode), "istio"},
		op{"add", "/metadata/annotations/" + escape(AnnotationStatus), `{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["istio-token","istiod-ca-cert"],"imagePullSecrets":null,"revision":"default"}`})
	ops = append(ops, canonicalLabels(pod)...)
	if c.mergeMetrics(pod) {
		ops = append(ops, op{"add", "/metadata/annotations/" + escape(annScrape), "true"},
			op{"add", "/metadata/annotations/" + escape(annPort), "15020"},
			op{"add", "/metadata/annotations/" + escape(annPath), "/stats/prometheus"})
	}
	if network != "" && pod.Labels[LabelNetwork] == "" {
		// As Istio's template: the pod says its network, which the control
		// plane reads first (before the system namespace's label).
		ops = append(ops, op{"add", "/metadata/labels/" + escape(LabelNetwork), network})
	}
	if pod.Spec.InitContainers == nil {
		ops = append(ops, op{"add", "/spec/initContainers", []corev1.Container{}})
	}
	ops = append(ops, op{"add", "/spec/initContainers/-", c.initContainer(pod, md)})
	proxy := c.proxyContainer(pod, namespace, cluster, network, md)
	if pod.Annotations[AnnotationRewriteProbes] != "false" {
		probeOps, probers := rewriteProbes(pod)
		ops = append(ops, probeOps...)
		if len(probers) > 0 {
			b, _ := json.Marshal(probers)
			proxy.Env = append(proxy.Env, corev1.EnvVar{Name: "ISTIO_KUBE_APP_PROBERS", Value: string(b)})
		}
	}
	ops = append(ops, op{"add", "/spec/containers/-", proxy})
	if pod.Spec.Volumes == nil {
		ops = append(ops, op{"add", "/spec/volumes", []corev1.Volume{}})
	}
	return append(ops, volumes()...), "", nil
}

// gatewayPatch is Istio's gateway template: the pod's own istio-proxy
// container (image "auto") becomes `isthmus-proxy proxy router` with the
// pod's identity; its env (ISTIO_META_REQUESTED_NETWORK_VIEW, ...) and
// ports are kept. No init container: a gateway's traffic is addressed to it.
func (c *Config) gatewayPatch(pod *corev1.Pod, i int, namespace, cluster, network string, md map[string]string) []op {
	own := pod.Spec.Containers[i]
	ctr := c.proxyContainer(pod, namespace, cluster, network, md)
	ctr.Args = []string{"proxy", "router"}
	ctr.Env = append(ctr.Env, own.Env...)
	ctr.Ports = append(own.Ports, ctr.Ports...)
	ctr.Resources = own.Resources
	ops := []op{{"replace", fmt.Sprintf("/spec/containers/%d", i), ctr}}
	if pod.Annotations == nil {
		ops = append(ops, op{"add", "/metadata/annotations", map[string]string{}})
	}
	if pod.Labels == nil {
		ops = append(ops, op{"add", "/metadata/labels", map[string]string{}})
	}
	// As for sidecars (Istio labels every template's pods): the gateway's
	// name and revision in metrics, and its network, which peers read.
	ops = append(ops, canonicalLabels(pod)...)
	if network != "" && pod.Labels[LabelNetwork] == "" {
		ops = append(ops, op{"add", "/metadata/labels/" + escape(LabelNetwork), network})
	}
	ops = append(ops, op{"add", "/metadata/annotations/" + escape(AnnotationStatus), `{"containers":["istio-proxy"],"volumes":["istio-token","istiod-ca-cert"],"imagePullSecrets":null,"revision":"default"}`})
	if pod.Spec.Volumes == nil {
		ops = append(ops, op{"add", "/spec/volumes", []corev1.Volume{}})
	}
	return append(ops, volumes()...)
}

// volumes are the proxy's token (audience istio-ca) and the mesh root.
func volumes() []op {
	var ops []op
	ops = append(ops, op{"add", "/spec/volumes/-", corev1.Volume{Name: "istio-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "istio-ca", ExpirationSeconds: ptr.To[int64](43200), Path: "istio-token"}}},
	}}}})
	ops = append(ops, op{"add", "/spec/volumes/-", corev1.Volume{Name: "istiod-ca-cert", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
		LocalObjectReference: corev1.LocalObjectReference{Name: "istio-ca-root-cert"}}}}})
	return ops
}

// injectorOwned are the sidecar's variables that say what the injector
// knows of the pod (some set only sometimes: labels, rewritten probes);
// proxyMetadata never sets them.
var injectorOwned = map[string]bool{
	"POD_NAME": true, "POD_NAMESPACE": true, "INSTANCE_IP": true, "SERVICE_ACCOUNT": true, "DISCOVERY_ADDRESS": true, "CA_ADDR": true,
	"ISTIO_META_CLUSTER_ID": true, "ISTIO_META_NETWORK": true, "ISTIO_META_WORKLOAD_NAME": true, "ISTIO_META_MESH_ID": true,
	"ISTIO_METAJSON_LABELS": true, "ISTIO_KUBE_APP_PROBERS": true, "ISTIO_PROMETHEUS_ANNOTATIONS": true,
}

// podProxyConfig reads the pod's proxy.istio.io/config: its proxyMetadata,
// and the other ProxyConfig fields it sets (which isthmus does not apply).
func podProxyConfig(pod *corev1.Pod) (md map[string]string, others []string, err error) {
	v, ok := pod.Annotations[AnnotationProxyConfig]
	if !ok {
		return nil, nil, nil
	}
	var pc map[string]json.RawMessage
	if err := yaml.Unmarshal([]byte(v), &pc); err != nil {
		return nil, nil, fmt.Errorf("annotation %s is not a ProxyConfig: %w", AnnotationProxyConfig, err)
	}
	for k, raw := range pc {
		if k != "proxyMetadata" {
			others = append(others, k)
			continue
		}
		if err := json.Unmarshal(raw, &md); err != nil {
			return nil, nil, fmt.Errorf("annotation %s: proxyMetadata must map names to strings: %w", AnnotationProxyConfig, err)
		}
	}
	slices.Sort(others)
	return md, others, nil
}

// proxyMetadata is the mesh's proxyMetadata with the pod's annotation's
// over it; an error when the annotation does not parse. The annotation's
// other fields are said not to be applied.
func (c *Config) proxyMetadata(pod *corev1.Pod) (map[string]string, error) {
	md, others, err := podProxyConfig(pod)
	if err != nil {
		return nil, err
	}
	if len(others) > 0 {
		c.Log.Warn("injection: proxy.istio.io/config fields other than proxyMetadata are not applied", "pod", podName(pod), "fields", others)
	}
	out := maps.Clone(c.ProxyMetadata)
	if len(md) > 0 {
		if out == nil {
			out = map[string]string{}
		}
		maps.Copy(out, md)
	}
	return out, nil
}

// escape is JSON Pointer escaping for a map key.
func escape(k string) string { return strings.ReplaceAll(strings.ReplaceAll(k, "~", "~0"), "/", "~1") }

// Prometheus's pod annotations.
const (
	annScrape = "prometheus.io/scrape"
	annPort   = "prometheus.io/port"
	annPath   = "prometheus.io/path"
)

// mergeMetrics: Istio merges unless the mesh turned it off or the pod
// said it is not to be scraped (prometheus.io/scrape: "false"), which
// stays as it is.
func (c *Config) mergeMetrics(pod *corev1.Pod) bool {
	return c.PrometheusMerge && pod.Annotations[annScrape] != "false"
}

// canonicalLabels are Istio's service.istio.io/canonical-name and
// canonical-revision where the pod has none: what metrics and Kiali group
// workloads by (source_canonical_service, ..._canonical_revision).
func canonicalLabels(pod *corev1.Pod) []op {
	var ops []op
	if pod.Labels["service.istio.io/canonical-name"] == "" {
		ops = append(ops, op{"add", "/metadata/labels/" + escape("service.istio.io/canonical-name"), canonicalName(pod)})
	}
	if pod.Labels["service.istio.io/canonical-revision"] == "" {
		rev := "latest"
		for _, k := range []string{"app.kubernetes.io/version", "version"} {
			if v := pod.Labels[k]; v != "" {
				rev = v
				break
			}
		}
		ops = append(ops, op{"add", "/metadata/labels/" + escape("service.istio.io/canonical-revision"), rev})
	}
	return ops
}

// canonicalName is the app's name for metrics: the app label, else the pod's owner name.
func canonicalName(p *corev1.Pod) string {
	for _, k := range []string{"app.kubernetes.io/name", "app"} {
		if v := p.Labels[k]; v != "" {
			return v
		}
	}
	if p.GenerateName != "" {
		parts := strings.Split(strings.TrimSuffix(p.GenerateName, "-"), "-")
		if len(parts) > 1 {
			parts = parts[:len(parts)-1] // the ReplicaSet hash
		}
		return strings.Join(parts, "-")
	}
	return p.Name
}

func (c *Config) initContainer(pod *corev1.Pod, md map[string]string) corev1.Container {
	args := []string{"proxy", "init"}
	for ann, flag := range map[string]string{annIncludeInbound: "-b", annExcludeInbound: "-d", annIncludeOutbound: "-i", annExcludeOutbound: "-x", annExcludeOutPorts: "-o"} {
		if v, ok := pod.Annotations[ann]; ok {
			args = append(args, flag, v)
		}
	}
	if md["ISTIO_META_DNS_CAPTURE"] == "true" {
		args = append(args, "--redirect-dns")
	}
	return corev1.Container{
		Name: InitName, Image: c.Image, Command: []string{ProxyCommand}, Args: args,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser: ptr.To[int64](0), RunAsNonRoot: ptr.To(false),
			Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN", "NET_RAW"}, Drop: []corev1.Capability{"ALL"}},
		},
	}
}

func (c *Config) proxyContainer(pod *corev1.Pod, namespace, cluster, network string, md map[string]string) corev1.Container {
	field := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	env := []corev1.EnvVar{
		field("POD_NAME", "metadata.name"), field("POD_NAMESPACE", "metadata.namespace"),
		field("INSTANCE_IP", "status.podIP"), field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
		{Name: "DISCOVERY_ADDRESS", Value: c.DiscoveryAddress},
		{Name: "ISTIO_META_CLUSTER_ID", Value: cluster},
		{Name: "ISTIO_META_NETWORK", Value: network},
		{Name: "ISTIO_META_WORKLOAD_NAME", Value: canonicalName(pod)},
		{Name: "ISTIO_META_MESH_ID", Value: c.MeshID},
	}
	if labels, err := json.Marshal(pod.Labels); err == nil && len(pod.Labels) > 0 {
		env = append(env, corev1.EnvVar{Name: "ISTIO_METAJSON_LABELS", Value: string(labels)})
	}
	if c.mergeMetrics(pod) {
		// Where the app said it serves metrics, before the annotations
		// are pointed at the proxy.
		own := map[string]string{}
		for k, short := range map[string]string{annScrape: "scrape", annPort: "port", annPath: "path"} {
			if v, ok := pod.Annotations[k]; ok {
				own[short] = v
			}
		}
		if len(own) > 0 {
			b, _ := json.Marshal(own)
			env = append(env, corev1.EnvVar{Name: "ISTIO_PROMETHEUS_ANNOTATIONS", Value: string(b)})
		}
	}
	// The mesh's proxyMetadata under the pod's, except what the injector
	// says of the pod itself (its cluster, network and identity are not
	// configuration).
	for _, k := range slices.Sorted(maps.Keys(md)) {
		if !injectorOwned[k] && !slices.ContainsFunc(env, func(e corev1.EnvVar) bool { return e.Name == k }) {
			env = append(env, corev1.EnvVar{Name: k, Value: md[k]})
		}
	}
	return corev1.Container{
		Name: ProxyName, Image: c.Image, Command: []string{ProxyCommand}, Args: []string{"proxy", "sidecar"}, Env: env,
		Ports: []corev1.ContainerPort{{Name: "http-envoy-prom", ContainerPort: 15090, Protocol: corev1.ProtocolTCP}},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz/ready", Port: intstr.FromInt32(15021)}},
			PeriodSeconds: 2, FailureThreshold: 30,
		},
		SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To[int64](1337), RunAsGroup: ptr.To[int64](1337), RunAsNonRoot: ptr.To(true),
			AllowPrivilegeEscalation: ptr.To(c.Privileged), ReadOnlyRootFilesystem: ptr.To(true), Privileged: ptr.To(c.Privileged)},
		VolumeMounts: []corev1.VolumeMount{
			{Name: "istio-token", MountPath: "/var/run/secrets/tokens"},
			{Name: "istiod-ca-cert", MountPath: "/var/run/secrets/istio"},
		},
	}
}

// prober is an original probe as ISTIO_KUBE_APP_PROBERS carries it.
type prober struct {
	HTTPGet        *corev1.HTTPGetAction   `json:"httpGet,omitempty"`
	TCPSocket      *corev1.TCPSocketAction `json:"tcpSocket,omitempty"`
	TimeoutSeconds int32                   `json:"timeoutSeconds,omitempty"`
}

// rewriteProbes points the app containers' HTTP and TCP probes at the
// proxy's 15020 /app-health/CONTAINER/KIND, as Istio's injector does: the
// kubelet calls in plaintext from the node, which a STRICT inbound
// refuses, while the proxy calls the app over localhost. Named ports are
// resolved here, where the container's ports are known.
func rewriteProbes(pod *corev1.Pod) ([]op, map[string]prober) {
	var ops []op
	probers := map[string]prober{}
	for i, ctr := range pod.Spec.Containers {
		for _, pr := range []struct {
			kind, field string
			probe       *corev1.Probe
		}{{"readyz", "readinessProbe", ctr.ReadinessProbe}, {"livez", "livenessProbe", ctr.LivenessProbe}, {"startupz", "startupProbe", ctr.StartupProbe}} {
			p := pr.probe
			if p == nil || (p.HTTPGet == nil && p.TCPSocket == nil) {
				continue
			}
			path := "/app-health/" + ctr.Name + "/" + pr.kind
			orig := prober{TimeoutSeconds: p.TimeoutSeconds}
			if p.HTTPGet != nil {
				g := *p.HTTPGet
				g.Port = resolvePort(ctr, g.Port)
				orig.HTTPGet = &g
			} else {
				t := *p.TCPSocket
				t.Port = resolvePort(ctr, t.Port)
				orig.TCPSocket = &t
			}
			probers[path] = orig
			np := p.DeepCopy()
			np.TCPSocket = nil
			np.HTTPGet = &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(15020), Scheme: corev1.URISchemeHTTP}
			ops = append(ops, op{"replace", fmt.Sprintf("/spec/containers/%d/%s", i, pr.field), np})
		}
	}
	return ops, probers
}

// resolvePort turns a named port into the container's number.
func resolvePort(ctr corev1.Container, p intstr.IntOrString) intstr.IntOrString {
	if p.Type == intstr.String {
		for _, cp := range ctr.Ports {
			if cp.Name == p.StrVal {
				return intstr.FromInt32(cp.ContainerPort)
			}
		}
	}
	return p
}
