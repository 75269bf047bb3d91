#!/usr/bin/env bash
# guard-synflood.sh - sockgate guard vs an equivalent nftables `ct state`
# ruleset vs no filter, side by side in one run.
#
# Topology: two namespaces joined by a veth (198.18.0.1 flooder/client,
# 198.18.0.2 server). The server runs a TCP accept-and-close server on 8080
# (the legitimate service) and iperf3 on 5201. The three configurations:
#
#   none      no filter
#   guard     sockgate guard on the server's veth (tcx ingress), policy:
#             new connections from anywhere to tcp 8080 and 5201
#   nftables  inet filter input, policy drop: ct state established,related
#             accept; tcp dport {8080, 5201} ct state new accept
#
# For each it measures:
#   1. a SYN flood from random spoofed sources (hping3 --flood
#      --rand-source) to a closed port, then to the open port 8080 while a
#      legitimate client opens connections to 8080 one after another: the
#      per-flow state the filter holds afterwards (nf_conntrack_count for
#      nftables, entries in the guard's only growing map, guard_frags, for
#      the guard) and how many legitimate connections succeeded;
#   2. bulk TCP throughput with iperf3 (one stream, DURATION seconds).
#
# The spoofed sources never leave the veth: the server namespace has no
# default route, so its SYN-ACKs to them are dropped at routing.
#
# Needs root, iproute2, nftables, conntrack, hping3, iperf3, bpftool and Go.
# Usage: [ROUNDS=3] [SKIP_FLOOD=1] bench/guard-synflood.sh [FLOOD_SECONDS] [IPERF_SECONDS]
set -euo pipefail

FLOOD=${1:-10}
IPERF=${2:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/guard-synflood.XXXXXX)
GEN=sgbench-gg-$$
SRV=sgbench-gs-$$
VG=sgbgg$$
VS=sgbgs$$
PIDS=()

for tool in ip nft conntrack hping3 iperf3 bpftool go; do
	command -v "$tool" >/dev/null || { echo "guard-synflood: $tool is required" >&2; exit 1; }
done

cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	"$WORK/sockgate" --netns "/run/netns/$SRV" guard unload "$VS" >/dev/null 2>&1 || true
	ip netns del "$GEN" 2>/dev/null || true
	ip netns del "$SRV" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

(cd "$ROOT" && go build -o "$WORK/sockgate" ./cmd/sockgate && go build -o "$WORK/legit" ./bench/guard-legit)

ip netns add "$GEN"
ip netns add "$SRV"
ip link add "$VG" netns "$GEN" type veth peer name "$VS" netns "$SRV"
ip -n "$GEN" addr add 198.18.0.1/24 dev "$VG"
ip -n "$SRV" addr add 198.18.0.2/24 dev "$VS"
for ns in "$GEN" "$SRV"; do ip -n "$ns" link set lo up; done
ip -n "$GEN" link set "$VG" up
ip -n "$SRV" link set "$VS" up
ip netns exec "$SRV" sysctl -qw net.ipv4.tcp_syncookies=1
sleep 1

ip netns exec "$SRV" "$WORK/legit" serve 198.18.0.2:8080 &
PIDS+=($!)
ip netns exec "$SRV" iperf3 -s -B 198.18.0.2 >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.5

POLICY="$WORK/guard.yaml"
cat >"$POLICY" <<'EOF'
rules:
  - allow: 0.0.0.0/0
    proto: tcp
    port: 8080
  - allow: 0.0.0.0/0
    proto: tcp
    port: 5201
EOF

setup() {
	case $1 in
	none) ;;
	guard) "$WORK/sockgate" --netns "/run/netns/$SRV" guard load "$VS" -f "$POLICY" 2>/dev/null ;;
	nftables)
		ip netns exec "$SRV" nft -f - <<'EOF'
table inet sgbench {
	chain input {
		type filter hook input priority 0; policy drop;
		ct state established,related accept
		iif lo accept
		tcp dport { 8080, 5201 } ct state new accept
	}
}
EOF
		;;
	esac
}

teardown() {
	case $1 in
	guard) "$WORK/sockgate" --netns "/run/netns/$SRV" guard unload "$VS" ;;
	nftables) ip netns exec "$SRV" nft delete table inet sgbench ;;
	esac
	ip netns exec "$SRV" conntrack -F >/dev/null 2>&1 || true
}

# state prints the per-flow state the configuration holds now.
state() {
	case $1 in
	none) echo "-" ;;
	guard)
		local ino
		ino=$(stat -L -c %i "/run/netns/$SRV")
		bpftool map dump pinned "/sys/fs/bpf/sockgate/$ino/guard/$VS/frags" 2>/dev/null | grep -c '"key"\|^key' || true
		;;
	nftables) ip netns exec "$SRV" cat /proc/sys/net/netfilter/nf_conntrack_count ;;
	esac
}

