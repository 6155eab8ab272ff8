package node

import (
	"context"
	"fmt"
	"math"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// env builds a container's environment the way the kubelet does: service
// variables for the API server, envFrom, then env with $(VAR) expansion.
// imageEnv, the image's ENV, comes first and the container's overrides it.
func (w *podWorker) env(ctx context.Context, p *corev1.Pod, c corev1.Container, imageEnv []string) ([]string, error) {
	vars := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	for _, kv := range imageEnv {
		if k, v, ok := strings.Cut(kv, "="); ok {
			set(k, v)
		}
	}
	set("HOSTNAME", p.Name)
	// As container runtimes do for a user without a passwd entry.
	home := "/root"
	if uid := runAsUser(p, c); uid != nil && *uid != 0 {
		home = "/"
	}
	set("HOME", home)
	api := w.a.cfg.APIServiceIP
	set("KUBERNETES_SERVICE_HOST", api)
	set("KUBERNETES_SERVICE_PORT", "443")
	set("KUBERNETES_SERVICE_PORT_HTTPS", "443")
	set("KUBERNETES_PORT", "tcp://"+api+":443")
	set("KUBERNETES_PORT_443_TCP", "tcp://"+api+":443")
	set("KUBERNETES_PORT_443_TCP_PROTO", "tcp")
	set("KUBERNETES_PORT_443_TCP_PORT", "443")
	set("KUBERNETES_PORT_443_TCP_ADDR", api)

	for _, from := range c.EnvFrom {
		data, err := w.sourceData(ctx, p.Namespace, from.ConfigMapRef, from.SecretRef)
		if err != nil {
			return nil, err
		}
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			set(from.Prefix+k, data[k])
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			set(e.Name, expand(e.Value, vars))
			continue
		}
		v, ok, err := w.valueFrom(ctx, p, c, e.ValueFrom)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		if ok {
			set(e.Name, v)
		}
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vars[k])
	}
	return out, nil
}

