#!/usr/bin/env bash
# Data plane: fortio through the direct path, two isthmus sidecars, the
# east-west gateway, and nginx two hops with mTLS, in network namespaces.
set -euo pipefail
cache=${ISTHMUS_CACHE:-/var/cache/isthmus}/bench
fortio=$cache/bin/fortio
# fortio from the Go module proxy; 1.66.5 is the newest whose dependencies it serves.
if [ ! -x "$fortio" ]; then
  GOBIN=$cache/bin timeout 600 go install fortio.org/fortio@v1.66.5 >&2
fi
if ! command -v nginx >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light) >&2
fi
out=$(mktemp)
pprof=${BENCH_PPROF_DIR:-bench/profiles}
mkdir -p "$pprof"
trap 'rm -f "$out"' EXIT
BENCH_OUT=$out FORTIO=$fortio BENCH_PPROF_DIR=$(realpath "$pprof") timeout 900 \
  go test -count=1 -run '^$' -bench BenchmarkDataPlane -benchtime 1x -timeout 14m ./test/e2e/ >&2
cat "$out"
echo
echo "Command: \`bash bench/parts/40-dataplane.sh\` (part of \`make bench\`). CPU profiles of both sidecars during the HTTP runs: \`$pprof/\` (\`go tool pprof -top bin/isthmus $pprof/http-0qps-isthmus-ptest-a.pprof\`)."
