package httptrace

// The BPF object and its Go bindings are generated from bpf/httptrace.c and
// committed, so building sockgate needs no clang. Regenerate with
// `go generate ./httptrace/` (clang-19 and libbpf-dev installed).
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type ht_flow -type ht_session -type ht_counter -type ht_reason httptrace ../bpf/httptrace.c
