// SPDX-License-Identifier: GPL-2.0
/* sklookup.c: an sk_lookup program that steers connections by local port:
 * a port found in the port_to_slot LPM trie (reached through a map of
 * maps) names a slot of the socks sockmap, and the socket there is
 * assigned. Ports without a slot pass to the normal lookup; a slot without
 * a socket drops.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct port_key {
	__u32 prefixlen;
	__u32 port;	/* host order, as in bpf_sk_lookup.local_port */
};

struct inner {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16);
	__type(key, struct port_key);
	__type(value, __u32);
} port_to_slot SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct inner);
} outer SEC(".maps") = {
	.values = { [0] = &port_to_slot },
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s64);
} last_err SEC(".maps");

SEC("sk_lookup")
int steer(struct bpf_sk_lookup *ctx)
{
	__u32 zero = 0;
	void *trie = bpf_map_lookup_elem(&outer, &zero);

	if (!trie)
		return SK_PASS;
	struct port_key key = { .prefixlen = 32, .port = ctx->local_port };
	__u32 *slot = bpf_map_lookup_elem(trie, &key);
	if (!slot)
		return SK_PASS;
	struct bpf_sock *sk = bpf_map_lookup_elem(&socks, slot);
	if (!sk)
		return SK_DROP;
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	__s64 *e = bpf_map_lookup_elem(&last_err, &zero);
	if (e)
		*e = err;
	return err ? SK_DROP : SK_PASS;
}
