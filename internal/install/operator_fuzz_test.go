package install

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"testing"

	"sigs.k8s.io/yaml"
)

// FuzzParse reads an IstioOperator file given as bytes, and with one
// --set on top: each is refused with an error, or accepted and then
// rendered, and the manifest printed for it reads back as the very
// objects rendered (no value breaks out of its place in the YAML).
func FuzzParse(f *testing.F) {
	for _, name := range []string{"cluster-eks-primary.yaml", "east-west-gateway-cluster-eks.yaml", "cluster-aks-remote.yaml"} {
		b, err := os.ReadFile(filepath.Join(examples, name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, "")
		f.Add(b, "values.global.remotePilotAddress=198.18.1.10")
	}
	head := "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n"
	f.Add([]byte(head+"spec:\n  profile: minimal\n  meshConfig: {enableTracing: true, pathNormalization: {normalization: NONE}}\n"), "components.ingressGateways[0].enabled=false")
	f.Add([]byte(head+"spec:\n  profile: empty\n  components:\n    ingressGateways:\n    - name: gw\n      label: {a: \"x\\n---\\nkind: Secret\"}\n      k8s: {replicaCount: 2, service: {ports: [{port: 80, name: http}]}}\n"), "components.ingressGateways[0].k8s.podAnnotations.x=y")
	f.Add([]byte(head+"spec:\n  values:\n    global:\n      meshID: [a]\n"), "spec.values.global.network=n1")
	f.Add([]byte(head+"---\n"+head), "")
	f.Add([]byte("a: &a [*a]\n"), "[0]=1")
	f.Add([]byte(head+"spec: {namespace: Not_A_Name}\n"), "=")
	file := filepath.Join(f.TempDir(), "op.yaml")
	f.Fuzz(func(t *testing.T, doc []byte, set string) {
		l, err := Parse(doc)
		checkLoaded(t, doc, l, err)
		if set == "" {
			return
		}
		if err := os.WriteFile(file, doc, 0o600); err != nil {
			t.Fatal(err)
		}
		l, err = Load([]string{file}, []string{set})
		checkLoaded(t, doc, l, err)
	})
}

var documentStart = regexp.MustCompile(`(?m)^---\n`)

func checkLoaded(t *testing.T, doc []byte, l *Loaded, err error) {
	t.Helper()
	if (l == nil) == (err == nil) {
		t.Fatalf("%q: loaded %v and error %v", doc, l, err)
	}
	if err != nil {
		return
	}
	// Istio's CRDs take most of a render and are the same for every file;
	// base's other objects depend only on the namespace, which is checked.
	noBase := *l
	noBase.Spec.Components.Base = &Component{Enabled: new(bool)}
	parts, err := Render(&noBase)
	if err != nil {
		t.Fatalf("%q: accepted, then not rendered: %v", doc, err)
	}
	manifest, err := YAML(parts)
	if err != nil {
		t.Fatalf("%q: rendered, then not printed: %v", doc, err)
	}
	docs := documentStart.Split(string(manifest), -1)[1:] // as kubectl splits a manifest
	i := 0
	for _, p := range parts {
		for _, o := range p.Objects {
			if i >= len(docs) {
				t.Fatalf("%q: %d documents in the manifest, fewer than the objects", doc, len(docs))
			}
			var back map[string]any
			if err := yaml.Unmarshal([]byte(docs[i]), &back); err != nil {
				t.Fatalf("%q: document %d of the manifest does not read back: %v", doc, i, err)
			}
			want, _ := yaml.Marshal(o.Object)
			again, _ := yaml.Marshal(back)
			if !reflect.DeepEqual(want, again) {
				t.Fatalf("%q: %s reads back as\n%s\nwant\n%s", doc, describeObj(o), again, want)
			}
			i++
		}
	}
	if i != len(docs) {
		t.Fatalf("%q: %d documents in the manifest for %d objects", doc, len(docs), i)
	}
}
