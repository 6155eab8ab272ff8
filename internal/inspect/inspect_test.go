package inspect

import (
	"strings"
	"testing"

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
