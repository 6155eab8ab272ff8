package xds

import (
	"sync/atomic"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// Responses are sent as encoded chunks shared by every stream. A push of
// two thousand clusters and load assignments to five thousand proxies
// would otherwise marshal the same resources ten million times, and hold
// a copy per stream until the stream's client read it: the scale bench's
// control plane spent most of its CPU there and grew to gigabytes. A
// resource is encoded once, as an element of the response's repeated
// resources field (tag, length, bytes); a stream's response is its own
// small fields, marshalled as usual, followed by those chunks (protobuf
// reads concatenated encodings of a message as one), handed to gRPC
// without a copy.

// resourcesField is the field number of resources in both responses.
var resourcesField = func() protowire.Number {
	sotw := (&discovery.DiscoveryResponse{}).ProtoReflect().Descriptor().Fields().ByName("resources").Number()
	delta := (&discovery.DeltaDiscoveryResponse{}).ProtoReflect().Descriptor().Fields().ByName("resources").Number()
	if sotw != delta {
		panic("xds: DiscoveryResponse and DeltaDiscoveryResponse number their resources differently")
	}
	return sotw
}()

// chunk encodes b as one element of a response's resources.
func chunk(b []byte) mem.Buffer {
	out := protowire.AppendTag(make([]byte, 0, len(b)+8), resourcesField, protowire.BytesType)
	return mem.SliceBuffer(protowire.AppendBytes(out, b))
}

// deltaChunk is a resource's encoded incremental wrapper under a name and version.
type deltaChunk struct {
	name, version string
	buf           mem.Buffer
}

// sotwChunk is the resource's element of a state-of-the-world response.
func (m *marshalledResource) sotwChunk() (mem.Buffer, error) {
	if c := m.sotw.Load(); c != nil {
		return *c, nil
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m.any)
	if err != nil {
		return nil, err
	}
	c := chunk(b)
	m.sotw.Store(&c)
	return c, nil
}

// deltaChunk is the resource's element of an incremental response, as
// name at version (built again only if either differs).
func (m *marshalledResource) deltaChunk(name, version string) (mem.Buffer, error) {
	if c := m.delta.Load(); c != nil && c.name == name && c.version == version {
		return c.buf, nil
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(&discovery.Resource{Name: name, Version: version, Resource: m.any})
	if err != nil {
		return nil, err
	}
	c := &deltaChunk{name: name, version: version, buf: chunk(b)}
	m.delta.Store(c)
	return c.buf, nil
}

// encodedResponse is a response whose resources are already encoded:
// head holds everything else (versions, type, nonce, removed names).
type encodedResponse struct {
	head   proto.Message
	chunks []mem.Buffer
}

// ProtoReflect makes an encodedResponse a message any gRPC codec can
// send (slowly: it copies the chunks into the head's unknown fields);
// the servers' own codec (ServerOption) sends it without a copy.
func (e *encodedResponse) ProtoReflect() protoreflect.Message {
	m := proto.Clone(e.head)
	var raw []byte
	for _, c := range e.chunks {
		raw = append(raw, c.ReadOnlyData()...)
	}
	m.ProtoReflect().SetUnknown(raw)
	return m.ProtoReflect()
}

// codec is gRPC's proto codec, but for encoded responses.
type codec struct{ proto encoding.CodecV2 }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	e, ok := v.(*encodedResponse)
	if !ok {
		return c.proto.Marshal(v)
	}
	head, err := proto.Marshal(e.head)
	if err != nil {
		return nil, err
	}
	out := make(mem.BufferSlice, 0, 1+len(e.chunks))
	out = append(out, mem.SliceBuffer(head))
	return append(out, e.chunks...), nil
}

// Unmarshal decodes requests with their resource names interned
// (requests.go), anything else as gRPC's proto codec does.
func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	switch m := v.(type) {
	case *discovery.DiscoveryRequest, *discovery.DeltaDiscoveryRequest:
		return unmarshalRequest(data, m.(proto.Message))
	}
	return c.proto.Unmarshal(data, v)
}

func (c codec) Name() string { return c.proto.Name() }

// ServerOption is the gRPC server option the xDS servers are built with:
// it sends encoded responses as they are. Without it they are sent too,
// at the cost of a copy per stream.
func ServerOption() grpc.ServerOption {
	return grpc.ForceServerCodecV2(codec{proto: encoding.GetCodecV2("proto")})
}

// ReadBuffers is how the xDS servers get the buffers incoming frames are
// read into: plain allocations the collector reclaims. gRPC's default pool
// rounds each frame up to a tier (a proxy's first requests, its node and
// its thousands of subscribed names, take 16 KB buffers) and keeps what it
// pooled reachable until two collections later: once 5000 proxies that
// connected at once were served, the heap in use was 562 MiB with the pool
// and 325-379 without (BENCHMARKS.md, issue 27).
func ReadBuffers() grpc.ServerOption {
	return experimental.BufferPool(mem.NopBufferPool{})
}

// marshalledResource is a resource marshalled once for every stream: its
// Any, and its elements of either kind of response.
type marshalledResource struct {
	any   *anypb.Any
	sotw  atomic.Pointer[mem.Buffer]
	delta atomic.Pointer[deltaChunk]
}
