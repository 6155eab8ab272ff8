#!/usr/bin/env bash
# make bench: runs every benchmark part in bench/ and writes BENCHMARKS.md.
# Each part prints a Markdown section on stdout; this script adds the header.
# What follows the marker line below in the old BENCHMARKS.md (the sessions'
# written accounts of what they tried and measured) is kept, after the run's.
set -euo pipefail
cd "$(dirname "$0")/.."
out=BENCHMARKS.md
marker='<!-- make bench keeps what follows: the written accounts of earlier runs -->'
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
{
  echo "# isthmus benchmarks"
  echo
  echo "Written by \`make bench\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
  echo "Machine: $(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r), $(go version | cut -d' ' -f3)."
  echo "This machine is shared and noisy: compare ratios within one run, not absolute numbers across runs."
  echo
  for part in bench/parts/*.sh; do
    bash "$part"
    echo
  done
  if [ -f "$out" ] && grep -qxF "$marker" "$out"; then
    sed -n "/^$marker\$/,\$p" "$out"
  fi
} > "$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "wrote $out"
