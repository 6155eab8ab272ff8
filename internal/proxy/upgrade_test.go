package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// switchingUpstream switches every request that asks for an upgrade,
// whatever the protocol, and then writes back what it reads: the
// upstream an attacker hopes for. It counts the requests it took.
func switchingUpstream(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	var seen atomic.Int32
	addr, _ := serveConns(t, func(c net.Conn, _ int) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			seen.Add(1)
			up := req.Header.Get("Upgrade")
			if up == "" {
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
				continue
			}
			_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+up+"\r\n\r\n")
			_, _ = io.Copy(c, br)
			return
		}
	})
	return addr, &seen
}

// withUpgrades lists upgrade types in the connection manager, as Istio
// lists websocket in every one.
func withUpgrades(types ...string) func(*hcm.HttpConnectionManager) {
	return func(m *hcm.HttpConnectionManager) {
		for _, t := range types {
			m.UpgradeConfigs = append(m.UpgradeConfigs, &hcm.HttpConnectionManager_UpgradeConfig{UpgradeType: t})
		}
	}
}

// upgrade sends a request asking to switch to proto and returns the
// answer's status; on 101 it checks that bytes go both ways.
func upgrade(t *testing.T, front, method, target, proto string) int {
	t.Helper()
	c := dialRaw(t, front)
	if _, err := io.WriteString(c.c, method+" "+target+" HTTP/1.1\r\nHost: profile\r\nConnection: Upgrade\r\nUpgrade: "+proto+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return resp.StatusCode
	}
	for _, msg := range []string{"hello", "again"} {
		if _, err := io.WriteString(c.c, msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c.br, got); err != nil || string(got) != msg {
			t.Fatalf("echo of %q over %s: %q, %v", msg, proto, got, err)
		}
	}
	return resp.StatusCode
}

// A WebSocket handshake is switched end to end, through one proxy and
// through two (a client's sidecar and the server's): after the 101 the
// bytes go both ways.
func TestWebSocketIsRelayedBothWays(t *testing.T) {
	up, _ := switchingUpstream(t)
	_, one := startProxy(t, up, nil, nil, withUpgrades("websocket"))
	_, two := startProxy(t, one, nil, nil, withUpgrades("websocket"))
	for _, front := range []string{one, two} {
		if code := upgrade(t, front, "GET", "/ws", "WebSocket"); code != http.StatusSwitchingProtocols {
			t.Fatalf("WebSocket through %s: %d, want 101", front, code)
		}
	}
	if code, body, _ := engines[0].do(t, two, "GET", "/plain"); code != 200 || body != "plain" {
		t.Errorf("a request without Upgrade: %d %q", code, body)
	}
}

// An upgrade the configuration does not list is refused (403, as Envoy's
// upgrade_failed) and never reaches the upstream: an h2c upgrade would
// turn the connection into a tunnel whose requests no route, RBAC rule or
// metric sees. CONNECT is refused too, and a route can take WebSocket
// away.
func TestUnlistedUpgradesAreRefused(t *testing.T) {
	up, seen := switchingUpstream(t)
	_, front := startProxy(t, up, nil, func(a *routev3.RouteAction) {
		a.UpgradeConfigs = []*routev3.RouteAction_UpgradeConfig{{UpgradeType: "websocket", Enabled: wrapperspb.Bool(false)}}
	}, withUpgrades("websocket", "spdy/3.1"))
	_, none := startProxy(t, up, nil, nil)
	for _, tc := range []struct {
		name, front, method, proto string
	}{
		{"h2c", front, "GET", "h2c"},
		{"two protocols at once", front, "GET", "spdy/3.1, h2c"},
		{"WebSocket where the route disables it", front, "GET", "websocket"},
		{"WebSocket without upgrade_configs", none, "GET", "websocket"},
		{"CONNECT", front, "CONNECT", "websocket"},
	} {
		target := "/x"
		if tc.method == "CONNECT" {
			target = "profile:80"
		}
		if code := upgrade(t, tc.front, tc.method, target, tc.proto); code != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", tc.name, code)
		}
	}
	if n := seen.Load(); n != 0 {
		t.Errorf("the upstream took %d of the refused requests", n)
	}
	if code := upgrade(t, front, "GET", "/x", "spdy/3.1"); code != http.StatusSwitchingProtocols {
		t.Errorf("spdy/3.1, listed: %d, want 101", code)
	}
}
