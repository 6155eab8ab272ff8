package nds

import (
	"net/netip"
	"reflect"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// istioBytes encodes a one-host table field by field as nds.proto
// defines it (map<string, NameInfo> table = 1; NameInfo: ips = 1,
// registry = 2, shortname = 3, namespace = 4), independently of the
// descriptor under test.
func istioBytes(host string, ips []string, registry, short, ns string) []byte {
	var ni []byte
	for _, ip := range ips {
		ni = protowire.AppendTag(ni, 1, protowire.BytesType)
		ni = protowire.AppendString(ni, ip)
	}
	for i, v := range []string{registry, short, ns} {
		if v != "" {
			ni = protowire.AppendTag(ni, protowire.Number(i+2), protowire.BytesType)
			ni = protowire.AppendString(ni, v)
		}
	}
	var entry []byte
	entry = protowire.AppendTag(entry, 1, protowire.BytesType)
	entry = protowire.AppendString(entry, host)
	entry = protowire.AppendTag(entry, 2, protowire.BytesType)
	entry = protowire.AppendBytes(entry, ni)
	var out []byte
	out = protowire.AppendTag(out, 1, protowire.BytesType)
	return protowire.AppendBytes(out, entry)
}

func TestWireFormatIsIstios(t *testing.T) {
	host := "profile.multicluster.svc.cluster.local"
	want := Table{host: {IPs: []netip.Addr{netip.MustParseAddr("100.97.0.12")}, Registry: "Kubernetes", Shortname: "profile", Namespace: "multicluster"}}

	// Istio's bytes decode to the table.
	got, err := Decode(&anypb.Any{TypeUrl: TypeURL, Value: istioBytes(host, []string{"100.97.0.12"}, "Kubernetes", "profile", "multicluster")})
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("decode Istio's bytes: %v %v, want %v", got, err, want)
	}
	// The table encodes to Istio's bytes, under Istio's type URL.
	a, err := anypb.New(want.Message())
	if err != nil {
		t.Fatal(err)
	}
	if a.TypeUrl != TypeURL {
		t.Errorf("type URL %s", a.TypeUrl)
	}
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(want.Message())
	if string(b) != string(istioBytes(host, []string{"100.97.0.12"}, "Kubernetes", "profile", "multicluster")) {
		t.Errorf("bytes %x differ from Istio's encoding", b)
	}
	if back, err := Decode(a); err != nil || !reflect.DeepEqual(back, want) {
		t.Errorf("round trip: %v %v", back, err)
	}
}

// A table with an address that is not one is refused whole, as is another type.
func TestDecodeRefuses(t *testing.T) {
	if _, err := Decode(&anypb.Any{TypeUrl: TypeURL, Value: istioBytes("a.b.svc.cluster.local", []string{"10.0.0.1", "not-an-ip"}, "", "", "")}); err == nil {
		t.Error("a bad address was accepted")
	}
	if _, err := Decode(&anypb.Any{TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster"}); err == nil {
		t.Error("another type was accepted")
	}
	if _, err := Decode(&anypb.Any{TypeUrl: TypeURL, Value: []byte{0x0a, 0xff}}); err == nil {
		t.Error("truncated bytes were accepted")
	}
}
