#!/usr/bin/env bash
# httptrace-bench.sh - sockgate trace http vs tcpdump piped into a parser,
# side by side in one run, on the same workload.
#
# Workload (bench/httptrace-load): REQUESTS HTTP GETs over CONNS keep-alive
# connections, while UDP_DATAGRAMS 64-byte datagrams cross the same veth:
# traffic an HTTP tracer must look at and ignore. It runs three times:
#
#   baseline  no tracer
#   sockgate  sockgate trace http (socket filter, drops non-HTTP in the kernel)
#   tcpdump   tcpdump -q -A with no filter expression (capture all) | grep -c
#             for request lines: the `tcpdump -A | grep GET` habit
#
# For each tracer it reports packets the kernel ran the tracer's filter on
# ("seen"), packets copied to userspace ("delivered"), requests found, and
# user+system CPU time of the tracer's processes (tcpdump and grep together)
# per traced request. The kernel side of both tracers (running the filter,
# copying kept packets into the socket) runs in softirq context, which on a
# veth is mostly charged to the sending task: so it also reports the load
# generator's own CPU time in each phase against the baseline, the best
# per-process view of that in-kernel cost (noisy on a busy machine).
#
# Needs root, iproute2, tcpdump, GNU time (/usr/bin/time) and Go. Creates
# two namespaces and a veth pair with 198.18.0.0/24 addresses and removes
# them on exit. Usage: bench/httptrace-bench.sh [REQUESTS] [UDP_DATAGRAMS]
set -euo pipefail

REQUESTS=${1:-20000}
UDP_DATAGRAMS=${2:-200000}
CONNS=${CONNS:-8}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mktemp -d /tmp/httptrace-bench.XXXXXX)
CLI=sgbench-htc-$$
SRV=sgbench-hts-$$
VC=sgbhc$$
VS=sgbhs$$

for tool in tcpdump ip /usr/bin/time go; do
	command -v "$tool" >/dev/null || { echo "httptrace-bench: $tool is required" >&2; exit 1; }
done

