// Package nds is Istio's name table (NDS, istio.networking.nds.v1.NameTable):
// the names of mesh services and their addresses as a proxy's DNS should
// answer them, sent by the control plane over ADS. The message is built
// from its descriptor (the same package, names and field numbers as
// Istio's nds.proto) so it is Istio's on the wire without a dependency
// on istio.io/istio, which is the only module that publishes it.
package nds

import (
	"fmt"
	"net/netip"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/anypb"
)

// TypeURL is the NameTable's type on an ADS stream.
const TypeURL = "type.googleapis.com/istio.networking.nds.v1.NameTable"

// Name is one host of the table.
type Name struct {
	// IPs the host resolves to.
	IPs []netip.Addr
	// Registry is "Kubernetes" for a Kubernetes Service (whose short
	// forms a pod of its namespace may use), else the registry's name.
	Registry string
	// Shortname and Namespace of a Kubernetes Service.
	Shortname, Namespace string
}

// Table maps hostnames (FQDN, no trailing dot) to their names.
type Table map[string]Name

var (
	table, info                               protoreflect.MessageDescriptor
	tableField                                protoreflect.FieldDescriptor
	ipsField, registryField, shortField, nsFd protoreflect.FieldDescriptor
)

func init() {
	s := proto.String
	repeated, optional := descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum(), descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()
	str, msg := descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(), descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum()
	field := func(name string, n int32, label *descriptorpb.FieldDescriptorProto_Label, typ *descriptorpb.FieldDescriptorProto_Type, typeName string, json string) *descriptorpb.FieldDescriptorProto {
		f := &descriptorpb.FieldDescriptorProto{Name: s(name), Number: proto.Int32(n), Label: label, Type: typ, JsonName: s(json)}
		if typeName != "" {
			f.TypeName = s(typeName)
		}
		return f
	}
	fd := &descriptorpb.FileDescriptorProto{
		Name:    s("istio.io/isthmus/nds.proto"),
		Package: s("istio.networking.nds.v1"),
		Syntax:  s("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{
			Name:  s("NameTable"),
			Field: []*descriptorpb.FieldDescriptorProto{field("table", 1, repeated, msg, ".istio.networking.nds.v1.NameTable.TableEntry", "table")},
			NestedType: []*descriptorpb.DescriptorProto{
				{
					Name: s("NameInfo"),
					Field: []*descriptorpb.FieldDescriptorProto{
						field("ips", 1, repeated, str, "", "ips"),
						field("registry", 2, optional, str, "", "registry"),
						field("shortname", 3, optional, str, "", "shortname"),
						field("namespace", 4, optional, str, "", "namespace"),
						field("alt_hosts", 5, repeated, str, "", "altHosts"),
					},
				},
				{
					Name: s("TableEntry"),
					Field: []*descriptorpb.FieldDescriptorProto{
						field("key", 1, optional, str, "", "key"),
						field("value", 2, optional, msg, ".istio.networking.nds.v1.NameTable.NameInfo", "value"),
					},
					Options: &descriptorpb.MessageOptions{MapEntry: proto.Bool(true)},
				},
			},
		}},
	}
	f, err := protodesc.NewFile(fd, nil)
	if err != nil {
		panic(fmt.Sprintf("nds descriptor: %v", err)) // a bug in the literal above
	}
	table = f.Messages().ByName("NameTable")
	info = table.Messages().ByName("NameInfo")
	tableField = table.Fields().ByName("table")
	ipsField, registryField = info.Fields().ByName("ips"), info.Fields().ByName("registry")
	shortField, nsFd = info.Fields().ByName("shortname"), info.Fields().ByName("namespace")
}

// Message is t as Istio's NameTable message (addresses in text form).
func (t Table) Message() proto.Message {
	m := dynamicpb.NewMessage(table)
	mp := m.Mutable(tableField).Map()
	for host, n := range t {
		i := dynamicpb.NewMessage(info)
		l := i.Mutable(ipsField).List()
		for _, ip := range n.IPs {
			l.Append(protoreflect.ValueOfString(ip.String()))
		}
		for fd, v := range map[protoreflect.FieldDescriptor]string{registryField: n.Registry, shortField: n.Shortname, nsFd: n.Namespace} {
			if v != "" {
				i.Set(fd, protoreflect.ValueOfString(v))
			}
		}
		mp.Set(protoreflect.ValueOfString(host).MapKey(), protoreflect.ValueOfMessage(i))
	}
	return m
}

// Decode reads a NameTable sent over ADS. An address that does not parse
// is an error: the table is refused whole rather than half believed.
func Decode(a *anypb.Any) (Table, error) {
	if a.GetTypeUrl() != TypeURL {
		return nil, fmt.Errorf("type %q is not %s", a.GetTypeUrl(), TypeURL)
	}
	m := dynamicpb.NewMessage(table)
	if err := proto.Unmarshal(a.GetValue(), m); err != nil {
		return nil, fmt.Errorf("name table: %w", err)
	}
	out := Table{}
	var err error
	m.Get(tableField).Map().Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
		i := v.Message()
		n := Name{Registry: i.Get(registryField).String(), Shortname: i.Get(shortField).String(), Namespace: i.Get(nsFd).String()}
		l := i.Get(ipsField).List()
		for j := range l.Len() {
			ip, perr := netip.ParseAddr(l.Get(j).String())
			if perr != nil {
				err = fmt.Errorf("name table: host %s: %w", k.String(), perr)
				return false
			}
			n.IPs = append(n.IPs, ip)
		}
		out[k.String()] = n
		return true
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
