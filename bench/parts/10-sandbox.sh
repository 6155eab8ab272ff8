#!/usr/bin/env bash
# Sandbox figures: `sandbox up` wall time with cached binaries (cold start
# from nothing, and idempotent re-run), and resident memory per component.
set -euo pipefail
bin=bin/isthmus
state=$(mktemp -d /tmp/isthmus-bench-XXXXXX)
rounds=${ROUNDS:-3}
if [ -e /run/netns/isthmus-inet ]; then
  echo "bench: a sandbox is running on this machine; stop it first (isthmus sandbox down)" >&2
  exit 1
fi
cleanup() { timeout 120 "$bin" sandbox --state-dir "$state" down >/dev/null 2>&1 || true; rm -rf "$state"; }
trap cleanup EXIT

ms() { date +%s%3N; }
ups=()
for i in $(seq "$rounds"); do
  t0=$(ms); timeout 300 "$bin" sandbox --state-dir "$state" up >/dev/null 2>&1; t1=$(ms)
  ups+=($((t1 - t0)))
  if [ "$i" -lt "$rounds" ]; then timeout 120 "$bin" sandbox --state-dir "$state" down >/dev/null; fi
done
t0=$(ms); timeout 60 "$bin" sandbox --state-dir "$state" up >/dev/null 2>&1; t1=$(ms)
again=$((t1 - t0))
# Pods run the demo-app image make image built (make bench builds it).
"$bin" sandbox --state-dir "$state" load dist/image/oci >/dev/null
sleep 10 # let the controllers settle before reading memory
rss_of() { # cluster component -> RSS MiB
  local pid
  pid=$("$bin" sandbox --state-dir "$state" status | awk -v c="$1" -v m="$2" '$1==c && $3==m {print $4}')
  awk '/VmRSS/{printf "%.0f", $2/1024}' "/proc/$pid/status" 2>/dev/null || echo "?"
}
node_idle=$(rss_of cluster-eks node)
read -r one _ _ < <(timeout 120 go run ./bench/podstart --kubeconfig "$state/kubeconfig" --context cluster-eks --n 1)
read -r p50 p99 pmax < <(timeout 300 go run ./bench/podstart --kubeconfig "$state/kubeconfig" --context cluster-eks --n 50)
node_50=$(rss_of cluster-eks node)

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
echo "## Sandbox"
echo
echo "Command: \`ROUNDS=$rounds bash bench/parts/10-sandbox.sh\` (part of \`make bench\`). Binaries cached; two clusters (cluster-eks, cluster-aks)."
echo
echo "| figure | value | goal |"
echo "|---|---|---|"
echo "| \`sandbox up\` from nothing to both clusters ready, median of $rounds (runs: ${ups[*]} ms) | $(median "${ups[@]}") ms | < 30 s |"
echo "| \`sandbox up\` again on a running sandbox | $again ms | - |"
echo "| pod start, Create to Ready seen by a watch, one pod alone | $one ms | - |"
echo "| pod start, Create to Ready seen by a watch, 50 pods created at once (demo-app profile with an HTTP readiness probe, 1 s period): p50 / p99 / max | $p50 / $p99 / $pmax ms | - |"
echo "| node agent RSS idle / with 50 pods running | $node_idle / $node_50 MiB | - |"
echo
echo "Resident memory after start-up (10 s settled):"
echo
echo "| cluster | component | RSS MiB |"
echo "|---|---|---|"
"$bin" sandbox --state-dir "$state" status | tail -n +2 | while read -r cluster _ comp pid _; do
  rss=$(awk '/VmRSS/{printf "%.0f", $2/1024}' "/proc/$pid/status" 2>/dev/null || echo "?")
  echo "| $cluster | $comp | $rss |"
done
