#!/usr/bin/env bash
# Control plane at scale against the sandbox's real API servers, isthmus
# and Istio's own istiod in turn on the same clusters: 3 clusters on 3
# networks, 2000 services x 10 endpoints, 5000 simulated delta ADS clients
# spread over the networks, one EndpointSlice change in a remote, then each
# control plane restarted under its clients (the reconnect storm).
set -euo pipefail
bin=bin/isthmus
clients=${CPSCALE_CLIENTS:-5000}
services=${CPSCALE_SERVICES:-2000}
state=$(mktemp -d /tmp/isthmus-bench-XXXXXX)
if [ -e /run/netns/isthmus-inet ]; then
  echo "bench: a sandbox is running on this machine; stop it first (isthmus sandbox down)" >&2
  exit 1
fi
# The clusters' file lives outside the state directory: sandbox down removes that.
conf=$(mktemp /tmp/isthmus-bench-clusters-XXXXXX.yaml)
cleanup() { timeout 120 "$bin" sandbox --state-dir "$state" down >/dev/null 2>&1 || true; rm -rf "$state" "$conf"; }
trap cleanup EXIT
# Istio's pilot-discovery, built once per machine (make istiod).
go run ./test/istiod pilot-discovery >/dev/null
cat > "$conf" <<YAML
clusters:
- {name: cluster-eks, network: network1, region: us-east-1, zone: us-east-1a}
- {name: cluster-aks, network: network2, region: eastus, zone: eastus-1}
- {name: cluster-gke, network: network3, region: us-central1, zone: us-central1-a}
YAML
timeout 300 "$bin" sandbox --state-dir "$state" up --config "$conf" >/dev/null 2>&1
prof=${BENCH_PPROF_DIR:-bench/profiles}
cpscale() {
  STATE="$state" timeout 2700 go run ./bench/cpscale --kubeconfig "$state/kubeconfig" --isthmus "$bin" \
    --clusters cluster-eks,cluster-aks,cluster-gke --services "$services" --delta --control-planes isthmus,istiod "$@"
}
rows=$(cpscale --clients "$clients" --heap "$prof/cpscale.heap" --cpu "$prof/cpscale.change.cpu" --push-cpu "$prof/cpscale.push.cpu")
# istiod does not serve $clients clients in 10 minutes (above), so the
# ratios come from a second run at a fifth of them, on fresh clusters.
few=$((clients / 5))
timeout 120 "$bin" sandbox --state-dir "$state" down >/dev/null 2>&1
timeout 300 "$bin" sandbox --state-dir "$state" up --config "$conf" >/dev/null 2>&1
rows_few=$(cpscale --clients "$few" --storm=false)
echo "## Control plane at scale, against istiod (real API servers)"
echo
echo "Command: \`bash bench/parts/30-controlplane-scale.sh\` (part of \`make bench\`): a sandbox of 3 clusters on 3 networks, then \`go run ./bench/cpscale --clients $clients --services $services --delta --control-planes isthmus,istiod\`."
echo "$services services x 10 endpoints spread over the 3 clusters (Services without selectors, hand-made EndpointSlices whose endpoints name one never-scheduled pod labelled for mTLS, so"
echo "they cross networks through each cluster's east-west gateway, a Service labelled topology.istio.io/network); $clients delta ADS clients spread over the 3 networks, one gRPC connection per 100,"
echo "in the bench process, which shares the 2 cores with the control plane and the three clusters. Each control plane runs out of cluster for cluster-eks, in turn, on the same clusters:"
echo "\`isthmus discovery\` with cluster-eks's admin credentials and remote secrets for the others; Istio's pilot-discovery (istio.io/istio $(sed -n 's/^const Version = "\(.*\)"/\1/p' test/istiod/main.go), built by \`make istiod\`)"
echo "with read-only accounts in every cluster (remote kubeconfigs from PILOT_MULTICLUSTER_KUBECONFIG_PATH) and a plugged-in CA; both with GOMAXPROCS=2 and their default settings (debounce 100 ms)."
echo "The change: one endpoint added to one EndpointSlice of cluster-aks; clients on network2 see its address, the others their gateway's weight grow by one."
echo "Last, the reconnect storm: the control plane is SIGKILLed and started again, and every client reconnects at once as the proxies do (gRPC redial 500 ms x1.6 up to 2 s, a new stream 250-500 ms after the old one ended)."
echo
echo "| figure | isthmus | istiod | isthmus / istiod | goal |"
echo "|---|---|---|---|---|"
printf '%s\n' "$rows"
echo
echo "The same at $few clients (fresh clusters, no storm), where istiod's first push completes:"
echo
echo "| figure | isthmus | istiod | isthmus / istiod | goal |"
echo "|---|---|---|---|---|"
printf '%s\n' "$rows_few"
echo
echo "istiod caches generated clusters and load assignments only for a push request with a start time, and a newly connected proxy has none"
echo "until the first push after it connected (\`LastPushTime\` is set by pushes, not by the connection): with no configuration change while"
echo "the clients connect, every client's clusters and load assignments are generated afresh (its log says \`cached:0/N\` for each client)."
echo
echo "Memory is the process's RSS 3 s after the first push, out of a container (no memory limit), with Go's default GOGC."
echo "\`go run ./bench/cpscale --heap FILE --cpu FILE --push-cpu FILE\` saves isthmus's heap profiles after the first push and after the storm, a CPU profile around the change, and CPU profiles of isthmus and of the bench's clients over the first push."