# The conntrack table is shared by every namespace on the host: the flood
# stops early when nftables' entries reach 3/4 of nf_conntrack_max, so the
# bench never fills the table for everyone else.
CAP=$(($(cat /proc/sys/net/netfilter/nf_conntrack_max) * 3 / 4))

# flood PORT CFG: hping3 SYN flood from random sources for FLOOD seconds (or
# until the cap); prints the packets sent, and "capped@Ns" when it stopped
# at the cap.
flood() {
	ip netns exec "$GEN" hping3 -q -S --flood --rand-source -p "$1" 198.18.0.2 >/dev/null 2>"$WORK/hping.err" &
	local hp=$! start=$SECONDS note=""
	while [ $((SECONDS - start)) -lt "$FLOOD" ]; do
		sleep 0.2
		if [ "$2" = nftables ] && [ "$(state nftables)" -ge "$CAP" ]; then
			note=" capped@$((SECONDS - start))s"
			break
		fi
	done
	kill -INT "$hp" 2>/dev/null || true
	wait "$hp" 2>/dev/null || true
	echo "$(awk '/packets transmitted/ {print $1}' "$WORK/hping.err")$note"
}

if [ "${SKIP_FLOOD:-0}" = 0 ]; then
echo "## SYN flood (${FLOOD}s per phase, hping3 --flood --rand-source)"
echo "config,closed_flood_pkts,state_after_closed,open_flood_pkts,state_after_open,legit_ok,legit_median,legit_worst"
for cfg in none guard nftables; do
	setup "$cfg"
	closed=$(flood 9999 "$cfg")
	s1=$(state "$cfg")
	ip netns exec "$GEN" "$WORK/legit" probe 198.18.0.2:8080 $((FLOOD * 2)) 450ms >"$WORK/legit.out" &
	probe=$!
	open=$(flood 8080 "$cfg")
	s2=$(state "$cfg")
	wait "$probe"
	read -r ok med worst <"$WORK/legit.out"
	echo "$cfg,$closed,$s1,$open,$s2,$ok,$med,$worst"
	teardown "$cfg"
	sleep 1
done
fi

# Throughput: ROUNDS rounds, the three configurations interleaved in each,
# so load from elsewhere on the machine hits them alike; the median counts.
ROUNDS=${ROUNDS:-3}
echo
echo "## iperf3, one TCP stream, ${IPERF}s, $ROUNDS interleaved rounds (Gbit/s)"
declare -A runs
for r in $(seq "$ROUNDS"); do
	# rotate the order each round
	order=(none guard nftables)
	order=("${order[@]:$((r % 3))}" "${order[@]:0:$((r % 3))}")
	for cfg in "${order[@]}"; do
		setup "$cfg"
		gbps=$(ip netns exec "$GEN" iperf3 -c 198.18.0.2 -t "$IPERF" -f g 2>/dev/null |
			awk '/receiver/ {for (i = 1; i <= NF; i++) if ($i == "Gbits/sec") print $(i-1)}')
		runs[$cfg]="${runs[$cfg]:-} $gbps"
		if [ "$cfg" = guard ]; then
			# what the program ran on: skbs and bytes it passed as established
			"$WORK/sockgate" --netns "/run/netns/$SRV" -o json guard stats "$VS" |
				awk '/"reason": "established"/ {f = 1} f && /pass_packets/ {gsub(/[^0-9]/, ""); p = $0} f && /pass_bytes/ {gsub(/[^0-9]/, ""); print p, $0; exit}' >>"$WORK/skbs"
		fi
		teardown "$cfg"
	done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
base=$(echo "${runs[none]}" | median)
awk '{p += $1; b += $2} END {if (p) printf "guard ran on %d skbs of %.0f bytes on average (GSO/GRO aggregates), %.0f skbs/s\n", p, b / p, p / ('"$ROUNDS"' * '"$IPERF"')}' "$WORK/skbs"

# Each round's ratio to that round's unfiltered run, then the median of
# those: pairing within a round cancels load that drifts between rounds.
paired() {
	paste -d' ' <(echo "${runs[$1]}" | tr ' ' '\n' | grep .) <(echo "${runs[none]}" | tr ' ' '\n' | grep .) |
		awk '{printf "%.3f ", $1 / $2}'
}
echo "config,runs,median_gbps,ratio_of_medians,median_paired_ratio"
for cfg in none guard nftables; do
	m=$(echo "${runs[$cfg]}" | median)
	echo "$cfg,${runs[$cfg]# },$m,$(awk -v a="$m" -v b="$base" 'BEGIN {printf "%.3f", a / b}'),$(paired "$cfg" | median)"
done
