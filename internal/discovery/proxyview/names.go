package proxyview

import (
	"fmt"
)

// OutboundCluster is Istio's sidecar cluster name: outbound|PORT|SUBSET|HOST.
func OutboundCluster(port int32, subset, host string) string {
	return fmt.Sprintf("outbound|%d|%s|%s", port, subset, host)
}

// SNI is the name a client sends and an AUTO_PASSTHROUGH gateway routes on,
// and the name of the gateway's cluster: outbound_.PORT_.SUBSET_.HOST.
func SNI(port int32, subset, host string) string {
	return fmt.Sprintf("outbound_.%d_.%s_.%s", port, subset, host)
}
