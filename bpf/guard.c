// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * guard.c - sockgate's socket-aware stateful firewall (Stringer, LPC 2018).
 *
 * The kernel's own socket table is the connection tracker: a packet that a
 * local socket already knows (established, half-open, TIME_WAIT, a connected
 * UDP socket whose peer matches) passes; a packet that only a listener or an
 * unconnected UDP socket would take is a new connection and goes to the
 * policy; a packet that no socket would take is dropped before the stack can
 * answer it. The guard keeps no per-flow state of its own, so there is no
 * table to size, fill or clean up; the only map that grows with traffic is
 * a small LRU of first-fragment verdicts for the non-first fragments that
 * carry no ports.
 *
 * One decision function serves three hooks: TC ingress (tcx or clsact),
 * TC egress and XDP. Every socket reference is taken and released inside
 * one small function, so the verifier sees each lookup balanced by a
 * bpf_sk_release on every path.
 *
 * Policy: remote CIDR x protocol x local port range x allow|deny, deny
 * first, new connections denied when nothing matches. The control plane
 * compiles the rules into two lookups that don't scan: guard_ports maps
 * (generation, direction, protocol, port) to a port class, and the LPM trie
 * guard_policy maps (generation, class, remote address) to the union of
 * the allow and deny bits of every rule that covers it. A rule change builds
 * the other generation and flips guard_settings.gen, so a packet sees the
 * old policy or the new one, never a mix.
 */
#include "include/parse.h"
#include <linux/pkt_cls.h>

/* ICMP types (linux/icmp.h pulls in libc headers a BPF target can't use). */
#define ICMP_ECHOREPLY		0
#define ICMP_DEST_UNREACH	3
#define ICMP_ECHO		8
#define ICMP_TIME_EXCEEDED	11
#define ICMP_PARAMETERPROB	12
#define ICMPV6_DEST_UNREACH	1
#define ICMPV6_PKT_TOOBIG	2
#define ICMPV6_TIME_EXCEED	3
#define ICMPV6_PARAMPROB	4
#define ICMPV6_ECHO_REQUEST	128
#define ICMPV6_ECHO_REPLY	129

#define GUARD_MODE_ENFORCE	0
#define GUARD_MODE_AUDIT	1

/* Bits of guard_config.flags. */
#define GUARD_F_NO_SOCKET_PASS	(1 << 0)	/* hand no-socket packets to the stack */
#define GUARD_F_LOG_NEW		(1 << 1)	/* emit events for allowed new connections */

/* Directions, the second index of guard_ports. */
#define GUARD_DIR_INGRESS	0
#define GUARD_DIR_EGRESS	1

/* Protocols, the third index of guard_ports. */
#define GUARD_PROTO_TCP		0
#define GUARD_PROTO_UDP		1
#define GUARD_PROTO_ICMP	2
#define GUARD_PROTOS		3

#define GUARD_PORT_SLOTS	(2 * 2 * GUARD_PROTOS * 65536)

/* Bits of a policy value. */
#define GUARD_POLICY_ALLOW	(1 << 0)
#define GUARD_POLICY_DENY	(1 << 1)

#define GUARD_MAX_RULES		4096

/* TCP states of struct bpf_sock.state (include/net/tcp_states.h). */
#define TCP_STATE_LISTEN	10
#define TCP_STATE_NEW_SYN_RECV	12

#define TCPF_FIN	0x01
#define TCPF_SYN	0x02
#define TCPF_RST	0x04
#define TCPF_ACK	0x10

/* Why a packet got its verdict: the index of guard_counters and the reason
 * of an event. */
