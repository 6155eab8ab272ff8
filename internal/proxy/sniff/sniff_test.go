package sniff

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"
)

// clientHello captures the bytes a real TLS client sends first.
func clientHello(t testing.TB, sni string, alpn ...string) []byte {
	t.Helper()
	c, s := net.Pipe()
	go func() {
		_ = tls.Client(c, &tls.Config{ServerName: sni, NextProtos: alpn, InsecureSkipVerify: true}).Handshake()
	}()
	buf := make([]byte, 4096)
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _ := s.Read(buf)
	c.Close()
	s.Close()
	return buf[:n]
}

// pipeWith is a connection whose peer sends b and then closes.
func pipeWith(b []byte) net.Conn {
	c, s := net.Pipe()
	go func() { _, _ = s.Write(b); s.Close() }()
	return c
}

func TestReadsSNIAndReplaysEverything(t *testing.T) {
	hello := clientHello(t, "outbound_.8080_._.profile.multicluster.svc.cluster.local", "istio-h2", "istio")
	h, c, err := TLS(pipeWith(hello), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !h.TLS || h.ServerName != "outbound_.8080_._.profile.multicluster.svc.cluster.local" || len(h.ALPN) != 2 || h.ALPN[0] != "istio-h2" {
		t.Fatalf("hello %+v", h)
	}
	replay, _ := io.ReadAll(c)
	if !bytes.Equal(replay, hello) {
		t.Fatalf("replayed %d bytes of %d", len(replay), len(hello))
	}
}

func TestPlaintextIsNotConsumed(t *testing.T) {
	h, c, err := TLS(pipeWith([]byte("GET / HTTP/1.1\r\n\r\n")), time.Second)
	if err != nil || h.TLS {
		t.Fatalf("%+v %v", h, err)
	}
	if b, _ := io.ReadAll(c); string(b) != "GET / HTTP/1.1\r\n\r\n" {
		t.Fatalf("replayed %q", b)
	}
}

// A connection sniffed twice (TLS, then HTTP) replays everything once, on
// its own socket.
func TestSniffedTwice(t *testing.T) {
	in := "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
	raw := pipeWith([]byte(in))
	_, first, err := TLS(raw, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	proto, second, _ := HTTP(first, time.Second)
	if proto != "http/1.1" || second.Raw() != raw {
		t.Fatalf("proto %q, stacked %v", proto, second.Raw() != raw)
	}
	if b, _ := io.ReadAll(second); string(b) != in {
		t.Fatalf("replayed %q", b)
	}
}

// FuzzTLS: any first bytes give an answer or an error, never a panic,
// and plaintext is always replayed whole.
func FuzzTLS(f *testing.F) {
	f.Add(clientHello(f, "outbound_.8080_._.profile.multicluster.svc.cluster.local", "istio"))
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 0x01})
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, c, err := TLS(pipeWith(b), 200*time.Millisecond)
		if err != nil || h.TLS {
			return
		}
		if got, _ := io.ReadAll(c); !bytes.Equal(got, b) {
			t.Fatalf("plaintext replay lost bytes: %q vs %q", got, b)
		}
	})
}

func TestHTTPDetection(t *testing.T) {
	for in, want := range map[string]string{
		"GET /x HTTP/1.1\r\nHost: a\r\n\r\n": "http/1.1",
		"POST / HTTP/1.0\r\n":                "http/1.0",
		HTTP2Preface:                         "h2c",
		"\x00\x01binary":                     "",
		"SSH-2.0-OpenSSH\r\n":                "",
		"hello world\n":                      "",
	} {
		got, c, err := HTTP(pipeWith([]byte(in)), time.Second)
		if err != nil && got != "" {
			t.Errorf("%q: %v", in, err)
		}
		if got != want {
			t.Errorf("%q -> %q, want %q", in, got, want)
		}
		if b, _ := io.ReadAll(c); string(b) != in {
			t.Errorf("%q: replayed %q", in, b)
		}
	}
}

func FuzzHTTP(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Add([]byte(HTTP2Preface))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, c, _ := HTTP(pipeWith(b), 100*time.Millisecond)
		if got, _ := io.ReadAll(c); !bytes.Equal(got, b) {
			t.Fatalf("replay lost bytes")
		}
	})
}
