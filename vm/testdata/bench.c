// SPDX-License-Identifier: GPL-2.0
/* bench.c: the vm's benchmark programs, run by the vm and by the kernel
 * (BPF_PROG_TEST_RUN) side by side. Loops go through bpf_loop so the
 * kernel's verifier accepts them regardless of trip count.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct primes_ctx {
	__u64 n;
	__u64 count;
};

static long is_prime_step(__u64 d, struct primes_ctx *c)
{
	if (d < 2)
		return 0;
	if (d * d > c->n)
		return 1;
	/* one 64-bit division per step */
	if (c->n % d == 0) {
		c->count--;
		return 1;
	}
	return 0;
}

static long primes_step(__u64 i, struct primes_ctx *c)
{
	if (i < 2)
		return 0;
	c->n = i;
	c->count++;
	bpf_loop(i, is_prime_step, c, 0);
	return 0;
}

/* primes counts the primes below 10,000 by trial division. */
SEC("xdp")
int primes(struct xdp_md *ctx)
{
	struct primes_ctx c = {};

	bpf_loop(10000, primes_step, &c, 0);
	return c.count;
}

#define CHUNK 4096

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u8[1 << 20]);
} bufs SEC(".maps");

struct copy_ctx {
	__u8 *src;
	__u8 *dst;
};

static long copy_chunk(__u64 i, struct copy_ctx *c)
{
	__u64 base = i * CHUNK;

	if (base > (1 << 20) - CHUNK)
		return 1;
	for (int j = 0; j < CHUNK; j++)
		c->dst[base + j] = c->src[base + j];
	return 0;
}

/* copy copies 1 MiB byte by byte between two map values. */
SEC("xdp")
int copy(struct xdp_md *ctx)
{
	__u32 k0 = 0, k1 = 1;
	struct copy_ctx c;

	c.src = bpf_map_lookup_elem(&bufs, &k0);
	c.dst = bpf_map_lookup_elem(&bufs, &k1);
	if (!c.src || !c.dst)
		return 0;
	bpf_loop((1 << 20) / CHUNK, copy_chunk, &c, 0);
	return c.dst[12345];
}