enum guard_reason {
	GUARD_ESTABLISHED = 0,	/* a local socket knows the flow: pass */
	GUARD_NEW_ALLOWED,	/* new connection the policy allows: pass */
	GUARD_NEW_DENIED,	/* new connection the policy denies: drop */
	GUARD_NO_SOCKET,	/* no socket would take it: drop (or pass) */
	GUARD_ICMP_RELATED,	/* ICMP error quoting a local socket's packet: pass */
	GUARD_ICMP_UNRELATED,	/* ICMP error quoting nothing local: drop */
	GUARD_FRAGMENT,		/* non-first fragment: its first fragment's verdict */
	GUARD_NON_IP,		/* ARP and other non-IP traffic: pass */
	GUARD_MALFORMED,	/* truncated or invalid headers: drop */
	GUARD_CONTROL,		/* ND, MLD, DHCP, echo replies: pass */
	GUARD_LOCAL,		/* egress: sent by a local socket or the stack: pass */
	GUARD_REASON_MAX,
};

/* Verdicts of an event. */
#define GUARD_VERDICT_PASS	0
#define GUARD_VERDICT_DROP	1
#define GUARD_VERDICT_AUDIT	2	/* would have dropped; audit mode passed it */

/* What the program reads on every packet. gen selects the live policy
 * generation; netns is the helpers' netns argument (BPF_F_CURRENT_NETNS or
 * the id of the namespace whose sockets guard this one). */
struct guard_config {
	__u64 netns;
	__u32 mode;		/* GUARD_MODE_* */
	__u32 flags;		/* GUARD_F_* */
	__u32 gen;		/* live policy generation, 0 or 1 */
	__u32 nrules[2];	/* rules of each generation in guard_rules */
	__u32 event_rate;	/* events per second per CPU; 0 = none */
	__u32 attach;		/* how the control plane attached; never read here */
	__u32 ifindex;		/* the guarded interface; never read here */
};

struct guard_counter {
	__u64 pass_packets;
	__u64 pass_bytes;
	__u64 drop_packets;
	__u64 drop_bytes;
};

/* Key of guard_policy: prefixlen counts the 64 bits of gen, family, pad
 * and class, plus the address prefix. */
struct guard_policy_key {
	__u32 prefixlen;
	__u8 gen;
	__u8 family;
	__u16 pad;
	__u32 class;
	__u8 addr[16];
};

/* A rule as the control plane wrote it, read back by `guard rules`. The
 * program never reads it. */
struct guard_rule {
	__u8 addr[16];
	__u8 family;
	__u8 prefixlen;
	__u8 proto;		/* GUARD_PROTO_* */
	__u8 action;		/* GUARD_POLICY_ALLOW or GUARD_POLICY_DENY */
	__u8 dir;		/* GUARD_DIR_* */
	__u8 pad;
	__u16 port_lo;
	__u16 port_hi;
	__u16 pad2;
};

/* Key of guard_frags: one fragmented datagram. */
struct guard_frag_key {
	__u8 family;
	__u8 proto;
	__u16 pad;
	__u32 id;
	__u8 src[16];
	__u8 dst[16];
};

/* The verdict of a datagram's first fragment, for the ones that follow. */
struct guard_frag_verdict {
	__u32 drop;
	__u32 reason;
};

/* One event in guard_events. */
struct guard_event {
	__u64 ts_ns;		/* bpf_ktime_get_boot_ns */
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u32 ifindex;
	__u8 family;
	__u8 proto;		/* IPPROTO_* */
	__u8 reason;		/* enum guard_reason */
	__u8 verdict;		/* GUARD_VERDICT_* */
	__u8 dir;		/* GUARD_DIR_* */
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
};

/* Token bucket of the event rate limit, one per CPU. */
struct guard_bucket {
	__u64 tokens;
	__u64 last_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct guard_config);
} guard_settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GUARD_REASON_MAX);
	__type(key, __u32);
	__type(value, struct guard_counter);
} guard_counters SEC(".maps");

