package guard

// The BPF object and its Go bindings are generated from bpf/guard.c and
// committed, so building sockgate needs no clang. Regenerate with
// `go generate ./guard/` (clang-19 and libbpf-dev installed).
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type guard_config -type guard_counter -type guard_policy_key -type guard_rule -type guard_frag_key -type guard_frag_verdict -type guard_event -type guard_bucket -type guard_reason guard ../bpf/guard.c
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel guardleak ../bpf/guard_leak.c
