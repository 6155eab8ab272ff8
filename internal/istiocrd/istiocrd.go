// Package istiocrd carries Istio's CustomResourceDefinitions exactly as the
// pinned istio.io/api module publishes them, so isthmus installs the same
// schemas users' YAML was written against.
package istiocrd

import _ "embed"

//go:generate sh -c "cp \"$(go list -m -f '{{.Dir}}' istio.io/api)/kubernetes/customresourcedefinitions.gen.yaml\" crds.gen.yaml && chmod 644 crds.gen.yaml"

// YAML is the multi-document CRD manifest (15 CRDs) of istio.io/api.
//
//go:embed crds.gen.yaml
var YAML []byte
