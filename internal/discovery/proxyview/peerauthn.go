package proxyview

import (
	"fmt"
	"sort"
	"strings"

	securitybeta "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// MTLSMode is what a workload's port accepts (PeerAuthentication).
type MTLSMode string

// PeerAuthentication's modes after inheritance.
const (
	// Permissive accepts Istio mTLS and plaintext (Istio's default).
	Permissive MTLSMode = "PERMISSIVE"
	// Strict accepts Istio mTLS only.
	Strict MTLSMode = "STRICT"
	// Disable accepts plaintext only.
	Disable MTLSMode = "DISABLE"
)

// MTLSModes is a workload's inbound mTLS policy: a default and port-level
// exceptions, keyed by the workload's (target) port. The zero value is
// PERMISSIVE everywhere.
type MTLSModes struct {
	Default MTLSMode
	Ports   map[int32]MTLSMode
}

// Mode is the policy of one port.
func (m MTLSModes) Mode(port int32) MTLSMode {
	if p, ok := m.Ports[port]; ok {
		return p
	}
	if m.Default == "" {
		return Permissive
	}
	return m.Default
}

// Key identifies the policy, for sharing generated listeners.
func (m MTLSModes) Key() string {
	var b strings.Builder
	b.WriteString(string(m.Mode(0)))
	ports := make([]int, 0, len(m.Ports))
	for p := range m.Ports {
		ports = append(ports, int(p))
	}
	sort.Ints(ports)
	for _, p := range ports {
		fmt.Fprintf(&b, ",%d=%s", p, m.Ports[int32(p)])
	}
	return b.String()
}

// ResolveMTLS applies Istio's PeerAuthentication precedence to one
// workload: the mesh-wide policy (root namespace, no selector), then its
// namespace's (no selector), then one selecting its labels, each overriding
// what it sets (UNSET inherits); port-level settings come from the
// workload's policy. Among several at one level the oldest wins, as in Istio.
func ResolveMTLS(pas []*securityv1.PeerAuthentication, rootNamespace, namespace string, podLabels map[string]string) MTLSModes {
	var mesh, ns, workload *securityv1.PeerAuthentication
	older := func(cur, pa *securityv1.PeerAuthentication) *securityv1.PeerAuthentication {
		if cur == nil || pa.CreationTimestamp.Before(&cur.CreationTimestamp) ||
			(pa.CreationTimestamp.Equal(&cur.CreationTimestamp) && pa.Name < cur.Name) {
			return pa
		}
		return cur
	}
	for _, pa := range pas {
		sel := pa.Spec.GetSelector().GetMatchLabels()
		switch {
		case len(sel) == 0 && pa.Namespace == rootNamespace:
			mesh = older(mesh, pa)
		case len(sel) == 0 && pa.Namespace == namespace:
			ns = older(ns, pa)
		case len(sel) > 0 && pa.Namespace == namespace && labels.SelectorFromSet(sel).Matches(labels.Set(podLabels)):
			workload = older(workload, pa)
		}
	}
	out := MTLSModes{Default: Permissive}
	for _, pa := range []*securityv1.PeerAuthentication{mesh, ns, workload} {
		if pa == nil {
			continue
		}
		if m := modeOf(pa.Spec.GetMtls()); m != "" {
			out.Default = m
		}
	}
	if workload != nil {
		for port, pm := range workload.Spec.GetPortLevelMtls() {
			m := modeOf(pm)
			if m == "" {
				m = out.Default
			}
			if out.Ports == nil {
				out.Ports = map[int32]MTLSMode{}
			}
			out.Ports[int32(port)] = m
		}
	}
	return out
}

func modeOf(m *securitybeta.PeerAuthentication_MutualTLS) MTLSMode {
	switch m.GetMode() {
	case securitybeta.PeerAuthentication_MutualTLS_STRICT:
		return Strict
	case securitybeta.PeerAuthentication_MutualTLS_PERMISSIVE:
		return Permissive
	case securitybeta.PeerAuthentication_MutualTLS_DISABLE:
		return Disable
	}
	return ""
}
