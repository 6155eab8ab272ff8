package xds

import (
	"fmt"
	"strconv"
	"strings"
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

// ParseSNI splits outbound_.PORT_.SUBSET_.HOST; ok is false for anything else.
func ParseSNI(sni string) (port int32, subset, host string, ok bool) {
	rest, found := strings.CutPrefix(sni, "outbound_.")
	if !found {
		return 0, "", "", false
	}
	p, rest, found := strings.Cut(rest, "_.")
	if !found {
		return 0, "", "", false
	}
	subset, host, found = strings.Cut(rest, "_.")
	if !found || host == "" {
		return 0, "", "", false
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 {
		return 0, "", "", false
	}
	return int32(n), subset, host, true
}
