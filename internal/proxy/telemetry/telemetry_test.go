package telemetry

import "testing"

func TestServiceOfCluster(t *testing.T) {
	for cluster, want := range map[string]Service{
		"outbound|8080||profile.multicluster.svc.cluster.local":    {"profile.multicluster.svc.cluster.local", "profile", "multicluster"},
		"outbound|8080|v1|profile.multicluster.svc.cluster.local":  {"profile.multicluster.svc.cluster.local", "profile", "multicluster"},
		"outbound_.8080_._.profile.multicluster.svc.cluster.local": {"profile.multicluster.svc.cluster.local", "profile", "multicluster"},
		"PassthroughCluster": {"unknown", "unknown", "unknown"},
	} {
		if got := ServiceOfCluster(cluster); got != want {
			t.Errorf("%s: %+v, want %+v", cluster, got, want)
		}
	}
}
