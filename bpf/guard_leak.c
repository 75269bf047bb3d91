// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * guard_leak.c - a deliberately broken variant of the guard's TCP lookup
 * that forgets bpf_sk_release on the listener path. It exists so a test
 * can show the kernel verifier rejecting a leaked socket reference
 * ("Unreleased reference"); sockgate never loads it otherwise.
 */
#include "include/parse.h"
#include <linux/pkt_cls.h>

SEC("tc")
int sockgate_guard_leak(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct bpf_sock_tuple t = {};
	struct packet pkt = {};
	struct bpf_sock *sk;

	if (parse_packet(data, data_end, &pkt) != PARSE_IP ||
	    pkt.family != PKT_AF_INET || pkt.l4_proto != IPPROTO_TCP ||
	    !(pkt.flags & PKT_HAS_L4))
		return TC_ACT_UNSPEC;
	__builtin_memcpy(&t.ipv4.saddr, pkt.src, 4);
	__builtin_memcpy(&t.ipv4.daddr, pkt.dst, 4);
	t.ipv4.sport = bpf_htons(pkt.sport);
	t.ipv4.dport = bpf_htons(pkt.dport);
	sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return TC_ACT_SHOT;
	if (sk->state == 10)	/* TCP_LISTEN: the reference leaks here */
		return TC_ACT_UNSPEC;
	bpf_sk_release(sk);
	return TC_ACT_UNSPEC;
}

char _license[] SEC("license") = "Dual BSD/GPL";
