#!/usr/bin/env bash
# Hot-path micro-benchmarks (go test -bench), this commit against a base
# (BENCH_BASE, default the previous commit), compared with benchstat.
set -euo pipefail
cache=${ISTHMUS_CACHE:-/var/cache/isthmus}/bench
benchstat=$cache/bin/benchstat
if [ ! -x "$benchstat" ]; then
  GOBIN=$cache/bin timeout 600 go install golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da >&2
fi
base=${BENCH_BASE:-HEAD~1}
base_rev=$(git rev-parse --short "$base")
pkgs="./internal/proxy/ ./test/contract/ ./internal/proxy/lb/ ./internal/discovery/network/ ./internal/discovery/xds/"
filter='HTTPForward|HTTPDirect|GRPCForward|GRPCDirect|MTLSHandshake|MTLSReuse|PickRoundRobin|SplitHorizon|GenerateSidecarView|PushEndpoints1000Proxies'
work=$(mktemp -d)
trap 'git worktree remove --force "$work/base" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
run() { # dir out (a base from before a package moved runs the packages it has: the mTLS benchmarks were in ./internal/proxy/identity/)
  local have="" p
  for p in $pkgs ./internal/proxy/identity/; do
    if compgen -G "$1/$p*_test.go" >/dev/null; then have="$have $p"; fi
  done
  (cd "$1" && timeout 600 go test -run '^$' -bench "$filter" -benchmem -count 6 $have) > "$2" 2>&1 || true
}
git worktree add -q --detach "$work/base" "$base" >&2
run "$work/base" "$work/old.txt"
run . "$work/new.txt"
echo "## Hot paths: go test -bench, $base_rev (old) against this commit (new)"
echo
echo "Each benchmark 6 times per side, compared by benchstat; rows only in \"new\" are benchmarks the base does not have."
echo "HTTPForward is one HTTP/1.1 request through the proxy on loopback (plaintext, keep-alive) and HTTPDirect the same without it:"
echo "their difference is what the proxy's HTTP path costs per request, before mTLS; GRPCForward and GRPCDirect are the same for a unary"
echo "gRPC call (health Check) on one HTTP/2 connection. MTLSHandshake is a new mutual-TLS connection"
echo "between two workload identities and MTLSReuse a 256-byte exchange on an established one: what pooled upstream connections save."
echo "GenerateSidecarView builds one network view (1000 clusters and load assignments, split horizon) and PushEndpoints1000Proxies"
echo "pushes one service's changed endpoints to 1000 connected sidecars."
echo
echo '```'
"$benchstat" old="$work/old.txt" new="$work/new.txt" 2>&1 | grep -v '^goos\|^goarch\|^cpu' || true
echo '```'
echo
echo "Command: \`BENCH_BASE=$base bash bench/parts/05-gobench.sh\` (part of \`make bench\`); raw output with \`go test -run '^\$' -bench '$filter' -benchmem $pkgs\`."
