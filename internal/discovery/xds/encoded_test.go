package xds

import (
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// A response of shared chunks reads, at the client, as the response
// marshalled whole, through the servers' codec and through any other.
func TestEncodedResponseReadsAsMarshalled(t *testing.T) {
	cache := newAnyCache()
	var ms []*marshalledResource
	var anys []*anypb.Any
	for _, name := range []string{"a", "b"} {
		m, err := cache.marshalled(&cluster.Cluster{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		ms, anys = append(ms, m), append(anys, m.any)
	}
	c := codec{proto: encoding.GetCodecV2("proto")}
	decode := func(t *testing.T, e *encodedResponse, into proto.Message) {
		t.Helper()
		data, err := c.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if err := proto.Unmarshal(data.Materialize(), into); err != nil {
			t.Fatal(err)
		}
		// The same response through a codec that knows nothing of chunks.
		whole, err := proto.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		again := into.ProtoReflect().New().Interface()
		if err := proto.Unmarshal(whole, again); err != nil || !proto.Equal(again, into) {
			t.Errorf("through proto.Marshal: %v, %v; want %v", again, err, into)
		}
	}

	t.Run("state of the world", func(t *testing.T) {
		var chunks []mem.Buffer
		for _, m := range ms {
			b, err := m.sotwChunk()
			if err != nil {
				t.Fatal(err)
			}
			chunks = append(chunks, b)
		}
		head := &discovery.DiscoveryResponse{VersionInfo: "v1", TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster", Nonce: "7"}
		var got discovery.DiscoveryResponse
		decode(t, &encodedResponse{head: head, chunks: chunks}, &got)
		want := proto.Clone(head).(*discovery.DiscoveryResponse)
		want.Resources = anys
		if !proto.Equal(&got, want) {
			t.Errorf("got %v, want %v", &got, want)
		}
	})
	t.Run("incremental", func(t *testing.T) {
		var chunks []mem.Buffer
		want := &discovery.DeltaDiscoveryResponse{SystemVersionInfo: "v2", TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster",
			Nonce: "8", RemovedResources: []string{"gone"}}
		for i, m := range ms {
			name, version := []string{"a", "b"}[i], []string{"h1", "h2"}[i]
			b, err := m.deltaChunk(name, version)
			if err != nil {
				t.Fatal(err)
			}
			if again, _ := m.deltaChunk(name, version); &again.ReadOnlyData()[0] != &b.ReadOnlyData()[0] {
				t.Error("the chunk was encoded again for the same name and version")
			}
			chunks = append(chunks, b)
			want.Resources = append(want.Resources, &discovery.Resource{Name: name, Version: version, Resource: m.any})
		}
		head := proto.Clone(want).(*discovery.DeltaDiscoveryResponse)
		head.Resources = nil
		var got discovery.DeltaDiscoveryResponse
		decode(t, &encodedResponse{head: head, chunks: chunks}, &got)
		if !proto.Equal(&got, want) {
			t.Errorf("got %v, want %v", &got, want)
		}
	})
}
