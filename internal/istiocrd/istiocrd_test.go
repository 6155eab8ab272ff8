package istiocrd

import "testing"

func TestKinds(t *testing.T) {
	kinds, err := Kinds()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, k := range kinds {
		got[k.Resource.Group+"/"+k.Kind] = k.Resource.Version + " " + k.Resource.Resource
	}
	for kind, want := range map[string]string{
		"networking.istio.io/VirtualService": "v1 virtualservices", "networking.istio.io/EnvoyFilter": "v1alpha3 envoyfilters",
		"telemetry.istio.io/Telemetry": "v1alpha1 telemetries", "security.istio.io/AuthorizationPolicy": "v1 authorizationpolicies",
	} {
		if got[kind] != want {
			t.Errorf("%s: %q, want %q", kind, got[kind], want)
		}
	}
	if len(kinds) != 15 {
		t.Errorf("%d kinds, want the manifest's 15: %v", len(kinds), got)
	}
}
