// Package meshconfig reads Istio's mesh configuration, the ConfigMap
// `istio` of the mesh namespace: key `mesh` (MeshConfig: trustDomain,
// meshId, ...) and key `meshNetworks` (which cluster is on which network,
// and gateways given by address). Both are YAML of istio.io/api's protos.
package meshconfig

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

// ConfigMapName is Istio's (istio-<revision> for revisioned installs).
const ConfigMapName = "istio"

// Mesh is what the control plane uses of the mesh configuration.
type Mesh struct {
	Config   *meshv1alpha1.MeshConfig
	Networks *meshv1alpha1.MeshNetworks
	// raw is the ConfigMap's data as loaded, to tell when it changed.
	raw map[string]string
}

// Stale watches the ConfigMap until ctx ends and reports, through
// changed, whether it differs from what was loaded: the control plane
// applies the mesh config when it starts (an install that changes it
// rolls the control plane), so an edit of the ConfigMap alone must be
// said, not silently left waiting.
func (m *Mesh) Stale(ctx context.Context, client kubernetes.Interface, namespace string, every time.Duration, changed func(stale bool)) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		cm, err := client.CoreV1().ConfigMaps(namespace).Get(ctx, ConfigMapName, metav1.GetOptions{})
		var data map[string]string
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			continue // a failed read says nothing
		default:
			data = cm.Data
		}
		changed(data["mesh"] != m.raw["mesh"] || data["meshNetworks"] != m.raw["meshNetworks"])
	}
}

// Load reads the ConfigMap; a missing one gives empty settings, a broken
// one an error that names the key.
func Load(ctx context.Context, client kubernetes.Interface, namespace string) (*Mesh, error) {
	m := &Mesh{Config: &meshv1alpha1.MeshConfig{}, Networks: &meshv1alpha1.MeshNetworks{}}
	cm, err := client.CoreV1().ConfigMaps(namespace).Get(ctx, ConfigMapName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		withDefaults("", m.Config)
		return m, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read ConfigMap %s/%s: %w", namespace, ConfigMapName, err)
	}
	m.raw = cm.Data
	if err := parse(cm.Data["mesh"], m.Config); err != nil {
		return nil, fmt.Errorf("ConfigMap %s/%s key mesh: %w", namespace, ConfigMapName, err)
	}
	withDefaults(cm.Data["mesh"], m.Config)
	if err := parse(cm.Data["meshNetworks"], m.Networks); err != nil {
		return nil, fmt.Errorf("ConfigMap %s/%s key meshNetworks: %w", namespace, ConfigMapName, err)
	}
	return m, nil
}

// withDefaults sets Istio's defaults where they are not the proto's zero
// value and the file does not say: outboundTrafficPolicy's mode is
// ALLOW_ANY unless set (its zero value is REGISTRY_ONLY, which would
// refuse every destination outside the registry).
func withDefaults(y string, c *meshv1alpha1.MeshConfig) {
	var raw struct {
		OutboundTrafficPolicy struct {
			Mode *string `json:"mode"`
		} `json:"outboundTrafficPolicy"`
	}
	_ = yaml.Unmarshal([]byte(y), &raw) // parse already refused what does not parse
	if raw.OutboundTrafficPolicy.Mode == nil {
		c.OutboundTrafficPolicy = &meshv1alpha1.MeshConfig_OutboundTrafficPolicy{Mode: meshv1alpha1.MeshConfig_OutboundTrafficPolicy_ALLOW_ANY}
	}
}

func parse(y string, into proto.Message) error {
	if y == "" {
		return nil
	}
	j, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		return err
	}
	// Fields this version does not know are skipped, as istiod does across versions.
	return protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(j, into)
}

// MeshID is defaultConfig.meshId (the install's values.global.meshID).
func (m *Mesh) MeshID() string { return m.Config.GetDefaultConfig().GetMeshId() }

// NetworkOf is the network meshNetworks gives a cluster (fromRegistry), or "".
func (m *Mesh) NetworkOf(clusterID string) string {
	for name, n := range m.Networks.GetNetworks() {
		for _, e := range n.GetEndpoints() {
			if e.GetFromRegistry() == clusterID {
				return name
			}
		}
	}
	return ""
}

// Gateway is a network gateway given by address in meshNetworks.
type Gateway struct {
	Network, Address string
	Port             uint32
}

// Gateways lists meshNetworks gateways given by address; those given by
// registryServiceName are found from their labelled Services instead.
func (m *Mesh) Gateways() []Gateway {
	var out []Gateway
	for name, n := range m.Networks.GetNetworks() {
		for _, g := range n.GetGateways() {
			if a := g.GetAddress(); a != "" {
				out = append(out, Gateway{Network: name, Address: a, Port: g.GetPort()})
			}
		}
	}
	return out
}
