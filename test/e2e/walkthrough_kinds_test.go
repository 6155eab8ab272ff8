package e2e

import (
	"fmt"
	"testing"
)

// kindsArea: services that are not the walkthrough's HTTP ones, present in
// both clusters, under STRICT mTLS mesh-wide.
func kindsArea(t *testing.T, w *walkthrough) {
	e := w.e
	t.Run("a TCP port and a port named without a protocol (sniffed) of a service in both clusters are answered by both clusters under STRICT", func(t *testing.T) {
		svc := `apiVersion: v1
kind: Service
metadata: {name: profile-tcp, namespace: multicluster}
spec:
  selector: {app: profile}
  ports:
  - {name: tcp-web, port: 9080, targetPort: 8080}
  - {name: web, port: 9081, targetPort: 8080}
`
		for _, c := range []string{"cluster-eks", "cluster-aks"} {
			e.apply(c, svc)
			defer e.kubectl(c, "", "-n", "multicluster", "delete", "service", "profile-tcp")
		}
		e.apply("cluster-eks", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n")
		defer e.kubectl("cluster-eks", "", "-n", "istio-system", "delete", "peerauthentication", "default")
		for _, port := range []int{9080, 9081} {
			var by map[string]int
			// Each sidecar listens on its own cluster's ClusterIP of the
			// service (sleep's DNS gives it cluster-eks's).
			eventually(t, fmt.Sprintf("profile-tcp:%d answered by both clusters", port), func() bool {
				by = map[string]int{}
				for _, a := range answers(w.sleepExec(t, fmt.Sprintf("for i in $(seq 40); do curl -sS --max-time 5 http://profile-tcp:%d/profile?id=4; echo; done", port))) {
					by[a.ServedBy.Cluster]++
				}
				return by["cluster-eks"] > 0 && by["cluster-aks"] > 0
			})
			t.Logf("port %d: %v", port, by)
		}
	})
}
