#!/bin/sh
# Prepares a Debian machine that has only Go for `make demo` and `make test`:
# installs make, git and the C toolchain `go test -race` needs (gcc, libc
# headers), if missing. Everything else `make deps` and `make kube` install.
# Run as root: sh bootstrap.sh
set -eu
missing=""
for p in make git gcc libc6-dev; do
	dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "installing:$missing"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
fi
PATH="$PATH:/usr/local/go/bin"
if ! command -v go >/dev/null 2>&1; then
	echo "Go is not on PATH (nor in /usr/local/go/bin): install Go 1.26 from https://go.dev/dl/ first" >&2
	exit 1
fi
go version
echo "ready: make demo, make test"