/* ((gen * 2 + dir) * GUARD_PROTOS + proto) * 65536 + port -> port class,
 * 0 = no rule covers the port. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GUARD_PORT_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} guard_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct guard_policy_key);
	__type(value, __u32);
} guard_policy SEC(".maps");

/* gen * GUARD_MAX_RULES + i -> rule i of generation gen. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * GUARD_MAX_RULES);
	__type(key, __u32);
	__type(value, struct guard_rule);
} guard_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct guard_frag_key);
	__type(value, struct guard_frag_verdict);
} guard_frags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} guard_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct guard_bucket);
} guard_ratelimit SEC(".maps");

/* Types the control plane decodes but no map declares, kept in BTF for
 * bpf2go. */
const struct guard_event *guard_unused_event __attribute__((unused));
const enum guard_reason *guard_unused_reason __attribute__((unused));

/* A verdict: the reason in the low byte, the drop bit above it. */
#define V_DROP		(1 << 8)
#define VERDICT(reason, drop)	((reason) | ((drop) ? V_DROP : 0))

/*
 * tcp_state - the TCP state of the socket the tuple reaches, or -1 when
 * there is none. bpf_skc_lookup_tcp also returns request and TIME_WAIT
 * sockets, which bpf_sk_lookup_tcp would not. The reference never leaves
 * this function.
 */
static __always_inline int tcp_state(void *ctx, struct bpf_sock_tuple *t,
				     __u32 size, __u64 netns)
{
	struct bpf_sock *sk;
	int state;

	sk = bpf_skc_lookup_tcp(ctx, t, size, netns, 0);
	if (!sk)
		return -1;
	state = sk->state;
	bpf_sk_release(sk);
	return state;
}

/*
 * udp_socket - 2 when the tuple reaches a connected UDP socket (the lookup
 * only returns one whose peer matches), 1 for an unconnected bound socket,
 * 0 for none.
 */
static __always_inline int udp_socket(void *ctx, struct bpf_sock_tuple *t,
				      __u32 size, __u64 netns)
{
	struct bpf_sock *sk;
	int connected;

	sk = bpf_sk_lookup_udp(ctx, t, size, netns, 0);
	if (!sk)
		return 0;
	connected = sk->dst_port != 0;
	bpf_sk_release(sk);
	return connected ? 2 : 1;
}

/*
 * lookup - look the flow up as a packet arriving from remote:rport at
 * local:lport. For IPv4 the v4-mapped IPv6 tuple is tried too, so a
 * dual-stack socket is found whichever table holds it. Returns the TCP
 * state (or -1), or udp_socket's answer.
 */
static __always_inline int lookup(void *ctx, __u8 family, __u8 proto,
				  const __u8 *remote, const __u8 *local,
				  __u16 rport, __u16 lport, __u64 netns)
{
	struct bpf_sock_tuple t = {};
	int r;

	if (family == PKT_AF_INET) {
		__builtin_memcpy(&t.ipv4.saddr, remote, 4);
		__builtin_memcpy(&t.ipv4.daddr, local, 4);
		t.ipv4.sport = bpf_htons(rport);
		t.ipv4.dport = bpf_htons(lport);
		if (proto == IPPROTO_TCP)
			r = tcp_state(ctx, &t, sizeof(t.ipv4), netns);
		else
			r = udp_socket(ctx, &t, sizeof(t.ipv4), netns);
		if ((proto == IPPROTO_TCP && r >= 0) ||
		    (proto != IPPROTO_TCP && r > 0))
			return r;
		/* ::ffff:a.b.c.d */
		__builtin_memset(&t, 0, sizeof(t));
		t.ipv6.saddr[2] = bpf_htonl(0xffff);
		t.ipv6.daddr[2] = bpf_htonl(0xffff);
		__builtin_memcpy(&t.ipv6.saddr[3], remote, 4);
		__builtin_memcpy(&t.ipv6.daddr[3], local, 4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, remote, 16);
		__builtin_memcpy(t.ipv6.daddr, local, 16);
	}
	t.ipv6.sport = bpf_htons(rport);
	t.ipv6.dport = bpf_htons(lport);
	if (proto == IPPROTO_TCP)
		return tcp_state(ctx, &t, sizeof(t.ipv6), netns);
	return udp_socket(ctx, &t, sizeof(t.ipv6), netns);
}

