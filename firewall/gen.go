package firewall

// The BPF object and its Go bindings are generated from bpf/firewall.c and
// committed, so building sockgate needs no clang. Regenerate with
// `go generate ./...` (clang-19 and libbpf-dev installed); CI fails when the
// committed files differ from what this produces.
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type fw_config -type fw_counter -type fw_exact_key -type fw_exact4_key -type fw_prefix_key -type fw_match -type fw_port -type fw_rule -type fw_reason firewall ../bpf/firewall.c
