package telemetry

import (
	"encoding/base64"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// FuzzDecode decodes x-envoy-peer-metadata as a caller or an upstream
// sends it: any header gives a peer whose every label is set (metrics
// labels, "unknown" at worst) and the same peer again (the cache holds
// what was decoded); and what NewSelf sends, Decode reads back.
func FuzzDecode(f *testing.F) {
	_, md := NewSelf("sidecar~10.0.0.1~profile-1.ns~ns.svc.cluster.local", "profile", "ns", "c1", "spiffe://cluster.local/ns/ns/sa/profile",
		map[string]string{"app": "profile", "version": "v1"}).Headers()
	f.Add(md, "profile", "ns", "c1", "profile", "v1")
	f.Add("", "", "", "", "", "")
	f.Add("not base64!", "w", "n", "c", "a", "v")
	f.Add(base64.StdEncoding.EncodeToString([]byte{0x0a, 0x03, 'a', 'b'}), "w", "", "c", "", "v") // a truncated Struct
	lv, _ := structpb.NewStruct(map[string]any{"LABELS": "not a struct", "WORKLOAD_NAME": 7.0})
	b, _ := proto.Marshal(lv)
	f.Add(base64.StdEncoding.EncodeToString(b), "a.b", "ns-2", "cluster-2", "app.kubernetes.io", "\u00e9")
	f.Fuzz(func(t *testing.T, header, workload, namespace, cluster, app, version string) {
		p := Decode(header)
		for _, v := range []string{p.Workload, p.Namespace, p.App, p.Version, p.Cluster, p.Principal, p.CanonicalService, p.CanonicalRevision} {
			if v == "" {
				t.Fatalf("Decode(%q) = %+v: an empty label", header, p)
			}
		}
		if again := Decode(header); again != p {
			t.Fatalf("Decode(%q) = %+v, then %+v", header, p, again)
		}

		for _, s := range []string{workload, namespace, cluster, app, version} {
			if !utf8.ValidString(s) {
				return // a Struct holds UTF-8 only; NewSelf sends no metadata then
			}
		}
		self := NewSelf("id", workload, namespace, cluster, "spiffe://td/ns/n/sa/s", map[string]string{"app": app, "version": version})
		_, md := self.Headers()
		got := Decode(md)
		canonical, revision := app, version
		if canonical == "" {
			canonical = workload
		}
		if revision == "" {
			revision = "latest"
		}
		want := Peer{Workload: orUnknown(workload), Namespace: orUnknown(namespace), Cluster: orUnknown(cluster),
			App: orUnknown(app), Version: orUnknown(version), Principal: "unknown", CanonicalService: orUnknown(canonical), CanonicalRevision: revision}
		if got != want {
			t.Fatalf("NewSelf(%q, %q, %q, app %q, version %q) sends %q, read back as %+v", workload, namespace, cluster, app, version, md, got)
		}
	})
}

// FuzzRequestLabels records requests and connections whose labels come
// from what callers and upstreams send (the Host or :authority of an
// inbound request, an upstream's grpc-status, peer metadata): whatever
// they hold, recording one neither panics nor goes uncounted. The proxy
// records on its connections' goroutines, where a panic ends the process.
func FuzzRequestLabels(f *testing.F) {
	f.Add("profile.ns.svc.cluster.local:8080", "0", "profile", "v1", "UF")
	f.Add("", "", "", "", "")
	f.Add("[::1]:80", "14", "a.b", "\u00e9", "DC")
	m := New(prometheus.NewRegistry())
	f.Fuzz(func(t *testing.T, host, grpcStatus, workload, version, flags string) {
		peer := Peer{Workload: workload, Namespace: "ns", App: workload, Version: version, Cluster: "c1", Principal: "unknown"}
		e := &Event{Reporter: "destination", Src: peer, Dst: unknownPeer, Service: ServiceOf(host), Protocol: "grpc", Code: 200,
			GRPCStatus: grpcStatus, Flags: flags}
		m.Request(e, time.Millisecond, 1, 2)
		var last LastSeries
		m.RequestOn(&last, e, time.Millisecond, 1, 2)
		m.TCPOpened(e)(1, 2)
		if last.s == nil {
			t.Fatalf("%+v: not counted", e)
		}
	})
}