// expand replaces $(VAR) with earlier variables; $$ escapes, unknown stays.
func expand(s string, vars map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := vars[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

func (w *podWorker) valueFrom(ctx context.Context, p *corev1.Pod, c corev1.Container, src *corev1.EnvVarSource) (string, bool, error) {
	switch {
	case src.FieldRef != nil:
		v, err := w.fieldValue(p, src.FieldRef.FieldPath)
		return v, err == nil, err
	case src.ResourceFieldRef != nil:
		v, err := resourceValue(p, c, src.ResourceFieldRef)
		return v, err == nil, err
	case src.ConfigMapKeyRef != nil:
		r := src.ConfigMapKeyRef
		cm, err := w.a.cs.CoreV1().ConfigMaps(p.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
		if err != nil {
			if r.Optional != nil && *r.Optional {
				return "", false, nil
			}
			return "", false, fmt.Errorf("configmap %s: %w", r.Name, err)
		}
		v, ok := cm.Data[r.Key]
		if !ok && !(r.Optional != nil && *r.Optional) {
			return "", false, fmt.Errorf("configmap %s has no key %s", r.Name, r.Key)
		}
		return v, ok, nil
	case src.SecretKeyRef != nil:
		r := src.SecretKeyRef
		s, err := w.a.cs.CoreV1().Secrets(p.Namespace).Get(ctx, r.Name, metav1.GetOptions{})
		if err != nil {
			if r.Optional != nil && *r.Optional {
				return "", false, nil
			}
			return "", false, fmt.Errorf("secret %s: %w", r.Name, err)
		}
		v, ok := s.Data[r.Key]
		if !ok && !(r.Optional != nil && *r.Optional) {
			return "", false, fmt.Errorf("secret %s has no key %s", r.Name, r.Key)
		}
		return string(v), ok, nil
	}
	return "", false, nil
}

// sourceData reads a whole ConfigMap or Secret for envFrom.
func (w *podWorker) sourceData(ctx context.Context, ns string, cm *corev1.ConfigMapEnvSource, sec *corev1.SecretEnvSource) (map[string]string, error) {
	out := map[string]string{}
	if cm != nil {
		got, err := w.a.cs.CoreV1().ConfigMaps(ns).Get(ctx, cm.Name, metav1.GetOptions{})
		if err != nil {
			if cm.Optional != nil && *cm.Optional {
				return out, nil
			}
			return nil, fmt.Errorf("envFrom configmap %s: %w", cm.Name, err)
		}
		for k, v := range got.Data {
			out[k] = v
		}
	}
	if sec != nil {
		got, err := w.a.cs.CoreV1().Secrets(ns).Get(ctx, sec.Name, metav1.GetOptions{})
		if err != nil {
			if sec.Optional != nil && *sec.Optional {
				return out, nil
			}
			return nil, fmt.Errorf("envFrom secret %s: %w", sec.Name, err)
		}
		for k, v := range got.Data {
			out[k] = string(v)
		}
	}
	return out, nil
}

// fieldValue resolves a downward-API field path.
func (w *podWorker) fieldValue(p *corev1.Pod, path string) (string, error) {
	if k, ok := strings.CutPrefix(path, "metadata.labels['"); ok {
		return p.Labels[strings.TrimSuffix(k, "']")], nil
	}
	if k, ok := strings.CutPrefix(path, "metadata.annotations['"); ok {
		return p.Annotations[strings.TrimSuffix(k, "']")], nil
	}
	switch path {
	case "metadata.name":
		return p.Name, nil
	case "metadata.namespace":
		return p.Namespace, nil
	case "metadata.uid":
		return string(p.UID), nil
	case "metadata.labels":
		return formatMap(p.Labels), nil
	case "metadata.annotations":
		return formatMap(p.Annotations), nil
	case "spec.nodeName":
		return p.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return p.Spec.ServiceAccountName, nil
	case "status.hostIP", "status.hostIPs":
		return w.a.cfg.Address.String(), nil
	case "status.podIP", "status.podIPs":
		if ip := w.podIP(); ip.IsValid() {
			return ip.String(), nil
		}
		return "", nil
	}
	return "", fmt.Errorf("unsupported fieldRef %q", path)
}

// formatMap renders labels/annotations as the downward API does: k="v" lines, sorted.
func formatMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "%s=%q", k, m[k])
	}
	return b.String()
}

// resourceValue resolves limits/requests, defaulting limits to the node's capacity.
func resourceValue(p *corev1.Pod, c corev1.Container, r *corev1.ResourceFieldSelector) (string, error) {
	if r.ContainerName != "" {
		for _, cc := range append(append([]corev1.Container{}, p.Spec.Containers...), p.Spec.InitContainers...) {
			if cc.Name == r.ContainerName {
				c = cc
			}
		}
	}
	var q resource.Quantity
	var ok bool
	kind, name, _ := strings.Cut(r.Resource, ".")
	switch kind {
	case "limits":
		q, ok = c.Resources.Limits[corev1.ResourceName(name)]
	case "requests":
		q, ok = c.Resources.Requests[corev1.ResourceName(name)]
	default:
		return "", fmt.Errorf("unsupported resource %q", r.Resource)
	}
	if !ok {
		switch name {
		case "cpu":
			q = *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI)
		case "memory":
			q = *resource.NewQuantity(memTotal(), resource.BinarySI)
		default:
			q = resource.Quantity{}
		}
	}
	div := r.Divisor
	if div.IsZero() {
		div = resource.MustParse("1")
	}
	v := math.Ceil(float64(q.MilliValue()) / float64(div.MilliValue()))
	return strconv.FormatInt(int64(v), 10), nil
}

func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}

// runAsUser is the container's user, else the pod's, else nil (the image's).
func runAsUser(p *corev1.Pod, c corev1.Container) *int64 {
	if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
		return c.SecurityContext.RunAsUser
	}
	if p.Spec.SecurityContext != nil {
		return p.Spec.SecurityContext.RunAsUser
	}
	return nil
}
