package main

import (
	"fmt"

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

// Field numbers shared by both responses (resources, type_url, nonce)
// and their own (version_info / system_version_info is 1 in both).
const (
	fVersion   = 1
	fResources = 2
	fTypeURL   = 4
	fNonce     = 5
)

func (r *response) decode(b []byte, delta bool) error {
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
		case fVersion:
			r.version = string(v)
		case fTypeURL:
			r.typeURL = string(v)
		case fNonce:
			r.nonce = string(v)
		case fResources:
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

// resourceOf reads one element of resources: a Resource {name 1,
// resource 3 (Any)} or an Any {type_url 1, value 2}; the resource's own
// name is its field 1 either way.
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
			case delta && num == 1:
				nameBytes = v
			case delta && num == 3, !delta && num == 2:
				anyBytes = v
			}
		}
		b = b[n:]
	}
	// The Any's value (field 2).
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
		if num == 2 && typ == protowire.BytesType {
			value, _ = protowire.ConsumeBytes(anyBytes[:n])
		}
		anyBytes = anyBytes[n:]
	}
	if delta {
		return string(nameBytes), value, nil
	}
	return clusterName(value), value, nil
}

// deltaResponse and sotwResponse tell the codec which response it reads.
type (
	deltaResponse struct{ response }
	sotwResponse  struct{ response }
)

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
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return r.decode(buf.ReadOnlyData(), delta)
}
