// Package istiocrd carries Istio's CustomResourceDefinitions exactly as the
// pinned istio.io/api module publishes them, so isthmus installs the same
// schemas users' YAML was written against.
package istiocrd

import (
	"bytes"
	_ "embed"
	"fmt"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"
)

//go:generate sh -c "cp \"$(go list -m -f '{{.Dir}}' istio.io/api)/kubernetes/customresourcedefinitions.gen.yaml\" crds.gen.yaml && chmod 644 crds.gen.yaml"

// YAML is the multi-document CRD manifest (15 CRDs) of istio.io/api.
//
//go:embed crds.gen.yaml
var YAML []byte

// Kind is one of Istio's kinds, at the version its CRD stores.
type Kind struct {
	Kind     string
	Resource schema.GroupVersionResource
}

// Kinds lists every kind the CRDs define, in the manifest's order.
func Kinds() ([]Kind, error) {
	var out []Kind
	for _, doc := range bytes.Split(YAML, []byte("\n---")) {
		var crd struct {
			Spec struct {
				Group string
				Names struct{ Kind, Plural string }
				// Versions: the stored one is what a list returns by default.
				Versions []struct {
					Name    string
					Storage bool
				}
			}
		}
		if err := yaml.Unmarshal(doc, &crd); err != nil {
			return nil, fmt.Errorf("embedded Istio CRDs: %w", err)
		}
		for _, v := range crd.Spec.Versions {
			if v.Storage {
				out = append(out, Kind{Kind: crd.Spec.Names.Kind, Resource: schema.GroupVersionResource{Group: crd.Spec.Group, Version: v.Name, Resource: crd.Spec.Names.Plural}})
			}
		}
	}
	return out, nil
}
