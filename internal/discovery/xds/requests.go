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
	var a, u *[]string
	var an, un protowire.Number
	switch r := m.(type) {
	case *discovery.DiscoveryRequest:
		a, an = &r.ResourceNames, nameFields.sotw
	case *discovery.DeltaDiscoveryRequest:
		a, an, u, un = &r.ResourceNamesSubscribe, nameFields.subscribe, &r.ResourceNamesUnsubscribe, nameFields.unsubscribe
	}
	// Counted first: growing a slice of two thousand names by appends
	// was as much garbage again.
	na, nu, err := countFields(b, an, un)
	if err != nil {
		return err
	}
	rest := make([]byte, 0, 256)
	subscribe, unsubscribe := make([]string, 0, na), make([]string, 0, nu)
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		size := protowire.ConsumeFieldValue(num, typ, b[n:])
		if size < 0 {
			return protowire.ParseError(size)
		}
		field := b[:n+size]
		b = b[n+size:]
		if typ != protowire.BytesType || (num != an && (u == nil || num != un)) {
			rest = append(rest, field...)
			continue
		}
		v, _ := protowire.ConsumeBytes(field[n:])
		name, err := internName(v)
		if err != nil {
			return err
		}
		if num == an {
			subscribe = append(subscribe, name)
		} else {
			unsubscribe = append(unsubscribe, name)
		}
	}
	if err := proto.Unmarshal(rest, m); err != nil {
		return err
	}
	*a = subscribe
	if u != nil {
		*u = unsubscribe
	}
	return nil
}

// countFields counts the elements of fields a and u in b.
func countFields(b []byte, a, u protowire.Number) (na, nu int, err error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, 0, protowire.ParseError(n)
		}
		size := protowire.ConsumeFieldValue(num, typ, b[n:])
		if size < 0 {
			return 0, 0, protowire.ParseError(size)
		}
		b = b[n+size:]
		switch {
		case typ != protowire.BytesType:
		case num == a:
			na++
		case num == u:
			nu++
		}
	}
	return na, nu, nil
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