/*
 * policy_allows - does the policy of generation gen let remote open a
 * connection of proto to port? Two lookups, whatever the rule count: the
 * port's class, then the longest prefix of the remote address in that
 * class, whose value already folds in every shorter prefix, so one deny
 * anywhere on the path wins.
 */
static __always_inline int policy_allows(__u32 gen, __u32 dir, __u32 proto,
					 __u16 port, __u8 family,
					 const __u8 *remote)
{
	struct guard_policy_key key = {};
	__u32 slot, *class, *bits;

	slot = (((gen & 1) * 2 + (dir & 1)) * GUARD_PROTOS + proto) * 65536 + port;
	class = bpf_map_lookup_elem(&guard_ports, &slot);
	if (!class || *class == 0)
		return 0;
	key.prefixlen = 64 + (family == PKT_AF_INET ? 32 : 128);
	key.gen = gen & 1;
	key.family = family;
	key.class = *class;
	__builtin_memcpy(key.addr, remote, 16);
	bits = bpf_map_lookup_elem(&guard_policy, &key);
	if (!bits)
		return 0;
	if (*bits & GUARD_POLICY_DENY)
		return 0;
	return (*bits & GUARD_POLICY_ALLOW) != 0;
}

static __always_inline int new_verdict(const struct guard_config *cfg,
				       __u32 dir, __u32 proto, __u16 port,
				       const struct packet *pkt,
				       const __u8 *remote)
{
	if (policy_allows(cfg->gen, dir, proto, port, pkt->family, remote))
		return VERDICT(GUARD_NEW_ALLOWED, 0);
	return VERDICT(GUARD_NEW_DENIED, 1);
}

static __always_inline int no_socket(const struct guard_config *cfg)
{
	return VERDICT(GUARD_NO_SOCKET, !(cfg->flags & GUARD_F_NO_SOCKET_PASS));
}

static __always_inline int is_icmp_error(const struct packet *pkt)
{
	if (pkt->l4_proto == IPPROTO_ICMP)
		return pkt->icmp_type == ICMP_DEST_UNREACH ||
		       pkt->icmp_type == ICMP_TIME_EXCEEDED ||
		       pkt->icmp_type == ICMP_PARAMETERPROB;
	return pkt->icmp_type == ICMPV6_DEST_UNREACH ||
	       pkt->icmp_type == ICMPV6_PKT_TOOBIG ||
	       pkt->icmp_type == ICMPV6_TIME_EXCEED ||
	       pkt->icmp_type == ICMPV6_PARAMPROB;
}

/*
 * is_echo_quote - does an ICMP error quote an echo request that this host
 * sent (quoted source = the error's destination)? No helper looks up ping
 * or raw sockets, so such errors get the trust echo replies get: the
 * kernel hands them only to the socket whose echo identifier they carry.
 * Without this, ping would never hear "unreachable" and traceroute -I or
 * mtr would see no hop answer.
 */
