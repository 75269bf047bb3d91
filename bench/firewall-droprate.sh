#!/bin/sh
# firewall-droprate.sh - drop rate of sockgate's XDP firewall beside bare
# XDP_DROP, xdp-filter and an nftables netdev-ingress set, on veth pairs in
# namespaces of its own, in one run. Runs as root; arguments go to the Go
# program (see bench/firewall-droprate/main.go), e.g.
#
#   bench/firewall-droprate.sh -rules 1,1000,100000 -duration 1s -runs 7
set -eu
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
	echo "firewall-droprate.sh: run as root (it creates namespaces and attaches XDP programs)" >&2
	exit 1
fi
missing=""
for tool in ip ethtool nft xdp-filter nsenter; do
	command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [ -n "$missing" ]; then
	echo "firewall-droprate.sh: missing:$missing (apt-get install iproute2 ethtool nftables xdp-tools util-linux)" >&2
	exit 1
fi
bin=$(mktemp /tmp/firewall-droprate.XXXXXX)
trap 'rm -f "$bin"' EXIT
go build -o "$bin" ./bench/firewall-droprate
# Not exec: the trap removes the binary afterwards. The program cleans up
# its namespaces itself on SIGINT and SIGTERM.
"$bin" "$@"
