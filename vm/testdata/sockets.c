// SPDX-License-Identifier: GPL-2.0
/* sockets.c: looks up the socket a packet belongs to with
 * bpf_sk_lookup_tcp, bpf_skc_lookup_tcp and bpf_sk_lookup_udp, records what
 * each found in the results array and releases every reference. Run in
 * the kernel and in the vm against the same sockets, the results must
 * match.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

struct result {
	__u32 found;
	__u32 state;
	__u32 family;
	__u32 src_port;
	__u32 dst_port;
	__u32 src_ip4;
	__u32 dst_ip4;
	__u32 src_ip6[4];
	__u32 dst_ip6[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, struct result);
} results SEC(".maps");

static __always_inline void record(__u32 slot, struct bpf_sock *sk)
{
	struct result *r = bpf_map_lookup_elem(&results, &slot);

	if (!r)
		return;
	__builtin_memset(r, 0, sizeof(*r));
	if (!sk)
		return;
	r->found = 1;
	r->state = sk->state;
	r->family = sk->family;
	r->src_port = sk->src_port;
	r->dst_port = sk->dst_port;
	/* unconditional reads at constant offsets: the verifier forbids
	 * pointer arithmetic on socket pointers */
	r->src_ip4 = sk->src_ip4;
	r->dst_ip4 = sk->dst_ip4;
	__u32 s6 = sk->src_ip6[3], d6 = sk->dst_ip6[3];
	/* The IPv6 fields of IPv4 TIME_WAIT and request sockets are not
	 * initialised by the kernel: do not record them. */
	if (sk->family == 2 && (sk->state == 6 || sk->state == 12))
		s6 = d6 = 0;
	r->src_ip6[3] = s6;
	r->dst_ip6[3] = d6;
}

SEC("tc")
int sk_lookups(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct bpf_sock_tuple t = {};
	__u32 tsize;
	__u8 proto;
	void *l4;

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end || ip->ihl != 5)
			return TC_ACT_OK;
		t.ipv4.saddr = ip->saddr;
		t.ipv4.daddr = ip->daddr;
		proto = ip->protocol;
		l4 = ip + 1;
		tsize = sizeof(t.ipv4);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return TC_ACT_OK;
		__builtin_memcpy(t.ipv6.saddr, &ip6->saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, &ip6->daddr, 16);
		proto = ip6->nexthdr;
		l4 = ip6 + 1;
		tsize = sizeof(t.ipv6);
	} else {
		return TC_ACT_OK;
	}
	/* source and destination ports sit at the same offsets in TCP and UDP */
	struct udphdr *ports = l4;
	if ((void *)(ports + 1) > data_end)
		return TC_ACT_OK;
	if (tsize == sizeof(t.ipv4)) {
		t.ipv4.sport = ports->source;
		t.ipv4.dport = ports->dest;
	} else {
		t.ipv6.sport = ports->source;
		t.ipv6.dport = ports->dest;
	}

	int found = 0;
	struct bpf_sock *sk;
	if (proto == IPPROTO_TCP) {
		sk = bpf_sk_lookup_tcp(skb, &t, tsize, BPF_F_CURRENT_NETNS, 0);
		record(0, sk);
		if (sk) {
			found |= 1;
			bpf_sk_release(sk);
		}
		sk = bpf_skc_lookup_tcp(skb, &t, tsize, BPF_F_CURRENT_NETNS, 0);
		record(1, sk);
		if (sk) {
			found |= 2;
			bpf_sk_release(sk);
		}
	} else if (proto == IPPROTO_UDP) {
		sk = bpf_sk_lookup_udp(skb, &t, tsize, BPF_F_CURRENT_NETNS, 0);
		record(2, sk);
		if (sk) {
			found |= 4;
			bpf_sk_release(sk);
		}
	}
	return found;
}
