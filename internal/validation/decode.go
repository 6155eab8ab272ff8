// Package validation checks Istio configuration the way Istio's validating
// webhook does, for the kinds the mesh reads (Gateway, VirtualService,
// DestinationRule, ServiceEntry, PeerAuthentication, AuthorizationPolicy):
// what Istio refuses is refused with the object, the field and the reason;
// what Istio accepts passes, with a warning naming each field isthmus does
// not act on. The control plane's admission webhook and `isthmus analyze -f`
// share it.
package validation

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/golang/protobuf/jsonpb" //nolint:staticcheck // Istio's own JSON form of its API
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
)

// strict is the JSON decoding Istio's API types use (durations such as
// "500ms" included), without their tolerance of unknown fields.
var strict = &jsonpb.Unmarshaler{AllowUnknownFields: false}

// decode reads spec JSON into m strictly (unknown fields and enum values
// are errors, as Istio's CRD schemas make them). On failure it finds the
// fields at fault, so that each error names its path under "spec".
func decode(spec []byte, m proto.Message) []string {
	err := strict.Unmarshal(bytes.NewReader(spec), protoadapt.MessageV1Of(m))
	if err == nil {
		return nil
	}
	var v any
	if json.Unmarshal(spec, &v) != nil {
		return []string{"spec: " + clean(err)}
	}
	errs := locate(m.ProtoReflect().Descriptor(), v, "spec")
	if len(errs) == 0 {
		errs = []string{"spec: " + clean(err)}
	}
	return errs
}

// locate walks JSON value v along message descriptor md and reports the
// fields that do not decode.
func locate(md protoreflect.MessageDescriptor, v any, path string) []string {
	obj, ok := v.(map[string]any)
	if !ok {
		return []string{fmt.Sprintf("%s: want an object, got %s", path, describe(v))}
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var errs []string
	for _, k := range keys {
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(k))
		}
		p := path + "." + k
		if fd == nil {
			errs = append(errs, p+": unknown field")
			continue
		}
		val := obj[k]
		switch {
		case val == nil:
		case fd.IsList():
			arr, ok := val.([]any)
			if !ok {
				errs = append(errs, fmt.Sprintf("%s: want a list, got %s", p, describe(val)))
				continue
			}
			for i, el := range arr {
				errs = append(errs, field(fd, el, fmt.Sprintf("%s[%d]", p, i), func(x any) any { return []any{x} })...)
			}
		case fd.IsMap():
			m, ok := val.(map[string]any)
			if !ok {
				errs = append(errs, fmt.Sprintf("%s: want a map, got %s", p, describe(val)))
				continue
			}
			mk := make([]string, 0, len(m))
			for key := range m {
				mk = append(mk, key)
			}
			sort.Strings(mk)
			for _, key := range mk {
				errs = append(errs, field(fd, m[key], p+"["+key+"]", func(x any) any { return map[string]any{key: x} })...)
			}
		default:
			errs = append(errs, field(fd, val, p, func(x any) any { return x })...)
		}
	}
	return errs
}

// field checks one value of fd: messages are walked, anything else is
// decoded alone (wrapped back by wrap into its list or map).
func field(fd protoreflect.FieldDescriptor, v any, path string, wrap func(any) any) []string {
	kind := fd.Kind()
	if fd.IsMap() {
		kind = fd.MapValue().Kind()
	}
	if kind == protoreflect.MessageKind {
		md := fd.Message()
		if fd.IsMap() {
			md = fd.MapValue().Message()
		}
		if !strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
			return locate(md, v, path)
		}
	}
	b, _ := json.Marshal(map[string]any{fd.JSONName(): wrap(v)})
	if err := strict.Unmarshal(bytes.NewReader(b), protoadapt.MessageV1Of(dynamicpb.NewMessage(fd.ContainingMessage()))); err != nil {
		msg := clean(err)
		ed := fd.Enum()
		if fd.IsMap() {
			ed = fd.MapValue().Enum()
		}
		if ed != nil {
			var names []string
			for i := 0; i < ed.Values().Len(); i++ {
				names = append(names, string(ed.Values().Get(i).Name()))
			}
			msg = fmt.Sprintf("unknown value %s; want one of %s", describe(v), strings.Join(names, ", "))
		}
		return []string{path + ": " + msg}
	}
	return nil
}

var protoPrefix = regexp.MustCompile(`^(proto:\s*)?(\(line \d+:\d+\):\s*)?`)

// clean drops protojson's prefix and position from an error.
func clean(err error) string {
	return protoPrefix.ReplaceAllString(strings.ReplaceAll(err.Error(), "\u00a0", " "), "")
}

func describe(v any) string {
	switch x := v.(type) {
	case string:
		return fmt.Sprintf("%q", x)
	case nil:
		return "null"
	case map[string]any:
		return "an object"
	case []any:
		return "a list"
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// unsupported lists the set fields of m whose paths (proto field names
// joined by dots, no indices) are not in supported, one entry per path
// pattern with the first concrete path found.
func unsupported(m protoreflect.Message, supported map[string]bool) []string {
	seen := map[string]bool{}
	var out []string
	var walk func(m protoreflect.Message, pattern, path string)
	walk = func(m protoreflect.Message, pattern, path string) {
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			pat := strings.TrimPrefix(pattern+"."+string(fd.Name()), ".")
			p := path + "." + fd.JSONName()
			if !supported[pat] {
				if !seen[pat] {
					seen[pat] = true
					out = append(out, p)
				}
				return true
			}
			if fd.Kind() != protoreflect.MessageKind || strings.HasPrefix(string(fd.Message().FullName()), "google.protobuf.") {
				return true
			}
			switch {
			case fd.IsList():
				l := v.List()
				for i := 0; i < l.Len(); i++ {
					walk(l.Get(i).Message(), pat, fmt.Sprintf("%s[%d]", p, i))
				}
			case fd.IsMap():
				if fd.MapValue().Kind() == protoreflect.MessageKind {
					v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
						walk(mv.Message(), pat, p+"["+k.String()+"]")
						return true
					})
				}
			default:
				walk(v.Message(), pat, p)
			}
			return true
		})
	}
	walk(m, "", "spec")
	return out
}
