package dispatch

// The BPF object and its Go bindings are generated from bpf/dispatch.c and
// committed, so building sockgate needs no clang. Regenerate with
// `go generate ./dispatch/` (clang-19 and libbpf-dev installed).
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type dp_key -type dp_target -type dp_metrics -type dp_binding -type dp_binding_value -type dp_label -type dp_state dispatcher ../bpf/dispatch.c
