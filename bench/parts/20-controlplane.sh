#!/usr/bin/env bash
# Control plane, in process: generation of one network view and a push to
# 1000 sidecars over a registry of 2 clusters x 500 services x 10 endpoints
# (1000 services, 10,000 endpoints, one gateway per network).
set -euo pipefail
out=$(timeout 300 go test -run XXX -bench 'GenerateSidecarView|Push1000Proxies|PushEndpoints1000Proxies' -benchtime 10x -count 3 ./internal/discovery/xds/ 2>&1)
med() { # benchmark name, field index -> median of the 3 runs
  echo "$out" | awk -v n="$1" -v f="$2" '$1 ~ n {print $f}' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'
}
gen_ms=$(awk -v v="$(med GenerateSidecarView 3)" 'BEGIN{printf "%.1f", v/1e6}')
gen_mb=$(awk -v v="$(med GenerateSidecarView 5)" 'BEGIN{printf "%.1f", v/1048576}')
push_ms=$(awk -v v="$(med '^BenchmarkPush1000Proxies' 3)" 'BEGIN{printf "%.1f", v/1e6}')
eds_ms=$(awk -v v="$(med PushEndpoints1000Proxies 3)" 'BEGIN{printf "%.1f", v/1e6}')
echo "## Control plane (in process)"
echo
echo "Command: \`go test -run XXX -bench 'GenerateSidecarView|Push1000Proxies|PushEndpoints1000Proxies' -benchtime 10x -count 3 ./internal/discovery/xds/\` (part of \`make bench\`), median of 3."
echo "Registry: 2 clusters on 2 networks, 1000 services, 10,000 endpoints. Proxies of one network share one generated view."
echo
echo "| figure | value | goal |"
echo "|---|---|---|"
echo "| generate one sidecar view (1000 clusters + 1000 load assignments, split horizon) | $gen_ms ms, $gen_mb MiB allocated | - |"
echo "| full push: regenerate both views and hand snapshots to 1000 connected sidecars | $push_ms ms | - |"
echo "| endpoint push: one service's endpoints changed, its load assignments regenerated in both views, snapshots to 1000 sidecars | $eds_ms ms | - |"
echo
echo "A push caused by endpoint changes alone regenerates only the load assignments of the services it names; the streams then send each client only what changed (next section: end to end)."
