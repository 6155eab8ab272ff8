package xds

import (
	"testing"
	"unsafe"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// The servers' codec decodes requests as gRPC's proto codec does, and
// two requests naming the same resource share one string for it.
func TestRequestsDecodeWithSharedNames(t *testing.T) {
	node := &core.Node{Id: "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{"CLUSTER_ID": structpb.NewStringValue("c1")}}}
	for _, m := range []proto.Message{
		&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
			ResourceNamesSubscribe: []string{"outbound|80||a.ns.svc.cluster.local", "*", "outbound|80||b.ns.svc.cluster.local"}, ResourceNamesUnsubscribe: []string{"gone"},
			InitialResourceVersions: map[string]string{"x": "1"}, ResponseNonce: "7", ErrorDetail: &status.Status{Code: 3, Message: "nack"}},
		&discovery.DeltaDiscoveryRequest{TypeUrl: "t"},
		&discovery.DiscoveryRequest{Node: node, VersionInfo: "v1", ResourceNames: []string{"outbound|80||a.ns.svc.cluster.local", ""}, TypeUrl: "t", ResponseNonce: "n"},
		&discovery.DiscoveryRequest{},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		want := m.ProtoReflect().New().Interface()
		if err := encoding.GetCodecV2("proto").Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, want); err != nil {
			t.Fatal(err)
		}
		got := m.ProtoReflect().New().Interface()
		if err := (codec{proto: encoding.GetCodecV2("proto")}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, got); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, want) {
			t.Errorf("decoded %v, gRPC's codec %v", got, want)
		}
	}
	decode := func() *discovery.DeltaDiscoveryRequest {
		b, _ := proto.Marshal(&discovery.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{"outbound|80||a.ns.svc.cluster.local"}})
		r := &discovery.DeltaDiscoveryRequest{}
		if err := (codec{proto: encoding.GetCodecV2("proto")}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	a, b := decode().ResourceNamesSubscribe[0], decode().ResourceNamesSubscribe[0]
	if unsafe.StringData(a) != unsafe.StringData(b) {
		t.Error("one name in two requests is two strings")
	}
}

// A name that is not UTF-8 is refused, as proto refuses it, and so is a
// truncated request.
func TestRequestsRefuseMalformed(t *testing.T) {
	b, _ := proto.Marshal(&discovery.DeltaDiscoveryRequest{TypeUrl: "t"})
	bad := append(append([]byte{}, b...), byte(nameFields.subscribe<<3|2), 2, 0xff, 0xfe)
	for name, in := range map[string][]byte{"invalid UTF-8": bad, "truncated": bad[:len(bad)-1]} {
		if err := (codec{proto: encoding.GetCodecV2("proto")}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(in)}, &discovery.DeltaDiscoveryRequest{}); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

// Whatever bytes a client sends, the servers' codec decodes them as
// gRPC's proto codec does, or refuses them as it does.
func FuzzRequestDecode(f *testing.F) {
	for _, m := range []proto.Message{
		&discovery.DeltaDiscoveryRequest{TypeUrl: "t", ResourceNamesSubscribe: []string{"a", "*"}, ResourceNamesUnsubscribe: []string{"b"}, InitialResourceVersions: map[string]string{"x": "1"}},
		&discovery.DiscoveryRequest{VersionInfo: "1", ResourceNames: []string{"a", "b"}, ResponseNonce: "n"},
	} {
		b, _ := proto.Marshal(m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, m := range []proto.Message{&discovery.DeltaDiscoveryRequest{}, &discovery.DiscoveryRequest{}} {
			want := m.ProtoReflect().New().Interface()
			werr := encoding.GetCodecV2("proto").Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, want)
			got := m.ProtoReflect().New().Interface()
			gerr := (codec{proto: encoding.GetCodecV2("proto")}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, got)
			if (werr == nil) != (gerr == nil) {
				t.Fatalf("%T: error %v, gRPC's codec %v", m, gerr, werr)
			}
			if werr == nil && !proto.Equal(got, want) {
				t.Fatalf("%T: decoded %v, gRPC's codec %v", m, got, want)
			}
		}
	})
}
