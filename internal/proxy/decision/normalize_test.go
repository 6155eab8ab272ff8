package decision

import (
	"testing"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
)

func TestNormalizeTarget(t *testing.T) {
	base := config.PathNormalization{RFC3986: true}
	merge := config.PathNormalization{RFC3986: true, MergeSlashes: true}
	cases := []struct {
		n        config.PathNormalization
		in, want string
		status   int
		redirect bool
	}{
		{base, "/", "/", 0, false},
		{base, "/..", "/", 0, false},
		{base, "/a/b/..", "/a/", 0, false},
		{base, "/a/./b/.", "/a/b/", 0, false},
		{base, "/a/../../b?x=/../y", "/b?x=/../y", 0, false},
		{base, "/%252e", "/%252e", 0, false}, // %25 is not decoded: no double decoding
		{base, "/%zz%4", "/%zz%4", 0, false}, // not escapes: kept
		{base, "/%2fa", "/%2Fa", 0, false},
		{base, "/a#frag", "", 400, false},
		{base, "/a?beta=1#x", "", 400, false}, // route matches read the query
		{config.PathNormalization{}, "/a?q=1#x", "", 400, false},
		{base, "/a%00", "", 400, false},
		{merge, "///a//b/", "/a/b/", 0, false},
		{config.PathNormalization{RFC3986: true, MergeSlashes: true, EscapedSlashes: config.RejectEscapedSlashes}, "/a%2Fb", "", 400, false},
		{config.PathNormalization{RFC3986: true, MergeSlashes: true, EscapedSlashes: config.RedirectUnescaped}, "/a%2F%2Fb?q", "/a/b?q", 0, true},
		{config.PathNormalization{RFC3986: true, MergeSlashes: true, EscapedSlashes: config.RedirectUnescaped}, "/a/b", "/a/b", 0, false},
	}
	for _, c := range cases {
		got, status, redirect := normalizeTarget(c.n, c.in)
		if status != c.status || redirect != c.redirect || (status == 0 && got != c.want) {
			t.Errorf("%+v %q: got %q status %d redirect %v, want %q %d %v", c.n, c.in, got, status, redirect, c.want, c.status, c.redirect)
		}
	}
}

// The common path costs no allocation.
func TestNormalizeTargetPlainPathAllocatesNothing(t *testing.T) {
	n := config.PathNormalization{RFC3986: true, MergeSlashes: true}
	if a := testing.AllocsPerRun(100, func() { normalizeTarget(n, "/api/v1/profile?id=7") }); a != 0 {
		t.Errorf("%v allocations", a)
	}
}

// location builds a redirect's Location as Envoy does.
func TestLocation(t *testing.T) {
	for _, c := range []struct {
		rd                 config.Redirect
		secure             bool
		host, target, want string
	}{
		{config.Redirect{Scheme: "https"}, false, "example.com:80", "/p?q=1", "https://example.com/p?q=1"},
		{config.Redirect{Scheme: "https"}, false, "example.com:8080", "/p", "https://example.com:8080/p"},
		{config.Redirect{Port: 8443}, false, "[::1]", "/p", "http://[::1]:8443/p"},
		{config.Redirect{Port: 8443}, false, "[::1]:80", "/p", "http://[::1]:8443/p"},
		{config.Redirect{Scheme: "https", Port: 443}, false, "a:8080", "/p", "https://a/p"},
		{config.Redirect{Host: "b.example", Path: "/new"}, true, "a", "/old?x=1", "https://b.example/new?x=1"},
		{config.Redirect{Path: "/new?y=2"}, false, "a", "/old?x=1", "http://a/new?y=2"},
	} {
		if got := location(&c.rd, c.secure, c.host, c.target); got != c.want {
			t.Errorf("%+v from %s%s: %s, want %s", c.rd, c.host, c.target, got, c.want)
		}
	}
}
