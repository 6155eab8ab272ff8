#!/usr/bin/env bash
# Control plane at scale against the sandbox's real API servers:
# 2 clusters x 500 services x 10 endpoints, 1000 simulated ADS clients,
# then the control plane restarted under them (the reconnect storm).
set -euo pipefail
bin=bin/isthmus
state=$(mktemp -d /tmp/isthmus-bench-XXXXXX)
if [ -e /run/netns/isthmus-inet ]; then
  echo "bench: a sandbox is running on this machine; stop it first (isthmus sandbox down)" >&2
  exit 1
fi
cleanup() { timeout 120 "$bin" sandbox --state-dir "$state" down >/dev/null 2>&1 || true; rm -rf "$state"; }
trap cleanup EXIT
rows=""
for mode in sotw delta; do
  # A fresh pair of clusters per client mode.
  timeout 300 "$bin" sandbox --state-dir "$state" up >/dev/null 2>&1
  flag=""
  [ "$mode" = delta ] && flag="--delta"
  out=$(STATE="$state" timeout 900 go run ./bench/cpscale --kubeconfig "$state/kubeconfig" --isthmus "$bin" --clients 1000 $flag)
  [ "$mode" = delta ] && out=$(echo "$out" | grep -v '^| populate')
  rows="$rows$out"$'\n'
  timeout 120 "$bin" sandbox --state-dir "$state" down >/dev/null 2>&1
done
echo "## Control plane at scale (real API servers)"
echo
echo "Command: \`bash bench/parts/30-controlplane-scale.sh\` (part of \`make bench\`): sandbox up, \`go run ./bench/cpscale --clients 1000\`, then again on fresh clusters with \`--delta\`."
echo "2 clusters x 500 services x 10 endpoints (Services without selectors, hand-made EndpointSlices), no gateways (all endpoints direct);"
echo "\`isthmus discovery\` out of cluster with cluster-eks credentials and a remote secret for cluster-aks; 1000 ADS clients (state-of-the-world, then delta) over 10 gRPC connections"
echo "in the bench process, which shares the 2 cores with the control plane and both clusters. Last, the reconnect storm: the control plane is SIGKILLed and started again,"
echo "and every client reconnects at once as the proxies do (gRPC redial 500 ms x1.6 up to 2 s, a new stream 250-500 ms after the old one ended, asking for the load assignments of every cluster it gets)."
echo
echo "| figure | value | goal |"
echo "|---|---|---|"
printf '%s' "$rows"
echo
echo "For context, Istio's published figure: istiod uses about 1 vCPU and 1.5 GB of memory per 1000 services."
echo "The memory figure is the process's RSS 3 s after the first push, out of a container (no memory limit), with Go's default GOGC;"
echo "\`go run ./bench/cpscale --heap FILE --cpu FILE\` saves the heap profile at that moment and a CPU profile around the change."
