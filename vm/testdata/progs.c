// SPDX-License-Identifier: GPL-2.0
/* progs.c: test programs for the vm's differential tests against the
 * kernel. Each program exercises a part of the engine (maps, global data,
 * bpf-to-bpf calls, tail calls, packet helpers, checksums, LD_ABS) and is
 * run on the same inputs through BPF_PROG_TEST_RUN and the vm; return
 * values, output packets and map contents must match.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} by_proto SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} bytes_pc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} by_src SEC(".maps");

struct lpm_key {
	__u32 prefixlen;
	__u32 addr;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16);
	__type(key, struct lpm_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} deny SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u32);
} jumps SEC(".maps");

const volatile __u16 blocked_port = 9;
__u64 seen;
__u32 last_len = 7;

/* parse returns the IPv4 header or NULL; every bound is checked here. */
static __noinline struct iphdr *parse(void *data, void *data_end)
{
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return 0;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return 0;
	if (ip->ihl != 5)
		return 0;
	return ip;
}

static __noinline __u32 count(__u32 proto, __u32 len)
{
	__u64 one = 1, *v;

	v = bpf_map_lookup_elem(&by_proto, &proto);
	if (v)
		__sync_fetch_and_add(v, 1);
	else
		bpf_map_update_elem(&by_proto, &proto, &one, BPF_NOEXIST);
	__u32 k = proto == IPPROTO_UDP;
	__u64 *b = bpf_map_lookup_elem(&bytes_pc, &k);
	if (b)
		*b += len;
	return 0;
}

SEC("xdp")
int xdp_tail(struct xdp_md *ctx)
{
	/* reached by tail call: pop 14 bytes of head and pass */
	if (bpf_xdp_adjust_head(ctx, 14))
		return XDP_ABORTED;
	return XDP_PASS;
}

SEC("xdp")
int xdp_main(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = parse(data, data_end);

	seen++;
	last_len = data_end - data;
	if (!ip)
		return XDP_PASS;
	count(ip->protocol, data_end - data);

	struct lpm_key key = { .prefixlen = 32, .addr = ip->saddr };
	if (bpf_map_lookup_elem(&deny, &key))
		return XDP_DROP;

	__u32 src = ip->saddr, *n = bpf_map_lookup_elem(&by_src, &src);
	if (n) {
		*n += 1;
	} else {
		__u32 init = 1;
		bpf_map_update_elem(&by_src, &src, &init, BPF_ANY);
	}

	if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > data_end)
			return XDP_DROP;
		if (udp->dest == bpf_htons(blocked_port))
			return XDP_DROP;
		if (udp->dest == bpf_htons(7)) {
			/* echo: swap MACs and send back */
			struct ethhdr *eth = data;
			unsigned char tmp[ETH_ALEN];
			__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
			__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
			__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
			return XDP_TX;
		}
		if (udp->dest == bpf_htons(4000)) {
			bpf_tail_call(ctx, &jumps, 0);
			return XDP_ABORTED;
		}
		if (udp->dest == bpf_htons(4002)) {
			/* grow the tail (the new bytes are zero); 4000 bytes
			 * more does not fit the frame */
			if (bpf_xdp_adjust_tail(ctx, 16))
				return XDP_ABORTED;
			if (bpf_xdp_adjust_tail(ctx, 4000) == 0)
				return XDP_ABORTED;
			return XDP_PASS;
		}
		if (udp->dest == bpf_htons(4003))
			return bpf_redirect(7, 0);
		if (udp->dest == bpf_htons(4001)) {
			if (bpf_xdp_adjust_tail(ctx, -4))
				return XDP_ABORTED;
			return XDP_PASS;
		}
	}
	return XDP_PASS;
}

/* tc_rewrite: decrement TTL and rewrite UDP port 53 to 5353, fixing both
 * checksums with the csum helpers. */
