package proxy

import (
	"net/netip"
	"testing"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
)

// The original-destination path: a redirected connection goes to the
// virtual listener IP_PORT, else 0.0.0.0_PORT, else stays on the outbound
// listener (passthrough). Bound listeners are never handed off to.
func TestVirtualListenerForOriginalDestination(t *testing.T) {
	rt := &runtime{snap: &config.Snapshot{Listeners: map[string]*config.Listener{
		"10.96.0.10_7070": {Name: "10.96.0.10_7070"},
		"0.0.0.0_8080":    {Name: "0.0.0.0_8080"},
		"0.0.0.0_15001":   {Name: "0.0.0.0_15001", Bind: true},
	}}}
	for dst, want := range map[string]string{
		"10.96.0.10:7070": "10.96.0.10_7070", "10.96.0.11:7070": "", "10.1.2.3:8080": "0.0.0.0_8080", "10.96.0.10:8080": "0.0.0.0_8080",
		"1.1.1.1:15001": "", "[2001:db8::1]:8080": "0.0.0.0_8080",
	} {
		got := ""
		if l := rt.virtual(netip.MustParseAddrPort(dst)); l != nil {
			got = l.Name
		}
		if got != want {
			t.Errorf("%s -> %q, want %q", dst, got, want)
		}
	}
}

func FuzzVirtualListener(f *testing.F) {
	f.Add([]byte{10, 96, 0, 10}, uint16(7070))
	f.Add([]byte{0, 0, 0, 0}, uint16(8080))
	rt := &runtime{snap: &config.Snapshot{Listeners: map[string]*config.Listener{
		"10.96.0.10_7070": {Name: "10.96.0.10_7070"}, "0.0.0.0_8080": {Name: "0.0.0.0_8080"},
	}}}
	f.Fuzz(func(t *testing.T, ip []byte, port uint16) {
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			return
		}
		l := rt.virtual(netip.AddrPortFrom(a, port))
		if l != nil && port != 7070 && port != 8080 {
			t.Fatalf("%s:%d matched %s", a, port, l.Name)
		}
	})
}
