#!/usr/bin/env bash
# Reliability: the walkthrough's resilience and clusters areas (test/e2e/
# walkthrough_resilience_test.go, walkthrough_clusters_test.go: a third
# cluster joining and leaving) on the replayed walkthrough, alone. Each
# case logs a row ("resilience| ...") with the calls sleep made to profile
# during it, the failed ones and how the mesh recovered.
set -euo pipefail
if [ -e /run/netns/isthmus-inet ]; then
  echo "bench: a sandbox is running on this machine; stop it first (isthmus sandbox down)" >&2
  exit 1
fi
log=/tmp/isthmus-bench-resilience.log
status=ok
WALKTHROUGH_AREAS=resilience,clusters go test -count=1 -v -run 'TestWalkthrough$' -timeout 40m ./test/e2e/ >"$log" 2>&1 || status="FAILED (its go test output is in $log)"
echo "## Reliability (the walkthrough's resilience and clusters areas)"
echo
echo "Command: \`bash bench/parts/50-resilience.sh\` (part of \`make bench\`; the same cases run in \`make test\`): \`WALKTHROUGH_AREAS=resilience,clusters go test -run TestWalkthrough ./test/e2e/\`,"
echo "the walkthrough replayed on the sandbox, then each failure injected while sleep in cluster-eks calls profile (both clusters answer, cluster-aks's through the east-west gateways) one call at a time. Result: $status."
echo
echo "| case | calls | failed | recovery | goal |"
echo "|---|---|---|---|---|"
sed -n 's/^.*resilience| \(.*\)$/| \1/p' "$log"