static __always_inline int is_echo_quote(const struct packet *pkt, __u8 proto,
					 const void *pos, const void *data_end,
					 const __u8 *local)
{
	const __u8 *type = pos;
	const __u32 *a = (const __u32 *)local, *b = (const __u32 *)pkt->dst;

	if ((const void *)(type + 1) > data_end)
		return 0;
	if (pkt->family == PKT_AF_INET) {
		if (proto != IPPROTO_ICMP || *type != ICMP_ECHO)
			return 0;
	} else if (proto != IPPROTO_ICMPV6 || *type != ICMPV6_ECHO_REQUEST) {
		return 0;
	}
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

/*
 * icmp_error - an ICMP error passes only when the packet it quotes (one we
 * sent: source local, destination remote) belongs to a local socket, so
 * path MTU discovery works and spoofed errors don't reach the stack. A
 * quoted echo request of ours passes too (is_echo_quote). The quoted IPv6
 * header must be followed directly by TCP, UDP or ICMPv6; quoted extension
 * headers are not walked.
 */
static __always_inline int icmp_error(void *ctx, const struct packet *pkt,
				      void *data, void *data_end, __u64 netns)
{
	__u8 local[16] = {}, remote[16] = {};
	__u16 lport, rport;
	__u32 off = pkt->l4_off;
	__u8 proto;
	void *pos;
	__u16 *ports;
	int r;

	if (off > 1024)
		return VERDICT(GUARD_MALFORMED, 1);
	pos = data + off + 8;		/* ICMP header, then the quote */
	if (pkt->family == PKT_AF_INET) {
		struct iphdr *ip = pos;

		if ((void *)(ip + 1) > data_end)
			return VERDICT(GUARD_MALFORMED, 1);
		if (ip->version != 4 || ip->ihl < 5)
			return VERDICT(GUARD_ICMP_UNRELATED, 1);
		if (bpf_ntohs(ip->frag_off) & IPV4_FRAG_OFFSET_MASK)
			return VERDICT(GUARD_ICMP_UNRELATED, 1);
		proto = ip->protocol;
		__builtin_memcpy(local, &ip->saddr, 4);
		__builtin_memcpy(remote, &ip->daddr, 4);
		pos += ip->ihl * 4;
	} else {
		struct ipv6hdr *ip6 = pos;

		if ((void *)(ip6 + 1) > data_end)
			return VERDICT(GUARD_MALFORMED, 1);
		if (ip6->version != 6)
			return VERDICT(GUARD_ICMP_UNRELATED, 1);
		proto = ip6->nexthdr;
		__builtin_memcpy(local, &ip6->saddr, 16);
		__builtin_memcpy(remote, &ip6->daddr, 16);
		pos = ip6 + 1;
	}
	if (is_echo_quote(pkt, proto, pos, data_end, local))
		return VERDICT(GUARD_ICMP_RELATED, 0);
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return VERDICT(GUARD_ICMP_UNRELATED, 1);
	ports = pos;
	if ((void *)(ports + 2) > data_end)
		return VERDICT(GUARD_MALFORMED, 1);
	lport = bpf_ntohs(ports[0]);
	rport = bpf_ntohs(ports[1]);

	r = lookup(ctx, pkt->family, proto, remote, local, rport, lport, netns);
	/* A TCP listener can't have sent the quoted packet to that peer. */
	if (proto == IPPROTO_TCP && r >= 0 && r != TCP_STATE_LISTEN)
		return VERDICT(GUARD_ICMP_RELATED, 0);
	if (proto == IPPROTO_UDP && r > 0)
		return VERDICT(GUARD_ICMP_RELATED, 0);
	return VERDICT(GUARD_ICMP_UNRELATED, 1);
}

/* is_dhcp - DHCP and DHCPv6 server-to-client traffic. */
static __always_inline int is_dhcp(const struct packet *pkt)
{
	if (pkt->l4_proto != IPPROTO_UDP)
		return 0;
	if (pkt->family == PKT_AF_INET)
		return pkt->sport == 67 && pkt->dport == 68;
	return pkt->sport == 547 && pkt->dport == 546;
}

/*
 * decide_ingress - the verdict for a packet arriving from pkt->src at
 * pkt->dst, which has a transport header.
 */
static __always_inline int decide_ingress(void *ctx, const struct packet *pkt,
					  const struct guard_config *cfg,
					  void *data, void *data_end)
{
	int r;

	switch (pkt->l4_proto) {
	case IPPROTO_TCP:
		r = lookup(ctx, pkt->family, IPPROTO_TCP, pkt->src, pkt->dst,
			   pkt->sport, pkt->dport, cfg->netns);
		if (r < 0)
			return no_socket(cfg);
		if (r != TCP_STATE_LISTEN)
			return VERDICT(GUARD_ESTABLISHED, 0);
		/* A SYN, or the ACK that completes a SYN-cookie handshake. */
		return new_verdict(cfg, GUARD_DIR_INGRESS, GUARD_PROTO_TCP,
				   pkt->dport, pkt, pkt->src);
	case IPPROTO_UDP:
		if (is_dhcp(pkt))
			return VERDICT(GUARD_CONTROL, 0);
		r = lookup(ctx, pkt->family, IPPROTO_UDP, pkt->src, pkt->dst,
			   pkt->sport, pkt->dport, cfg->netns);
		if (r == 0)
			return no_socket(cfg);
		if (r == 2)
			return VERDICT(GUARD_ESTABLISHED, 0);
		return new_verdict(cfg, GUARD_DIR_INGRESS, GUARD_PROTO_UDP,
				   pkt->dport, pkt, pkt->src);
	case IPPROTO_ICMP:
		if (pkt->family != PKT_AF_INET)
			return no_socket(cfg);
		if (is_icmp_error(pkt))
			return icmp_error(ctx, pkt, data, data_end, cfg->netns);
		if (pkt->icmp_type == ICMP_ECHOREPLY)
			return VERDICT(GUARD_CONTROL, 0);
		return new_verdict(cfg, GUARD_DIR_INGRESS, GUARD_PROTO_ICMP,
				   0, pkt, pkt->src);
	case IPPROTO_ICMPV6:
		if (pkt->family != PKT_AF_INET6)
			return no_socket(cfg);
		if (is_icmp_error(pkt))
			return icmp_error(ctx, pkt, data, data_end, cfg->netns);
		/* Echo reply (129), MLD (130-132, 143) and neighbour
		 * discovery (133-137): IPv6 doesn't work without them. */
		if (pkt->icmp_type == ICMPV6_ECHO_REPLY ||
		    (pkt->icmp_type >= 130 && pkt->icmp_type <= 137) ||
		    pkt->icmp_type == 143)
			return VERDICT(GUARD_CONTROL, 0);
		return new_verdict(cfg, GUARD_DIR_INGRESS, GUARD_PROTO_ICMP,
				   0, pkt, pkt->src);
	}
	/* No helper looks up sockets of other protocols. */
	return no_socket(cfg);
}

/*
 * decide_egress - the verdict for a packet leaving from pkt->src to
 * pkt->dst. has_sk says whether the skb belongs to a local socket.
 * New outbound connections (a TCP SYN, a UDP datagram that is not a reply
 * the ingress policy would admit, an echo request) go to the egress
 * policy, keyed by the remote address and port; the rest passes.
 */
static __always_inline int decide_egress(const struct packet *pkt,
					 const struct guard_config *cfg,
					 int has_sk)
{
	if (!has_sk)
		/* RSTs, ICMP errors and TIME_WAIT ACKs the stack sends. */
		return VERDICT(GUARD_LOCAL, 0);

	switch (pkt->l4_proto) {
	case IPPROTO_TCP:
		if ((pkt->tcp_flags & (TCPF_SYN | TCPF_ACK)) == TCPF_SYN)
			return new_verdict(cfg, GUARD_DIR_EGRESS,
					   GUARD_PROTO_TCP, pkt->dport, pkt,
					   pkt->dst);
		return VERDICT(GUARD_LOCAL, 0);
	case IPPROTO_UDP:
		if (policy_allows(cfg->gen, GUARD_DIR_INGRESS, GUARD_PROTO_UDP,
				  pkt->sport, pkt->family, pkt->dst))
			return VERDICT(GUARD_LOCAL, 0);
		return new_verdict(cfg, GUARD_DIR_EGRESS, GUARD_PROTO_UDP,
				   pkt->dport, pkt, pkt->dst);
	case IPPROTO_ICMP:
		if (pkt->icmp_type == ICMP_ECHO)
			return new_verdict(cfg, GUARD_DIR_EGRESS,
					   GUARD_PROTO_ICMP, 0, pkt, pkt->dst);
		return VERDICT(GUARD_LOCAL, 0);
	case IPPROTO_ICMPV6:
		if (pkt->icmp_type == ICMPV6_ECHO_REQUEST)
			return new_verdict(cfg, GUARD_DIR_EGRESS,
					   GUARD_PROTO_ICMP, 0, pkt, pkt->dst);
		return VERDICT(GUARD_LOCAL, 0);
	}
	return VERDICT(GUARD_LOCAL, 0);
}

/*
 * fragment - non-first fragments carry no ports, so they get the verdict
 * their first fragment got (remembered in guard_frags); one whose first
 * fragment was not seen (reordered, or evicted from the LRU) is dropped.
 */
static __always_inline int fragment(const struct packet *pkt)
{
	struct guard_frag_key key = {
		.family = pkt->family,
		.proto = pkt->l4_proto,
		.id = pkt->frag_id,
	};
	struct guard_frag_verdict *v;

	__builtin_memcpy(key.src, pkt->src, 16);
	__builtin_memcpy(key.dst, pkt->dst, 16);
	v = bpf_map_lookup_elem(&guard_frags, &key);
	if (!v)
		return VERDICT(GUARD_FRAGMENT, 1);
	return VERDICT(GUARD_FRAGMENT, v->drop);
}

static __always_inline void remember_fragment(const struct packet *pkt, int v)
{
	struct guard_frag_key key = {
		.family = pkt->family,
		.proto = pkt->l4_proto,
		.id = pkt->frag_id,
	};
	struct guard_frag_verdict fv = {
		.drop = !!(v & V_DROP),
		.reason = v & 0xff,
	};

	__builtin_memcpy(key.src, pkt->src, 16);
	__builtin_memcpy(key.dst, pkt->dst, 16);
	bpf_map_update_elem(&guard_frags, &key, &fv, BPF_ANY);
}

/*
 * decide - parse and judge one frame. Returns a VERDICT(); *pkt holds what
 * the parser found, for the event.
 */
static __always_inline int decide(void *ctx, void *data, void *data_end,
				  struct packet *pkt,
				  const struct guard_config *cfg, __u32 dir,
				  int has_sk)
{
	int v;

	switch (parse_packet(data, data_end, pkt)) {
	case PARSE_MALFORMED:
		return VERDICT(GUARD_MALFORMED, 1);
	case PARSE_NON_IP:
		return VERDICT(GUARD_NON_IP, 0);
	}
	if (pkt->flags & PKT_NONFIRST)
		return fragment(pkt);
	if (!(pkt->flags & PKT_HAS_L4)) {
		/* An IP protocol we don't parse: no socket to find. */
		if (dir == GUARD_DIR_EGRESS)
			return VERDICT(GUARD_LOCAL, 0);
		return no_socket(cfg);
	}
	if (dir == GUARD_DIR_EGRESS)
		v = decide_egress(pkt, cfg, has_sk);
	else
		v = decide_ingress(ctx, pkt, cfg, data, data_end);
	if (pkt->flags & PKT_FRAGMENT)
		remember_fragment(pkt, v);
	return v;
}

static __always_inline void count(__u32 reason, int drop, __u64 bytes)
{
	struct guard_counter *c = bpf_map_lookup_elem(&guard_counters, &reason);

	if (!c)
		return;
	if (drop) {
		c->drop_packets++;
		c->drop_bytes += bytes;
	} else {
		c->pass_packets++;
		c->pass_bytes += bytes;
	}
}

/* allow_event - the per-CPU token bucket: event_rate tokens a second, at
 * most event_rate saved up. Whole tokens are added and last_ns advances by
 * exactly their worth, so frequent calls don't starve the refill. */
static __always_inline int allow_event(const struct guard_config *cfg)
{
	const __u64 nsec = 1000000000ULL;
	__u64 now, elapsed, add, rate = cfg->event_rate;
	struct guard_bucket *b;
	__u32 key = 0;

	if (rate == 0)
		return 0;
	b = bpf_map_lookup_elem(&guard_ratelimit, &key);
	if (!b)
		return 0;
	now = bpf_ktime_get_boot_ns();
	elapsed = now - b->last_ns;
	if (b->last_ns == 0 || elapsed >= nsec) {
		b->tokens = rate;
		b->last_ns = now;
	} else {
		add = elapsed * rate / nsec;
		if (add) {
			b->tokens += add;
			if (b->tokens > rate)
				b->tokens = rate;
			b->last_ns += add * nsec / rate;
		}
	}
	if (b->tokens == 0)
		return 0;
	b->tokens--;
	return 1;
}

static __always_inline void emit(const struct packet *pkt, __u32 reason,
				 __u8 verdict, __u32 dir, __u32 ifindex)
{
	struct guard_event *e;

	e = bpf_ringbuf_reserve(&guard_events, sizeof(*e), 0);
	if (!e)
		return;
	e->ts_ns = bpf_ktime_get_boot_ns();
	__builtin_memcpy(e->src, pkt->src, 16);
	__builtin_memcpy(e->dst, pkt->dst, 16);
	e->sport = pkt->sport;
	e->dport = pkt->dport;
	e->ifindex = ifindex;
	e->family = pkt->family;
	e->proto = pkt->l4_proto;
	e->reason = reason;
	e->verdict = verdict;
	e->dir = dir;
	e->tcp_flags = pkt->tcp_flags;
	e->icmp_type = pkt->icmp_type;
	e->icmp_code = pkt->icmp_code;
	bpf_ringbuf_submit(e, 0);
}

/*
 * run - the whole guard for one frame; returns 1 to drop. In audit mode a
 * drop is counted and reported but the packet passes.
 */
static __always_inline int run(void *ctx, void *data, void *data_end,
			       __u32 dir, int has_sk, __u32 ifindex, __u64 bytes)
{
	struct packet pkt = {};
	struct guard_config *cfg;
	__u32 key = 0, reason;
	int v, drop, audit;

	cfg = bpf_map_lookup_elem(&guard_settings, &key);
	if (!cfg)
		return 1;	/* unconfigured: fail closed */
	audit = cfg->mode == GUARD_MODE_AUDIT;

	v = decide(ctx, data, data_end, &pkt, cfg, dir, has_sk);
	reason = v & 0xff;
	drop = !!(v & V_DROP);
	count(reason, drop, bytes);
	if (drop || (reason == GUARD_NEW_ALLOWED && (cfg->flags & GUARD_F_LOG_NEW))) {
		if (allow_event(cfg))
			emit(&pkt, reason,
			     !drop ? GUARD_VERDICT_PASS :
			     audit ? GUARD_VERDICT_AUDIT : GUARD_VERDICT_DROP,
			     dir, ifindex);
	}
	return drop && !audit;
}

/* Ingress at TC. Passing returns TC_ACT_UNSPEC (TCX_NEXT), so programs
 * after the guard on the same hook still run. */
SEC("tc")
int sockgate_guard_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	/* skb->len, not data_end - data: a GSO/GRO skb's payload is mostly in
	 * fragments beyond the linear head. */
	if (run(skb, data, data_end, GUARD_DIR_INGRESS, 0, skb->ifindex, skb->len))
		return TC_ACT_SHOT;
	return TC_ACT_UNSPEC;
}

/* Egress at TC: skb->sk is the local socket that sent the packet. */
SEC("tc")
int sockgate_guard_egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	int has_sk = skb->sk != 0;

	if (run(skb, data, data_end, GUARD_DIR_EGRESS, has_sk, skb->ifindex, skb->len))
		return TC_ACT_SHOT;
	return TC_ACT_UNSPEC;
}

/* Management mode at XDP: only what a local socket or the policy wants goes
 * up the stack; the rest is dropped at the driver. */
SEC("xdp")
int sockgate_guard_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (run(ctx, data, data_end, GUARD_DIR_INGRESS, 0, ctx->ingress_ifindex,
		data_end - data))
		return XDP_DROP;
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
