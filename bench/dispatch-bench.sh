#!/usr/bin/env bash
# dispatch-bench.sh - sockgate's socket dispatcher against the listening
# sockets it replaces, side by side in one run, plus the program's cost per
# lookup as the binding set grows.
#
#  1. bench/dispatch-bench (Go): for every port (1-65535) of one address,
#     one socket through the dispatcher vs 65,535 listening sockets; for one
#     /24 on port 80, one socket through the dispatcher vs 256 bound
#     sockets. Set-up time, kernel memory growth (Slab+Percpu in
#     /proc/meminfo; global, so noisy on a busy machine), the dispatcher's
#     BPF map memlock, and connect() latency p50/p99 over CONNECTS
#     connections per contender, taking turns between contenders in short
#     batches from one client thread pinned to CPU 0 (services on the other
#     CPUs), against a single plain listener as the direct baseline and a
#     second copy of it as an A/A control; then each sk_lookup program's
#     run time per lookup in real connects (the kernel's bpf_stats). Run
#     twice: connections over loopback (the cheapest connect there is, so
#     the dispatcher's cost shows largest) and over a veth pair from a
#     client namespace of each contender's own (arriving on an interface,
#     as a service's connections do).
#  2. go test -bench BenchmarkLookup ./dispatch/: ns per lookup through
#     BPF_PROG_TEST_RUN (the kernel's own timing) with 10, 10k and 100k
#     bindings, for a lookup that hits a /32 and one that misses the /32s
#     and hits a /24.
#
# Needs root, iproute2, bpftool and Go. Creates namespaces named sgbd-* (and
# the test's own) and removes them on exit.
# Usage: bench/dispatch-bench.sh [CONNECTS]
set -euo pipefail

CONNECTS=${1:-20000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(mktemp -d /tmp/dispatch-bench.XXXXXX)
trap 'rm -rf "$BIN"; for n in $(ip netns list | awk "/^sgbd-/ {print \$1}"); do ip netns del "$n"; done' EXIT

for tool in ip bpftool go; do
	command -v "$tool" >/dev/null || { echo "dispatch-bench: $tool is required" >&2; exit 1; }
done

cd "$ROOT"
go build -o "$BIN/dispatch-bench" ./bench/dispatch-bench
echo "## sockets vs dispatcher ($(uname -r), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg))"
for path in lo veth; do
	"$BIN/dispatch-bench" -connects "$CONNECTS" -path "$path"
done

echo
echo "## ns/lookup (BPF_PROG_TEST_RUN)"
for target in exact prefix; do
	echo "### lookup target: $target"
	go test -count=1 -run '^$' -bench BenchmarkLookup -benchtime 200x ./dispatch/ -args -dispatch.target=$target |
		grep -E '^Benchmark'
done