SERVER_PID=
cleanup() {
	[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
	ip netns del "$CLI" 2>/dev/null || true
	ip netns del "$SRV" 2>/dev/null || true
}
trap cleanup EXIT

echo "building into $OUT" >&2
(cd "$ROOT" && go build -o "$OUT/sockgate" ./cmd/sockgate && go build -o "$OUT/load" ./bench/httptrace-load)

ip netns add "$CLI"
ip netns add "$SRV"
ip -n "$CLI" link set lo up
ip -n "$SRV" link set lo up
ip -n "$CLI" link add "$VC" type veth peer name "$VS" netns "$SRV"
ip -n "$CLI" addr add 198.18.0.1/24 dev "$VC"
ip -n "$SRV" addr add 198.18.0.2/24 dev "$VS"
ip -n "$CLI" link set "$VC" up
ip -n "$SRV" link set "$VS" up
sleep 1

ip netns exec "$SRV" "$OUT/load" server -listen 198.18.0.2 &
SERVER_PID=$!
sleep 0.5

# workload NAME runs the client, saving its JSON result and its CPU time.
workload() {
	/usr/bin/time -f "%U %S" -o "$OUT/$1.load.time" ip netns exec "$CLI" "$OUT/load" client \
		-target 198.18.0.2 -requests "$REQUESTS" -conns "$CONNS" -udp "$UDP_DATAGRAMS" >"$OUT/$1.load.json"
}

# wait_idle PID waits until the process has used no CPU for a second (it has
# drained what was queued for it), at most 120 s.
wait_idle() {
	local last=-1 now i
	for ((i = 0; i < 240; i++)); do
		now=$(awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo gone)
		[ "$now" = gone ] && return
		if [ "$now" = "$last" ]; then
			return
		fi
		last=$now
		sleep 1
	done
}

# run_phase NAME: runs the workload once, with the tracer started by
# start_NAME (none for the baseline).
run_phase() {
	local name=$1
	if [ "$name" != baseline ]; then
		"start_$name"
		sleep 1 # attach
	fi
	workload "$name"
	if [ "$name" != baseline ]; then
		wait_idle "$(cat "$OUT/$name.pid")"
		kill -INT "$(cat "$OUT/$name.pid")"
		wait "$TRACER_PID" || true
	fi
}

start_sockgate() {
	/usr/bin/time -f "%U %S" -o "$OUT/sockgate.time" sh -c \
		"echo \$\$ > '$OUT/sockgate.pid'; exec '$OUT/sockgate' --netns /run/netns/$SRV -o json trace http $VS --no-responses" \
		>"$OUT/sockgate.jsonl" 2>"$OUT/sockgate.err" &
	TRACER_PID=$!
}

start_tcpdump() {
	/usr/bin/time -f "%U %S" -o "$OUT/tcpdump.time" sh -c \
		"{ sh -c \"echo \\\$\\\$ > '$OUT/tcpdump.pid'; exec ip netns exec $SRV tcpdump -i $VS -q -nn -l -A -s 0 -B 16384\" 2>'$OUT/tcpdump.err'; } \
		| grep -a -c -E '(GET|POST|PUT|DELETE|HEAD|PATCH|OPTIONS|CONNECT) [^ ]+ HTTP/1\.[01]' >'$OUT/tcpdump.count' || true" &
	TRACER_PID=$!
}

run_phase baseline
run_phase sockgate
run_phase tcpdump

cpu_seconds() { awk '{printf "%.2f", $1+$2}' "$1"; }
json_field() { sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" "$1"; }

base_load=$(cpu_seconds "$OUT/baseline.load.time")

# sockgate: "N packets seen by the filter, M passed to userspace"
sg_seen=$(sed -n 's/^trace http: \([0-9]*\) packets seen by the filter, \([0-9]*\) passed.*/\1/p' "$OUT/sockgate.err")
sg_kept=$(sed -n 's/^trace http: \([0-9]*\) packets seen by the filter, \([0-9]*\) passed.*/\2/p' "$OUT/sockgate.err")
sg_reqs=$(wc -l <"$OUT/sockgate.jsonl")
sg_cpu=$(cpu_seconds "$OUT/sockgate.time")
sg_load=$(cpu_seconds "$OUT/sockgate.load.time")

td_seen=$(sed -n 's/^\([0-9]*\) packets received by filter.*/\1/p' "$OUT/tcpdump.err")
td_kept=$(sed -n 's/^\([0-9]*\) packets captured.*/\1/p' "$OUT/tcpdump.err")
td_drop=$(sed -n 's/^\([0-9]*\) packets dropped by kernel.*/\1/p' "$OUT/tcpdump.err")
td_reqs=$(cat "$OUT/tcpdump.count")
td_cpu=$(cpu_seconds "$OUT/tcpdump.time")
td_load=$(cpu_seconds "$OUT/tcpdump.load.time")

per_req() { awk -v c="$1" -v n="$2" 'BEGIN { if (n > 0) printf "%.1f", c * 1e6 / n; else print "n/a" }'; }
extra() { awk -v b="$1" -v z="$base_load" 'BEGIN { printf "%.2f s (%+.2f)", b, b - z }'; }

cat <<EOF

## httptrace run $(date -u +%Y-%m-%dT%H:%MZ) on $(uname -r), $(nproc) CPUs
workload: $REQUESTS HTTP requests over $CONNS connections + $UDP_DATAGRAMS UDP datagrams (64 B) on one veth
baseline (no tracer): load generator CPU ${base_load} s, $(cat "$OUT/baseline.load.json")

| tracer | packets seen | delivered to userspace | delivered/seen | requests traced (of $REQUESTS) | tracer CPU (user+sys) | tracer CPU per traced request | load generator CPU (vs baseline) |
|---|---|---|---|---|---|---|---|
| sockgate trace http | $sg_seen | $sg_kept | $(awk -v a="$sg_kept" -v b="$sg_seen" 'BEGIN{printf "%.3f", a/b}') | $sg_reqs | ${sg_cpu} s | $(per_req "$sg_cpu" "$sg_reqs") µs | $(extra "$sg_load") |
| tcpdump -q -A (capture all) \| grep -c | $td_seen | $td_kept (+$td_drop dropped by the kernel: buffer full) | $(awk -v a="$td_kept" -v b="$td_seen" 'BEGIN{printf "%.3f", a/b}') | $td_reqs | ${td_cpu} s | $(per_req "$td_cpu" "$td_reqs") µs | $(extra "$td_load") |

raw files: $OUT
EOF
