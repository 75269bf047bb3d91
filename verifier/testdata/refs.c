// SPDX-License-Identifier: GPL-2.0
/*
 * refs.c - test object for the userspace verifier and `sockgate verify`:
 * one tc program that releases its socket reference on every path and one
 * that leaks it on one path. Rebuild with
 *   clang-19 -O2 -g -target bpf -I/usr/include/x86_64-linux-gnu -c refs.c -o refs.o
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

static __always_inline struct bpf_sock *lookup(struct __sk_buff *skb)
{
	struct bpf_sock_tuple t = {};

	return bpf_sk_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
}

SEC("tc")
int good(struct __sk_buff *skb)
{
	struct bpf_sock *sk = lookup(skb);
	int verdict = TC_ACT_OK;

	if (!sk)
		return TC_ACT_OK;
	if (sk->state == 10)	/* TCP_LISTEN */
		verdict = TC_ACT_SHOT;
	bpf_sk_release(sk);
	return verdict;
}

SEC("tc")
int leak(struct __sk_buff *skb)
{
	struct bpf_sock *sk = lookup(skb);

	if (!sk)
		return TC_ACT_OK;
	if (skb->mark == 1)
		return TC_ACT_SHOT;	/* leaks sk */
	bpf_sk_release(sk);
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
