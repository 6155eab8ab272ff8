package contract

import (
	"crypto/tls"
	"io"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// mtlsPair is an echo server with profile's identity that admits sleep,
// and sleep's client configuration for it.
func mtlsPair(b *testing.B) (addr string, client *tls.Config) {
	caAddr, root := startCA(b, workloads)
	sleep := startAgent(b, caAddr, root, "sleep-token", 0)
	profile := startAgent(b, caAddr, root, "profile-token", 0)
	sleepID := spiffeid.RequireFromString("spiffe://cluster.local/ns/multicluster/sa/sleep")
	profileID := spiffeid.RequireFromString("spiffe://cluster.local/ns/multicluster/sa/profile")
	return echoServer(b, profile.ServerConfig(tlsconfig.AuthorizeID(sleepID), "istio-http/1.1")), sleep.ClientConfig("outbound_.8080_._.profile.multicluster.svc.cluster.local", tlsconfig.AuthorizeID(profileID), "istio-http/1.1")
}

// BenchmarkMTLSHandshake is a new mutual-TLS connection between two
// workloads per operation: what every request would pay without pooled
// upstream connections.
func BenchmarkMTLSHandshake(b *testing.B) {
	addr, cfg := mtlsPair(b)
	b.ReportAllocs()
	for b.Loop() {
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// BenchmarkMTLSReuse is one small request and answer over an established
// mutual-TLS connection: what a request pays on a pooled one.
func BenchmarkMTLSReuse(b *testing.B) {
	addr, cfg := mtlsPair(b)
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg, buf := make([]byte, 256), make([]byte, 256)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
}
