package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// echoUpgrade is an upstream that switches every request that asks to
// "echo" and then writes back what it reads.
func echoUpgrade(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				if !strings.EqualFold(req.Header.Get("Upgrade"), "echo") {
					_, _ = io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
					return
				}
				_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
				_, _ = io.Copy(c, br)
			}()
		}
	}()
	return l.Addr().String()
}

// A request that upgrades its connection (WebSocket's handshake) is
// switched end to end, through one proxy and through two (a client's
// sidecar and the server's): after the 101 the bytes go both ways. A
// request the upstream does not switch is answered as any other.
func TestUpgradedConnectionsRelayBothWays(t *testing.T) {
	_, one := startHTTPProxy(t, echoUpgrade(t), nil)
	_, two := startHTTPProxy(t, one, nil)
	for _, front := range []string{one, two} {
		upgradeAndEcho(t, front)
	}
	if code, _, _ := engines[0].do(t, two, "GET", "/plain"); code != http.StatusBadRequest {
		t.Errorf("a request without Upgrade: %d, want the upstream's 400", code)
	}
}

func upgradeAndEcho(t *testing.T, front string) {
	t.Helper()
	c := dialRaw(t, front)
	if _, err := io.WriteString(c.c, "GET /ws HTTP/1.1\r\nHost: profile\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("answer %d %q, want 101", resp.StatusCode, b)
	}
	for _, msg := range []string{"hello", "again"} {
		if _, err := io.WriteString(c.c, msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c.br, got); err != nil || string(got) != msg {
			t.Fatalf("echo of %q: %q, %v", msg, got, err)
		}
	}
}
