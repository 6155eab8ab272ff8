package main

import (
	"fmt"
	"sync/atomic"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// The simulated clients read responses with a decoder of their own: the
// names of the resources and the bytes of each, not the resources. A
// full decode of two thousand clusters and load assignments per client,
// five thousand clients, would spend the two cores the control plane is
// measured on; the bench measures the control plane, not its clients.

// response is what a client needs of a DiscoveryResponse or a
// DeltaDiscoveryResponse.
type response struct {
	typeURL, nonce, version string
	// names of the resources: the Resource's name (incremental) or the
	// resource's own name, field 1 (state of the world).
	names []string
	// target is the one resource whose bytes the client wants (set
	// before the read), value its serialized bytes if it came.
	target string
	value  []byte
}

// Field numbers, from the messages' descriptors.
var (
	sotwFields  = fieldsOf(&discoverygrpc.DiscoveryResponse{}, "version_info", "resources", "type_url", "nonce")
	deltaFields = fieldsOf(&discoverygrpc.DeltaDiscoveryResponse{}, "system_version_info", "resources", "type_url", "nonce")
	// A Resource's name and resource (an Any); an Any's value.
	resourceFields = fieldsOf(&discoverygrpc.Resource{}, "name", "resource")
	anyValue       = fieldsOf(&anypb.Any{}, "value")[0]
	// Down a load assignment to an endpoint's address and weight.
	claEndpoints      = fieldsOf(&endpoint.ClusterLoadAssignment{}, "endpoints")[0]
	localityEndpoints = fieldsOf(&endpoint.LocalityLbEndpoints{}, "lb_endpoints")[0]
	lbEndpoint        = fieldsOf(&endpoint.LbEndpoint{}, "endpoint", "load_balancing_weight")
	endpointAddress   = fieldsOf(&endpoint.Endpoint{}, "address")[0]
	socketAddress     = fieldsOf(&core.Address{}, "socket_address")[0]
	socketAddressIP   = fieldsOf(&core.SocketAddress{}, "address")[0]
	wrapperValue      = fieldsOf(&wrapperspb.UInt32Value{}, "value")[0]
)

func fieldsOf(m proto.Message, names ...string) []protowire.Number {
	out := make([]protowire.Number, len(names))
	for i, n := range names {
		f := m.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(n))
		if f == nil {
			panic(fmt.Sprintf("%T has no field %s", m, n))
		}
		out[i] = f.Number()
	}
	return out
}

func (r *response) decode(b []byte, delta bool) error {
	f := sotwFields
	if delta {
		f = deltaFields
	}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		switch num {
		case f[0]:
			r.version = string(v)
		case f[2]:
			r.typeURL = string(v)
		case f[3]:
			r.nonce = string(v)
		case f[1]:
			name, value, err := resourceOf(v, delta)
			if err != nil {
				return err
			}
			r.names = append(r.names, name)
			if name == r.target {
				r.value = append([]byte(nil), value...)
			}
		}
	}
	return nil
}

// resourceOf reads one element of resources: a Resource (name, resource
// as an Any) or an Any; the resource's own name is its field 1 (Cluster
// and ClusterLoadAssignment).
func resourceOf(b []byte, delta bool) (name string, value []byte, err error) {
	var nameBytes, anyBytes []byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", nil, protowire.ParseError(n)
		}
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return "", nil, protowire.ParseError(n)
		}
		if typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(b[:n])
			switch {
			case delta && num == resourceFields[0]:
				nameBytes = v
			case delta && num == resourceFields[1], !delta && num == anyValue:
				anyBytes = v
			}
		}
		b = b[n:]
	}
	if !delta {
		// The element is the Any itself: anyBytes is already its value.
		return clusterName(anyBytes), anyBytes, nil
	}
	for len(anyBytes) > 0 {
		num, typ, n := protowire.ConsumeTag(anyBytes)
		if n < 0 {
			return "", nil, protowire.ParseError(n)
		}
		anyBytes = anyBytes[n:]
		n = protowire.ConsumeFieldValue(num, typ, anyBytes)
		if n < 0 {
			return "", nil, protowire.ParseError(n)
		}
		if num == anyValue && typ == protowire.BytesType {
			value, _ = protowire.ConsumeBytes(anyBytes[:n])
		}
		anyBytes = anyBytes[n:]
	}
	return string(nameBytes), value, nil
}

// scanCLA reads a serialized ClusterLoadAssignment's endpoint addresses
// and the sum of their weights (1 where unset), skipping the rest: a full
// decode of the endpoints' metadata was the largest part of the clients'
// CPU in a change, taken from the two cores the control plane is
// measured on.
func scanCLA(b []byte) (addrs []string, weight uint32, err error) {
	err = eachBytes(b, func(num protowire.Number, v []byte) error {
		if num != claEndpoints {
			return nil
		}
		return eachBytes(v, func(num protowire.Number, v []byte) error {
			if num != localityEndpoints {
				return nil
			}
			w := uint32(1)
			err := eachBytes(v, func(num protowire.Number, v []byte) error {
				switch num {
				case lbEndpoint[0]:
					return eachBytes(v, func(num protowire.Number, v []byte) error {
						if num != endpointAddress {
							return nil
						}
						return eachBytes(v, func(num protowire.Number, v []byte) error {
							if num != socketAddress {
								return nil
							}
							return eachBytes(v, func(num protowire.Number, v []byte) error {
								if num == socketAddressIP {
									addrs = append(addrs, string(v))
								}
								return nil
							})
						})
					})
				case lbEndpoint[1]:
					w = 0 // a wrapper without its value is 0
					for len(v) > 0 {
						num, typ, n := protowire.ConsumeTag(v)
						if n < 0 {
							return protowire.ParseError(n)
						}
						v = v[n:]
						if num == wrapperValue && typ == protowire.VarintType {
							x, n := protowire.ConsumeVarint(v)
							if n < 0 {
								return protowire.ParseError(n)
							}
							w = uint32(x)
						}
						n = protowire.ConsumeFieldValue(num, typ, v)
						if n < 0 {
							return protowire.ParseError(n)
						}
						v = v[n:]
					}
				}
				return nil
			})
			weight += w
			return err
		})
	})
	return addrs, weight, err
}

// eachBytes calls f with every length-delimited field of a message.
func eachBytes(b []byte, f func(protowire.Number, []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		if typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(b[:n])
			if err := f(num, v); err != nil {
				return err
			}
		}
		b = b[n:]
	}
	return nil
}

// deltaResponse and sotwResponse tell the codec which response it reads.
type (
	deltaResponse struct{ response }
	sotwResponse  struct{ response }
)

// received counts the bytes of the responses the clients read.
var received atomic.Int64

// clientCodec is gRPC's proto codec but for the two responses.
type clientCodec struct{ proto encoding.CodecV2 }

func (c clientCodec) Marshal(v any) (mem.BufferSlice, error) { return c.proto.Marshal(v) }
func (c clientCodec) Name() string                           { return c.proto.Name() }

func (c clientCodec) Unmarshal(data mem.BufferSlice, v any) error {
	var delta bool
	var r *response
	switch m := v.(type) {
	case *deltaResponse:
		r, delta = &m.response, true
	case *sotwResponse:
		r = &m.response
	case nil:
		return fmt.Errorf("nil message")
	default:
		return c.proto.Unmarshal(data, v)
	}
	// Read from a pooled buffer: what the client keeps is copied out.
	received.Add(int64(data.Len()))
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return r.decode(buf.ReadOnlyData(), delta)
}
