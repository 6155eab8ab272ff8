package install

import (
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
)

var (
	typeOfOperator = reflect.TypeFor[Operator]()
	typeIntOrStr   = reflect.TypeFor[intstr.IntOrString]()
	typeQuantity   = reflect.TypeFor[resource.Quantity]()
	typeAnyMap     = reflect.TypeFor[map[string]any]()
)

// report collects what a walk finds: errors (wrong types) and fields that
// have no place in the supported schema.
type report struct {
	errs        []string
	unsupported []string
}

func (r *report) errf(path, format string, args ...any) {
	r.errs = append(r.errs, path+": "+fmt.Sprintf(format, args...))
}

// walk checks v against the Go type t by the json names of its fields,
// normalizing scalars the way YAML users expect (a number where a string
// goes becomes that string), and returns the normalized value.
func walk(path string, v any, t reflect.Type, r *report) any {
	if v == nil {
		return nil
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t {
	case typeIntOrStr:
		switch x := v.(type) {
		case string:
			return x
		case float64:
			if x == math.Trunc(x) {
				return x
			}
		}
		r.errf(path, "want a port number or name, got %s", describe(v))
		return v
	case typeQuantity:
		switch v.(type) {
		case string, float64:
			return v
		}
		r.errf(path, "want a quantity such as 100m or 1Gi, got %s", describe(v))
		return v
	case typeAnyMap:
		if _, ok := v.(map[string]any); !ok {
			r.errf(path, "want an object, got %s", describe(v))
		}
		return v
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			r.errf(path, "want an object, got %s", describe(v))
			return v
		}
		fields := jsonFields(t)
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			ft, ok := fields[k]
			if !ok {
				r.unsupported = append(r.unsupported, join(path, k)+": not supported by isthmus; ignored")
				continue
			}
			m[k] = walk(join(path, k), m[k], ft, r)
		}
		return m
	case reflect.Slice:
		l, ok := v.([]any)
		if !ok {
			r.errf(path, "want a list, got %s", describe(v))
			return v
		}
		for i := range l {
			l[i] = walk(fmt.Sprintf("%s[%d]", path, i), l[i], t.Elem(), r)
		}
		return l
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			r.errf(path, "want an object, got %s", describe(v))
			return v
		}
		for k, x := range m {
			m[k] = walk(join(path, k), x, t.Elem(), r)
		}
		return m
	case reflect.String:
		switch x := v.(type) {
		case string:
			return x
		case float64:
			return strconv.FormatFloat(x, 'f', -1, 64)
		case bool:
			return strconv.FormatBool(x)
		}
		r.errf(path, "want a string, got %s", describe(v))
	case reflect.Bool:
		switch x := v.(type) {
		case bool:
			return x
		case string:
			if b, err := strconv.ParseBool(x); err == nil {
				return b
			}
		}
		r.errf(path, "want true or false, got %s", describe(v))
	case reflect.Int, reflect.Int32, reflect.Int64:
		switch x := v.(type) {
		case float64:
			if x == math.Trunc(x) {
				return x
			}
		case string:
			if n, err := strconv.Atoi(x); err == nil {
				return float64(n)
			}
		}
		r.errf(path, "want an integer, got %s", describe(v))
	}
	return v
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func describe(v any) string {
	switch x := v.(type) {
	case string:
		return strconv.Quote(x)
	case map[string]any:
		return "an object"
	case []any:
		return "a list"
	default:
		return fmt.Sprint(x)
	}
}

// jsonFields maps a struct's JSON names to field types, inlining embedded
// structs and `json:",inline"` fields as encoding/json and Kubernetes do.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if (f.Anonymous && name == "") || strings.Contains(opts, "inline") {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			for k, v := range jsonFields(ft) {
				out[k] = v
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}
