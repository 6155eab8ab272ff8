package contract

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/isthmus-mesh/isthmus/internal/discovery/ca"
	"github.com/isthmus-mesh/isthmus/internal/discovery/ca/catest"
	"github.com/isthmus-mesh/isthmus/internal/proxy/identity"
)

// startCA serves the certificate service on loopback.
func startCA(t testing.TB, auth ca.Authenticator) (string, []byte) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l.Addr().String(), catest.Serve(t, l, "istiod.istio-system.svc", auth)
}

func startAgent(t testing.TB, addr string, root []byte, token string, ttl time.Duration) *identity.Agent {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "istio-token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	log := slog.Default()
	if _, ok := t.(*testing.B); ok {
		log = slog.New(slog.DiscardHandler) // benchmark output must stay parseable
	}
	a, err := identity.New(identity.Config{CAAddr: addr, CAServerName: "istiod.istio-system.svc", RootCert: root, TokenFile: tokenFile,
		ClusterID: "cluster-eks", TTL: ttl, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-a.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("no certificate within 10 s")
	}
	return a
}

// echoServer serves TLS with cfg on loopback, echoing what it reads.
func echoServer(t testing.TB, cfg *tls.Config) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
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
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return l.Addr().String()
}

var workloads = catest.TokenAuth{
	"sleep-token":   {Cluster: "cluster-eks", Namespace: "multicluster", ServiceAccount: "sleep"},
	"profile-token": {Cluster: "cluster-aks", Namespace: "multicluster", ServiceAccount: "profile"},
}

func TestMutualTLSBetweenWorkloads(t *testing.T) {
	addr, root := startCA(t, workloads)
	sleep := startAgent(t, addr, root, "sleep-token", 0)
	profile := startAgent(t, addr, root, "profile-token", 0)
	if got := sleep.ID().String(); got != "spiffe://cluster.local/ns/multicluster/sa/sleep" {
		t.Fatalf("sleep identity %s", got)
	}
	sleepID := spiffeid.RequireFromString("spiffe://cluster.local/ns/multicluster/sa/sleep")
	profileID := spiffeid.RequireFromString("spiffe://cluster.local/ns/multicluster/sa/profile")

	l, err := tls.Listen("tcp", "127.0.0.1:0", profile.ServerConfig(tlsconfig.AuthorizeID(sleepID), "istio"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					return
				}
				id, _ := identity.PeerID(tc.ConnectionState())
				_, _ = io.WriteString(c, id.String()+"\n")
			}()
		}
	}()
	c, err := tls.Dial("tcp", l.Addr().String(), sleep.ClientConfig("outbound_.8080_._.profile.multicluster.svc.cluster.local", tlsconfig.AuthorizeID(profileID), "istio"))
	if err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if strings.TrimSpace(line) != sleepID.String() {
		t.Fatalf("server saw %q, want %s", line, sleepID)
	}
	if p := c.ConnectionState().NegotiatedProtocol; p != "istio" {
		t.Fatalf("ALPN %q", p)
	}

	// The client refuses a server that is not the expected identity.
	if c, err := tls.Dial("tcp", l.Addr().String(), sleep.ClientConfig("x", tlsconfig.AuthorizeID(sleepID))); err == nil {
		c.Close()
		t.Fatal("client accepted profile while expecting sleep")
	}
	// The server refuses a client it does not authorize (profile calling itself).
	if c, err := tls.Dial("tcp", l.Addr().String(), profile.ClientConfig("x", tlsconfig.AuthorizeAny())); err == nil {
		_, err = bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err == nil {
			t.Fatal("server accepted an unauthorized client")
		}
	}
}

// A long-lived connection keeps working while both ends renew twice; new
// connections get the new certificates.
func TestRenewalKeepsConnections(t *testing.T) {
	addr, root := startCA(t, workloads)
	const ttl = 3 * time.Second
	sleep := startAgent(t, addr, root, "sleep-token", ttl)
	profile := startAgent(t, addr, root, "profile-token", ttl)
	echo := echoServer(t, profile.ServerConfig(tlsconfig.AuthorizeAny()))
	dial := func() *tls.Conn {
		c, err := tls.Dial("tcp", echo, sleep.ClientConfig("x", tlsconfig.AuthorizeAny()))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	long := dial()
	defer long.Close()
	r := bufio.NewReader(long)
	first := profile.Leaf().SerialNumber
	seen := map[string]bool{first.String(): true}
	deadline := time.Now().Add(4 * ttl)
	for len(seen) < 3 && time.Now().Before(deadline) {
		if _, err := io.WriteString(long, "ping\n"); err != nil {
			t.Fatalf("long-lived connection broke after %d certificates: %v", len(seen), err)
		}
		if s, err := r.ReadString('\n'); err != nil || s != "ping\n" {
			t.Fatalf("long-lived connection: %q %v", s, err)
		}
		seen[profile.Leaf().SerialNumber.String()] = true
		time.Sleep(100 * time.Millisecond)
	}
	if len(seen) < 3 {
		t.Fatalf("saw %d server certificates in %s; want two renewals", len(seen), 4*ttl)
	}
	fresh := dial()
	defer fresh.Close()
	if got := fresh.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(first) == 0 {
		t.Fatal("a new connection still got the first certificate")
	}
}
