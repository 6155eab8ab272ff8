package xds

import (
	"fmt"
	"unicode/utf8"
	"unique"
	"unsafe"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Requests are decoded with their resource names shared. A sidecar
// subscribes to every load assignment by name: five thousand of them
// asking for two thousand names each made ten million strings, most of
// the garbage of a first push and what set its peak memory. The names are
// the same few thousand every time, so each is looked up in Go's unique
// table and the one copy used; the rest of a request decodes as usual.

// nameFields are the fields of each request that hold resource names.
var nameFields = struct{ sotw, subscribe, unsubscribe protowire.Number }{
	sotw:        fieldNumber(&discovery.DiscoveryRequest{}, "resource_names"),
	subscribe:   fieldNumber(&discovery.DeltaDiscoveryRequest{}, "resource_names_subscribe"),
	unsubscribe: fieldNumber(&discovery.DeltaDiscoveryRequest{}, "resource_names_unsubscribe"),
}

func fieldNumber(m proto.Message, name string) protowire.Number {
	f := m.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(name))
	if f == nil || f.Cardinality() != protoreflect.Repeated || f.Kind() != protoreflect.StringKind {
		panic(fmt.Sprintf("xds: %T has no repeated string field %s", m, name))
	}
	return f.Number()
}

// unmarshalRequest decodes b into m (a DiscoveryRequest or a
// DeltaDiscoveryRequest), with its resource names interned.
func unmarshalRequest(data mem.BufferSlice, m proto.Message) error {
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	b := buf.ReadOnlyData()
	// Two name fields at most: field numbers start at 1, so a state of
	// the world request's second (0, into unused) never matches.
	var unused []string
	nums := [2]protowire.Number{}
	lists := [2]*[]string{&unused, &unused}
	switch r := m.(type) {
	case *discovery.DiscoveryRequest:
		nums[0], lists[0] = nameFields.sotw, &r.ResourceNames
	case *discovery.DeltaDiscoveryRequest:
		nums = [2]protowire.Number{nameFields.subscribe, nameFields.unsubscribe}
		lists = [2]*[]string{&r.ResourceNamesSubscribe, &r.ResourceNamesUnsubscribe}
	}
	which := func(num protowire.Number, typ protowire.Type) int {
		if typ == protowire.BytesType {
			for i, n := range nums {
				if n == num {
					return i
				}
			}
		}
		return -1
	}
	// Counted first: growing a slice of two thousand names by appends
	// was as much garbage again.
	var counts [2]int
	if err := eachField(b, func(num protowire.Number, typ protowire.Type, _ []byte, _ int) error {
		if i := which(num, typ); i >= 0 {
			counts[i]++
		}
		return nil
	}); err != nil {
		return err
	}
	names := [2][]string{make([]string, 0, counts[0]), make([]string, 0, counts[1])}
	rest := make([]byte, 0, 256)
	if err := eachField(b, func(num protowire.Number, typ protowire.Type, field []byte, tag int) error {
		i := which(num, typ)
		if i < 0 {
			rest = append(rest, field...)
			return nil
		}
		v, _ := protowire.ConsumeBytes(field[tag:])
		name, err := internName(v)
		names[i] = append(names[i], name)
		return err
	}); err != nil {
		return err
	}
	if err := proto.Unmarshal(rest, m); err != nil {
		return err
	}
	*lists[0], *lists[1] = names[0], names[1]
	return nil
}

// eachField calls f with each field of the message encoded in b: its
// number, wire type, encoding (tag included) and the tag's length.
func eachField(b []byte, f func(num protowire.Number, typ protowire.Type, field []byte, tag int) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		size := protowire.ConsumeFieldValue(num, typ, b[n:])
		if size < 0 {
			return protowire.ParseError(size)
		}
		if err := f(num, typ, b[:n+size], n); err != nil {
			return err
		}
		b = b[n+size:]
	}
	return nil
}

// internName is the one copy of the name in b (which it does not keep).
func internName(b []byte) (string, error) {
	if !utf8.Valid(b) {
		return "", fmt.Errorf("xds: a resource name is not valid UTF-8")
	}
	if len(b) == 0 {
		return "", nil
	}
	return unique.Make(unsafe.String(unsafe.SliceData(b), len(b))).Value(), nil
}