SEC("tc")
int tc_rewrite(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = parse(data, data_end);

	if (!ip)
		return TC_ACT_OK;
	count(ip->protocol, skb->len);
	__u8 ttl = ip->ttl;
	if (ttl <= 1)
		return TC_ACT_SHOT;
	__u16 old = bpf_htons((__u16)ttl << 8), new = bpf_htons((__u16)(ttl - 1) << 8);
	__u8 nttl = ttl - 1;
	bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old, new, 2);
	bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct iphdr, ttl), &nttl, 1, 0);
	__u8 proto;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, protocol), &proto, 1))
		return TC_ACT_SHOT;
	if (proto == IPPROTO_UDP) {
		__be16 dport;
		int off = ETH_HLEN + sizeof(struct iphdr) + offsetof(struct udphdr, dest);
		if (bpf_skb_load_bytes(skb, off, &dport, 2))
			return TC_ACT_SHOT;
		if (dport == bpf_htons(53)) {
			__be16 np = bpf_htons(5353);
			bpf_l4_csum_replace(skb, ETH_HLEN + sizeof(struct iphdr) + offsetof(struct udphdr, check),
					    dport, np, BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | 2);
			bpf_skb_store_bytes(skb, off, &np, 2, 0);
		}
	}
	skb->mark = 0x42;
	return TC_ACT_OK;
}

unsigned long long load_byte(void *skb, unsigned long long off) asm("llvm.bpf.load.byte");
unsigned long long load_half(void *skb, unsigned long long off) asm("llvm.bpf.load.half");
unsigned long long load_word(void *skb, unsigned long long off) asm("llvm.bpf.load.word");

/* sock_filter: classic-style filter with LD_ABS; the skb starts at the
 * network header. Accepts UDP to port 53 (whole packet), truncates TCP to
 * 40 bytes if it is at least 204 bytes long (a LD_ABS past the end ends
 * the program with 0), drops everything else. */
SEC("socket")
int sock_filter(struct __sk_buff *skb)
{
	if (load_byte(skb, 0) >> 4 != 4)
		return 0;
	__u32 proto = load_byte(skb, offsetof(struct iphdr, protocol));
	count(proto, skb->len);
	/* the UDP port through LD_IND: the offset is in a register */
	__u32 ihl = (load_byte(skb, 0) & 0xf) * 4;
	if (proto == IPPROTO_UDP && load_half(skb, ihl + 2) == 53)
		return skb->len;
	if (proto == IPPROTO_TCP)
		return 40 + (load_word(skb, 200) & 0);
	return 0;
}

/* xdp_meta: reserve 8 bytes of metadata, store the packet length there,
 * and return the metadata length read back through data_meta. */
SEC("xdp")
int xdp_meta(struct xdp_md *ctx)
{
	if (bpf_xdp_adjust_meta(ctx, -8))
		return XDP_ABORTED;
	void *data = (void *)(long)ctx->data;
	void *meta = (void *)(long)ctx->data_meta;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 *m = meta;
	if ((void *)(m + 2) > data)
		return XDP_ABORTED;
	m[0] = data_end - data;
	m[1] = 0xfeedf00d;
	if (m[0] < 20)
		return XDP_DROP;
	return XDP_PASS + (data - meta == 8 ? 0 : 10);
}

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} events SEC(".maps");

struct event {
	__u32 len;
	__u32 kind;
};

/* xdp_events: one ring buffer record per packet: reserved and submitted
 * for UDP, reserved and discarded for TCP, copied with ringbuf_output
 * otherwise; and a trace_printk line. */
SEC("xdp")
int xdp_events(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = parse(data, data_end);
	__u32 len = data_end - data;

	bpf_printk("len %u proto %d", len, ip ? ip->protocol : -1);
	if (ip && ip->protocol == IPPROTO_UDP) {
		struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (!e)
			return XDP_ABORTED;
		e->len = len;
		e->kind = 1;
		bpf_ringbuf_submit(e, 0);
		return XDP_PASS;
	}
	if (ip && ip->protocol == IPPROTO_TCP) {
		struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (!e)
			return XDP_ABORTED;
		bpf_ringbuf_discard(e, 0);
		return XDP_DROP;
	}
	struct event ev = { .len = len, .kind = 3 };
	if (bpf_ringbuf_output(&events, &ev, sizeof(ev), 0))
		return XDP_ABORTED;
	return XDP_TX;
}

/* xdp_clock: the whole seconds of bpf_ktime_get_ns, modulo 256. */
SEC("xdp")
int xdp_clock(struct xdp_md *ctx)
{
	return (bpf_ktime_get_ns() / 1000000000) & 0xff;
}
