package proxyview

import "testing"

func TestSNIAndClusterNames(t *testing.T) {
	sni := SNI(8080, "", "profile.multicluster.svc.cluster.local")
	if sni != "outbound_.8080_._.profile.multicluster.svc.cluster.local" {
		t.Fatalf("sni %s", sni)
	}
	if got := OutboundCluster(8080, "v1", "a.b.svc.cluster.local"); got != "outbound|8080|v1|a.b.svc.cluster.local" {
		t.Fatal(got)
	}
}
