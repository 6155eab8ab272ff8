package config

import (
	"testing"

	"google.golang.org/protobuf/types/known/wrapperspb"
)

// upgrade_configs: a type is on unless it says enabled false, names are
// matched in any case, a route's setting wins over the manager's; CONNECT
// (a tunnel the proxy cannot make) and nameless entries are refused.
func TestUpgradeConfigs(t *testing.T) {
	var m HTTPManager
	if err := upgrade(&m.Upgrades, "WebSocket", nil); err != nil {
		t.Fatal(err)
	}
	if err := upgrade(&m.Upgrades, "spdy/3.1", wrapperspb.Bool(false)); err != nil {
		t.Fatal(err)
	}
	var r Route
	if err := upgrade(&r.Upgrades, "websocket", wrapperspb.Bool(false)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		route *Route
		typ   string
		want  bool
	}{
		{nil, "websocket", true}, {nil, "WEBSOCKET", true}, {nil, "spdy/3.1", false}, {nil, "h2c", false},
		{&r, "websocket", false}, {&Route{}, "websocket", true},
	} {
		if got := m.UpgradeAllowed(tc.route, tc.typ); got != tc.want {
			t.Errorf("route %v, %s: %v, want %v", tc.route != nil, tc.typ, got, tc.want)
		}
	}
	var none *HTTPManager
	if none.UpgradeAllowed(nil, "websocket") {
		t.Error("no connection manager allows an upgrade")
	}
	var into map[string]bool
	if err := upgrade(&into, "CONNECT", nil); err == nil {
		t.Error("CONNECT was taken")
	}
	if err := upgrade(&into, "CONNECT", wrapperspb.Bool(false)); err != nil {
		t.Errorf("CONNECT disabled: %v", err)
	}
	if err := upgrade(&into, "", nil); err == nil {
		t.Error("an entry without a type was taken")
	}
}
