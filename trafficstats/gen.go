package trafficstats

// The BPF object and its Go bindings are generated from bpf/stats.c and
// committed, so building sockgate needs no clang. Regenerate with
// `go generate ./trafficstats/` (clang-19 and libbpf-dev installed).
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type ts_key -type ts_counter stats ../bpf/stats.c
