// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * stats.c - sockgate's traffic counters: packets and bytes per L3 protocol
 * (EtherType) and L4 protocol, per direction, counted at XDP or at TC (tcx).
 *
 * This is the protocol-counter example of Bertrone 2015 ("maintain a
 * statistic on different traffic type (TCP, UDP, ICMP...)") done properly:
 * the frame goes through the shared bounded parser (VLAN tags, IPv4
 * options, IPv6 extension headers, fragments) instead of a load at a fixed
 * offset that assumes Ethernet + IPv4 without options, the counters are
 * per-CPU so the hot path takes no atomic operation, and they count bytes
 * as well as packets. Every program passes every packet on unchanged.
 *
 * ts_counters is a per-CPU hash keyed by (EtherType, IP protocol,
 * direction, flags). A hostile sender can cycle EtherTypes to create many
 * keys; when the map is full, packets of new keys are counted in
 * ts_overflow instead of being lost silently.
 */
#include "include/parse.h"

/* Bits of ts_key.flags. */
#define TS_EGRESS	(1 << 0)	/* counted on the way out (tc egress) */
#define TS_MALFORMED	(1 << 1)	/* claims IP or VLAN but doesn't parse */
#define TS_FRAGMENT	(1 << 2)	/* non-first fragment: no L4 header */

#define TCX_NEXT	-1

struct ts_key {
	__u16 eth_proto;	/* host order, after VLAN tags */
	__u8 l4_proto;		/* IPPROTO_*, 0 for non-IP */
	__u8 flags;		/* TS_* */
};

struct ts_counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct ts_key);
	__type(value, struct ts_counter);
} ts_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ts_counter);
} ts_overflow SEC(".maps");

static __always_inline void account(void *data, void *data_end, __u32 len,
				    __u8 dir_flag)
{
	struct packet pkt = {};
	struct ts_key key = {};
	struct ts_counter *c, fresh;
	__u32 zero = 0;
	int ret;

	ret = parse_packet(data, data_end, &pkt);
	key.eth_proto = pkt.eth_proto;
	key.flags = dir_flag;
	if (ret == PARSE_MALFORMED)
		key.flags |= TS_MALFORMED;
	if (ret != PARSE_NON_IP)
		key.l4_proto = pkt.l4_proto;
	if (pkt.flags & PKT_NONFIRST)
		key.flags |= TS_FRAGMENT;

	c = bpf_map_lookup_elem(&ts_counters, &key);
	if (c) {
		/* Per-CPU value: no other CPU writes this copy. */
		c->packets++;
		c->bytes += len;
		return;
	}
	fresh.packets = 1;
	fresh.bytes = len;
	/* NOEXIST: a concurrent insert on another CPU wins, and this
	 * packet is retried as an update. */
	if (bpf_map_update_elem(&ts_counters, &key, &fresh, BPF_NOEXIST) == 0)
		return;
	c = bpf_map_lookup_elem(&ts_counters, &key);
	if (!c)
		c = bpf_map_lookup_elem(&ts_overflow, &zero);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

SEC("xdp")
int stats_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	account(data, data_end, data_end - data, 0);
	return XDP_PASS;
}

/*
 * Headers may sit partly outside the linear part of an skb; pull the first
 * bytes in (as many as the deepest header chain the parser walks could
 * need) so a well-formed packet is never counted as malformed.
 */
#define TS_PULL_LEN 256

static __always_inline void account_skb(struct __sk_buff *skb, __u8 dir_flag)
{
	__u32 want = skb->len < TS_PULL_LEN ? skb->len : TS_PULL_LEN;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (data + want > data_end) {
		bpf_skb_pull_data(skb, want);
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	account(data, data_end, skb->len, dir_flag);
}

SEC("tc")
int stats_tc_ingress(struct __sk_buff *skb)
{
	account_skb(skb, 0);
	return TCX_NEXT;
}

SEC("tc")
int stats_tc_egress(struct __sk_buff *skb)
{
	account_skb(skb, TS_EGRESS);
	return TCX_NEXT;
}

char _license[] SEC("license") = "Dual BSD/GPL";
