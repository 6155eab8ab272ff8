package xds

import "testing"

func TestSNIRoundTrip(t *testing.T) {
	sni := SNI(8080, "", "profile.multicluster.svc.cluster.local")
	if sni != "outbound_.8080_._.profile.multicluster.svc.cluster.local" {
		t.Fatalf("sni %s", sni)
	}
	p, sub, host, ok := ParseSNI(sni)
	if !ok || p != 8080 || sub != "" || host != "profile.multicluster.svc.cluster.local" {
		t.Fatalf("parse: %d %q %q %v", p, sub, host, ok)
	}
	if got := OutboundCluster(8080, "v1", "a.b.svc.cluster.local"); got != "outbound|8080|v1|a.b.svc.cluster.local" {
		t.Fatal(got)
	}
	for _, bad := range []string{"", "outbound|8080||x", "outbound_.0_._.x", "outbound_.99999_._.x", "outbound_.80_.x", "outbound_.80_._."} {
		if _, _, _, ok := ParseSNI(bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}

func FuzzParseSNI(f *testing.F) {
	f.Add("outbound_.8080_._.profile.multicluster.svc.cluster.local")
	f.Add("outbound_.1_.v1_.x")
	f.Fuzz(func(t *testing.T, s string) {
		p, sub, host, ok := ParseSNI(s)
		if ok && SNI(p, sub, host) != s && SNI(p, sub, host) != "outbound_."+s[len("outbound_."):] {
			// Leading zeros in the port are the only non-canonical form accepted.
			if _, _, _, ok2 := ParseSNI(SNI(p, sub, host)); !ok2 {
				t.Fatalf("%q parsed to %d %q %q, which does not round-trip", s, p, sub, host)
			}
		}
	})
}
