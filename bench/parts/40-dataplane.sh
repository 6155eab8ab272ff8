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
# nginx-light and its stream module (the peer's east-west gateway: ssl_preread).
if ! command -v nginx >/dev/null || [ ! -f /usr/lib/nginx/modules/ngx_stream_module.so ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light libnginx-mod-stream) >&2
fi
out=$(mktemp)
pprof=${BENCH_PPROF_DIR:-bench/profiles}
mkdir -p "$pprof"
trap 'rm -f "$out"' EXIT
BENCH_OUT=$out FORTIO=$fortio BENCH_PPROF_DIR=$(realpath "$pprof") timeout 900 \
  go test -count=1 -run '^$' -bench BenchmarkDataPlane -benchtime 1x -timeout 14m ./test/e2e/ >&2
cat "$out"
echo
echo "Command: \`bash bench/parts/40-dataplane.sh\` (part of \`make bench\`). CPU profiles of both sidecars during the HTTP and gRPC runs of the last round, and their allocations since they started (\`*.allocs.pprof\`): \`$pprof/\` (\`go tool pprof -top bin/isthmus $pprof/http-0qps-isthmus-ptest-a.pprof\`, \`go tool pprof -sample_index=alloc_space -top bin/isthmus $pprof/grpc-0qps-isthmus-ptest-a.allocs.pprof\`)."
# share prints a table of the profile's share by area.
share_table() {
  local top
  top=$(go tool pprof -top -cum -nodecount=500 "$1" 2>/dev/null)
  shift
  echo "| area | frame | share |"
  echo "|---|---|---|"
  for row in "$@"; do
    v=$(echo "$top" | awk -v f="${row#*|}" '$6 == f {print $5; exit}')
    echo "| ${row%%|*} | \`${row#*|}\` | ${v:-below the cut-off} |"
  done
}
prof=$pprof/http-0qps-isthmus-ptest-a.pprof
if [ -s "$prof" ]; then
  echo
  echo "### Where a sidecar's time goes (client sidecar, HTTP/1.1 at full speed)"
  echo
  echo "Share of the CPU profile by area, from \`go tool pprof -top -cum\` (a frame's share includes what it calls; areas overlap where one calls another):"
  echo
  share_table "$prof" "system calls (read, write)|syscall.RawSyscall6" \
    "TLS record layer, writing|crypto/tls.(*Conn).writeRecordLocked" \
    "TLS record layer, reading|crypto/tls.(*Conn).readRecordOrCCS" \
    "HTTP/1.1 heads, reading and parsing (h1head.go)|github.com/isthmus-mesh/isthmus/internal/proxy.readHeadInto" \
    "Istio's request metrics|github.com/isthmus-mesh/isthmus/internal/proxy/telemetry.(*Metrics).RequestOn" \
    "memory allocation|runtime.mallocgc" \
    "garbage collection (background mark)|runtime.gcBgMarkWorker" \
    "scheduler (finding work, parking)|runtime.findRunnable"
  echo
  echo "HTTP/1.1 runs in the proxy's own loop (internal/proxy/h1serve.go): one goroutine per downstream connection reads a head,"
  echo "parses it in place, writes it with the mesh's headers to a pooled upstream connection on the same goroutine and relays"
  echo "the answer. What is left is what nginx does too: the system calls and TLS. Before the loop (net/http's server and"
  echo "ReverseProxy; BENCHMARKS.md of 2026-12-01, commit bf9a36e) the same sidecars spent 0.20-0.26 CPU-s per 1000 requests and"
  echo "reached 0.40-0.42x nginx's rate. The row \"as TCP\" (the same HTTP relayed as bytes over mTLS) is the floor for any proxy in Go here."
fi
prof=$pprof/grpc-0qps-isthmus-ptest-a.pprof
if [ -s "$prof" ]; then
  echo
  echo "### Where a sidecar's time goes (client sidecar, gRPC at full speed)"
  echo
  share_table "$prof" "system calls (read, write)|syscall.RawSyscall6" \
    "TLS record layer, writing|crypto/tls.(*Conn).writeRecordLocked" \
    "HTTP/2 server (net/http): frames in|net/http.(*http2serverConn).readFrames" \
    "HTTP/2 server (net/http): serving a stream|net/http.(*http2serverConn).serve" \
    "handler: ReverseProxy|net/http/httputil.(*ReverseProxy).ServeHTTP" \
    "HTTP/2 client (net/http Transport): reading|net/http.(*http2clientConnReadLoop).run" \
    "HPACK: encoding the upstream request's headers|net/http/internal/httpcommon.EncodeHeaders" \
    "goroutine stacks growing (a goroutine per stream)|runtime.copystack" \
    "memory allocation|runtime.mallocgc" \
    "garbage collection (background mark)|runtime.gcBgMarkWorker" \
    "scheduler (finding work, parking)|runtime.findRunnable"
  echo
  echo "gRPC is HTTP/2 and still goes through net/http's HTTP/2 server, ReverseProxy and the HTTP/2 Transport: a goroutine per"
  echo "stream on each side, frames handed between the connection's reader, the stream and the writer over channels, and"
  echo "header maps built and copied; each request's new x-request-id also churns the upstream HPACK table. The system calls"
  echo "and TLS are about a quarter of the cost, as they were for HTTP/1.1 before its loop: an HTTP/2 path of the proxy's own"
  echo "(frames relayed between connections by their readers, no goroutine per stream) is the remaining lever for gRPC."
fi
