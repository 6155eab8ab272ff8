package inspect

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/discovery/xds"
)

func TestClusterName(t *testing.T) {
	for name, want := range map[string][4]string{
		"outbound|8080|v1|profile.multicluster.svc.cluster.local": {"profile.multicluster.svc.cluster.local", "8080", "v1", "outbound"},
		"inbound|8080||": {"", "8080", "", "inbound"},
		"outbound_.15012_._.istiod.istio-system.svc.cluster.local": {"istiod.istio-system.svc.cluster.local", "15012", "", "outbound"},
		"BlackHoleCluster": {"BlackHoleCluster", "-", "-", "-"},
	} {
		h, p, s, d := ClusterName(name)
		if [4]string{h, p, s, d} != want {
			t.Errorf("%s: %q %q %q %q, want %q", name, h, p, s, d, want)
		}
	}
}

func TestSyncStates(t *testing.T) {
	p := ProxyStatus{SyncStatus: xds.SyncStatus{ProxyID: "sleep-1.multicluster",
		ClusterSent: "3", ClusterAcked: "3", ListenerSent: "2", ListenerAcked: "1", EndpointSent: "5",
		Nacked: map[string]string{}}}
	for typ, want := range map[string]string{"cds": "SYNCED", "lds": "STALE", "eds": "STALE (Never Acknowledged)", "rds": "NOT SENT"} {
		if got := p.Sync(typ); got != want {
			t.Errorf("%s: %s, want %s", typ, got, want)
		}
	}
	if p.Synced() || p.Name() != "sleep-1.multicluster" {
		t.Errorf("synced %v name %s", p.Synced(), p.Name())
	}
	p.ListenerAcked, p.EndpointAcked = "2", "5"
	p.Nacked["rds"] = "bad route"
	if p.Sync("rds") != "NACKED" || p.Synced() {
		t.Error("a NACK must show")
	}
	var b strings.Builder
	if err := WriteStatus(&b, []ProxyStatus{p}); err != nil || !strings.Contains(b.String(), "sleep-1.multicluster") {
		t.Errorf("%v %s", err, b.String())
	}
}

// selfSigned is a CA certificate's PEM.
func selfSigned(t *testing.T, cn string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, IsCA: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// rootDump is a config_dump as Envoy writes it for Istio's ROOTCA secret:
// the PEM in inline_bytes, base64 once as JSON writes bytes.
func rootDump(pemBytes []byte) []byte {
	return []byte(`{"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump", "dynamic_active_secrets": [
	  {"name": "ROOTCA", "secret": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", "name": "ROOTCA",
	   "validation_context": {"trusted_ca": {"inline_bytes": "` + base64.StdEncoding.EncodeToString(pemBytes) + `"}}}}]}]}`)
}

func TestRootCACompare(t *testing.T) {
	old, mesh, other := selfSigned(t, "old root"), selfSigned(t, "mesh root"), selfSigned(t, "other root")
	roots := func(pemBytes []byte) []*x509.Certificate {
		t.Helper()
		d, err := ParseDump(rootDump(pemBytes))
		if err != nil {
			t.Fatal(err)
		}
		r, err := d.Roots()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// A proxy in the middle of a root rotation trusts both roots.
	rotating, current := roots(append(append([]byte{}, old...), mesh...)), roots(mesh)
	if len(rotating) != 2 {
		t.Fatalf("%d roots from a two-certificate bundle", len(rotating))
	}
	if r := SharedRoot(rotating, current); r == nil || r.Subject.CommonName != "mesh root" {
		t.Errorf("shared root %v, want the mesh root", r)
	}
	if r := SharedRoot(current, roots(other)); r != nil {
		t.Errorf("proxies of different roots share %v", r.Subject)
	}
	// A proxy without its roots yet, and a ROOTCA without a certificate.
	if _, err := (&Dump{}).Roots(); err == nil || !strings.Contains(err.Error(), "no active ROOTCA") {
		t.Errorf("no ROOTCA: %v", err)
	}
	d, err := ParseDump(rootDump([]byte("not a certificate")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Roots(); err == nil {
		t.Error("a ROOTCA without PEM gave roots")
	}
}
