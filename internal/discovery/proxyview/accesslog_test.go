package proxyview

import (
	"bytes"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// The same configuration generates the same bytes: a JSON access log
// format is a map, and if its order changed with each generation, every
// listener would be a new version at every push.
func TestAccessLogGeneratesTheSameBytes(t *testing.T) {
	reg := registry.New()
	h := "profile.test.svc.cluster.local"
	reg.SetService("c1", h, &registry.Service{Namespace: "test", Name: "profile", Hostname: h, ClusterIP: "10.96.0.10",
		Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}, {Name: "tcp", Port: 7070, Protocol: "TCP", AppProtocol: "tcp"}}})
	reg.SetEndpoints("c1", h, []registry.Endpoint{{Address: "10.64.0.5", Ports: map[string]int32{"http": 8080, "tcp": 7070}, Cluster: "c1", Network: "n1", TLSMode: "istio", Ready: true}})
	g := &Generator{Registry: reg, AccessLog: &AccessLog{Path: "/dev/stdout", JSON: true}}
	p := &Proxy{ID: "sidecar~10.64.0.5~profile-1.test~test.svc.cluster.local", Type: Sidecar, IP: "10.64.0.5", Namespace: "test", ClusterID: "c1", Network: "n1"}
	bytesOf := func() [][]byte {
		gen := g.View(p)
		in, _ := g.Inbound(g.InboundIndex(reg.Services()).For("test", "10.64.0.5"), InboundPolicy{})
		var out [][]byte
		for _, r := range append(gen.Listeners, types.Resource(in)) {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, b)
		}
		return out
	}
	first := bytesOf()
	for range 5 {
		again := bytesOf()
		if len(again) != len(first) {
			t.Fatalf("%d listeners, then %d", len(first), len(again))
		}
		for i := range first {
			if !bytes.Equal(first[i], again[i]) {
				t.Fatalf("listener %d changed between two generations of the same configuration", i)
			}
		}
	}
}
