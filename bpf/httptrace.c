// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * httptrace.c - sockgate's HTTP tracer: a socket filter for an AF_PACKET
 * SOCK_DGRAM socket (Bertrone 2015, done with a bounded parser and an LRU
 * session map).
 *
 * The filter keeps a TCP segment when its payload begins with an HTTP
 * request method or a status line ("HTTP/"), and records the segment's flow
 * (a directional 4-tuple) in ht_sessions. Every later segment of a recorded
 * flow is kept too, so that userspace can reassemble a request line that
 * spans several segments; userspace removes the flow once the line (and the
 * request's header block) is complete. Everything else is dropped here, in
 * the kernel, before it is copied to the socket.
 *
 * The socket is SOCK_DGRAM, so skb->data is the network header in both
 * directions and on any link type, which is also what BPF_PROG_TEST_RUN
 * gives a socket filter. A socket filter has no direct packet access:
 * every read goes through bpf_skb_load_bytes() at an offset that was
 * checked against the packet length first, and the helper itself fails
 * rather than read past the end.
 *
 * ht_sessions is an LRU hash, so a flood of new flows evicts old entries
 * instead of filling the map, and a session that userspace never removes
 * stops being kept after ht_max_session_bytes bytes, so a stalled or
 * hostile session can't flood userspace.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/* At most this many IPv6 extension headers are walked; more is dropped. */
#define HT_MAX_EXTHDR 6
/* At most this many VLAN tags left in the frame after the kernel's untag. */
#define HT_MAX_VLAN 2

#define HT_AF_INET	2
#define HT_AF_INET6	10

/* Why the filter gave a packet its verdict; the index of ht_counters. */
enum ht_reason {
	HT_SEEN = 0,		/* every packet the filter ran on */
	HT_KEEP_START,		/* payload starts with a method or "HTTP/" */
	HT_KEEP_SESSION,	/* later segment of a recorded flow */
	HT_DROP_NOT_TCP,	/* not IPv4/IPv6 TCP, or a non-first fragment */
	HT_DROP_MALFORMED,	/* truncated or inconsistent headers */
	HT_DROP_PORT,		/* neither port is the --port filter */
	HT_DROP_EMPTY,		/* TCP without payload and no recorded flow */
	HT_DROP_NOT_HTTP,	/* payload of a flow that isn't recorded */
	HT_DROP_OVERSIZE,	/* recorded flow past ht_max_session_bytes */
	HT_REASON_MAX,
};

struct ht_counter {
	__u64 packets;
	__u64 bytes;
};

/*
 * struct ht_flow - key of ht_sessions: one direction of a TCP connection.
 * Addresses are in network byte order, IPv4 in the first four bytes; ports
 * in host byte order.
 */
struct ht_flow {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 family;
	__u8 pad[3];
};

/*
 * struct ht_session - value of ht_sessions. start_seq is the TCP sequence
 * number of the segment that last began a request or response on the flow:
 * userspace deletes an entry only when start_seq says no newer message has
 * begun since the one it finished, so it never removes a session whose
 * first segment is still queued on the socket.
 */
struct ht_session {
	__u64 last_seen_ns;	/* bpf_ktime_get_ns() of the last kept segment */
	__u32 start_seq;
	__u32 bytes;		/* payload bytes kept since start_seq */
};

/* Load-time settings (set by the loader before the program is created). */
volatile const __u16 ht_port = 0;		/* 0: any port */
volatile const __u32 ht_max_session_bytes = 24576;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);	/* the loader may resize it */
	__type(key, struct ht_flow);
	__type(value, struct ht_session);
} ht_sessions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HT_REASON_MAX);
	__type(key, enum ht_reason);
	__type(value, struct ht_counter);
} ht_counters SEC(".maps");

static __always_inline void count(enum ht_reason reason, __u32 len)
{
	__u32 key = reason;
	struct ht_counter *c = bpf_map_lookup_elem(&ht_counters, &key);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline int drop(enum ht_reason reason, __u32 len)
{
	count(reason, len);
	return 0;
}

static __always_inline int keep(enum ht_reason reason, __u32 len)
{
	count(reason, len);
	/* The return value is the snap length: keep the whole packet. */
	return len;
}

/* Compare the first n bytes of a payload prefix with a literal. */
static __always_inline int prefix_is(const __u8 *buf, __u32 avail,
				     const char *lit, __u32 n)
{
	__u32 i;

	if (avail < n)
		return 0;
#pragma unroll
	for (i = 0; i < 8; i++) {
		if (i >= n)
			break;
		if (buf[i] != (__u8)lit[i])
			return 0;
	}
	return 1;
}

/* Does the payload start with a request method and a space, or "HTTP/"? */
static __always_inline int starts_http(const __u8 *buf, __u32 avail)
{
	switch (buf[0]) {
	case 'G':
		return prefix_is(buf, avail, "GET ", 4);
	case 'P':
		return prefix_is(buf, avail, "POST ", 5) ||
		       prefix_is(buf, avail, "PUT ", 4) ||
		       prefix_is(buf, avail, "PATCH ", 6);
	case 'D':
		return prefix_is(buf, avail, "DELETE ", 7);
	case 'H':
		return prefix_is(buf, avail, "HEAD ", 5) ||
		       prefix_is(buf, avail, "HTTP/", 5);
	case 'O':
		return prefix_is(buf, avail, "OPTIONS ", 8);
	case 'C':
		return prefix_is(buf, avail, "CONNECT ", 8);
	}
	return 0;
}

/*
 * parse_ipv4 - fill the addresses of flow and return the offset of the TCP
 * header, or a negative reason. *l3_end is the end of the IP datagram.
 */
static __always_inline int parse_ipv4(struct __sk_buff *skb, __u32 off,
				      struct ht_flow *flow, __u32 *l3_end)
{
	struct iphdr ip;
	__u32 hdr_len, tot_len;

	if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
		return -HT_DROP_MALFORMED;
	if (ip.version != 4 || ip.ihl < 5)
		return -HT_DROP_MALFORMED;
	if (ip.protocol != IPPROTO_TCP)
		return -HT_DROP_NOT_TCP;
	/* A non-first fragment has no TCP header: its bytes are payload. */
	if (bpf_ntohs(ip.frag_off) & 0x1fff)
		return -HT_DROP_NOT_TCP;
	hdr_len = ip.ihl * 4;
	tot_len = bpf_ntohs(ip.tot_len);
	/* tot_len is 0 for a BIG TCP GSO packet: the skb length counts. */
	if (tot_len == 0)
		tot_len = skb->len - off;
	if (tot_len < hdr_len)
		return -HT_DROP_MALFORMED;
	flow->family = HT_AF_INET;
	__builtin_memcpy(flow->saddr, &ip.saddr, 4);
	__builtin_memcpy(flow->daddr, &ip.daddr, 4);
	*l3_end = off + tot_len;
	return off + hdr_len;
}

struct ipv6_opt {
	__u8 nexthdr;
	__u8 hdrlen;
};

static __always_inline int parse_ipv6(struct __sk_buff *skb, __u32 off,
				      struct ht_flow *flow, __u32 *l3_end)
{
	struct ipv6hdr ip6;
	__u32 payload_len;
	__u8 next;
	int i;

	if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
		return -HT_DROP_MALFORMED;
	if (ip6.version != 6)
		return -HT_DROP_MALFORMED;
	flow->family = HT_AF_INET6;
	__builtin_memcpy(flow->saddr, &ip6.saddr, 16);
	__builtin_memcpy(flow->daddr, &ip6.daddr, 16);
	payload_len = bpf_ntohs(ip6.payload_len);
	/* 0 is a jumbogram or BIG TCP: the skb length counts. */
	if (payload_len == 0)
		payload_len = skb->len - off - sizeof(ip6);
	*l3_end = off + sizeof(ip6) + payload_len;
	next = ip6.nexthdr;
	off += sizeof(ip6);

#pragma unroll
	for (i = 0; i < HT_MAX_EXTHDR; i++) {
		struct ipv6_opt opt;
		__u8 frag[8];
		__u32 len;

		switch (next) {
		case IPPROTO_TCP:
			return off;
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			if (bpf_skb_load_bytes(skb, off, &opt, sizeof(opt)) < 0)
				return -HT_DROP_MALFORMED;
			len = ((__u32)opt.hdrlen + 1) * 8;
			break;
		case IPPROTO_AH:
			if (bpf_skb_load_bytes(skb, off, &opt, sizeof(opt)) < 0)
				return -HT_DROP_MALFORMED;
			len = ((__u32)opt.hdrlen + 2) * 4;
			break;
		case IPPROTO_FRAGMENT:
			if (bpf_skb_load_bytes(skb, off, frag, sizeof(frag)) < 0)
				return -HT_DROP_MALFORMED;
			/* offset bits of a non-first fragment: no TCP header */
			if (((frag[2] << 8) | frag[3]) & 0xfff8)
				return -HT_DROP_NOT_TCP;
			opt.nexthdr = frag[0];
			len = sizeof(frag);
			break;
		default:
			return -HT_DROP_NOT_TCP;
		}
		next = opt.nexthdr;
		off += len;
		if (off > *l3_end)
			return -HT_DROP_MALFORMED;
	}
	/* Still in the extension header chain after the walk's bound. */
	return -HT_DROP_MALFORMED;
}

SEC("socket")
int http_filter(struct __sk_buff *skb)
{
	struct ht_flow flow = {};
	struct ht_session *sess;
	struct tcphdr tcp;
	__u32 len = skb->len;
	__u32 proto = bpf_ntohs(skb->protocol);
	__u32 off = 0, l3_end = 0, payload_off, payload_len, seq;
	__u8 buf[8] = {};
	int ret, i;

	count(HT_SEEN, len);

	/*
	 * skb->data is the network header. A VLAN tag is normally in the skb
	 * metadata by now; when one is still in the frame (QinQ, or a device
	 * without VLAN offload) skb->protocol says so and the tags come first.
	 */
#pragma unroll
	for (i = 0; i < HT_MAX_VLAN; i++) {
		__u8 tag[4];
		__u8 version;

		if (proto != ETH_P_8021Q && proto != ETH_P_8021AD)
			break;
		/* The network header may already be past the tag. */
		if (bpf_skb_load_bytes(skb, off, &version, 1) < 0)
			return drop(HT_DROP_MALFORMED, len);
		if ((version >> 4) == 4 || (version >> 4) == 6) {
			proto = (version >> 4) == 4 ? ETH_P_IP : ETH_P_IPV6;
			break;
		}
		if (bpf_skb_load_bytes(skb, off, tag, sizeof(tag)) < 0)
			return drop(HT_DROP_MALFORMED, len);
		proto = (tag[2] << 8) | tag[3];
		off += sizeof(tag);
	}

	if (proto == ETH_P_IP)
		ret = parse_ipv4(skb, off, &flow, &l3_end);
	else if (proto == ETH_P_IPV6)
		ret = parse_ipv6(skb, off, &flow, &l3_end);
	else
		return drop(HT_DROP_NOT_TCP, len);
	if (ret < 0)
		return drop(-ret, len);
	off = ret;

	if (bpf_skb_load_bytes(skb, off, &tcp, sizeof(tcp)) < 0)
		return drop(HT_DROP_MALFORMED, len);
	if (tcp.doff < 5)
		return drop(HT_DROP_MALFORMED, len);
	flow.sport = bpf_ntohs(tcp.source);
	flow.dport = bpf_ntohs(tcp.dest);
	if (ht_port && flow.sport != ht_port && flow.dport != ht_port)
		return drop(HT_DROP_PORT, len);

	payload_off = off + tcp.doff * 4;
	/* Ethernet padding is past l3_end, and the datagram can't be longer
	 * than what was captured. */
	if (l3_end > len)
		l3_end = len;
	if (payload_off > l3_end)
		return drop(HT_DROP_MALFORMED, len);
	payload_len = l3_end - payload_off;
	if (payload_len == 0)
		return drop(HT_DROP_EMPTY, len);
	seq = bpf_ntohl(tcp.seq);

	if (payload_len >= sizeof(buf)) {
		if (bpf_skb_load_bytes(skb, payload_off, buf, 8) < 0)
			return drop(HT_DROP_MALFORMED, len);
	} else if (payload_len >= 4) {
		/* 4..7 bytes: load them one constant size at a time. */
		if (bpf_skb_load_bytes(skb, payload_off, buf, 4) < 0)
			return drop(HT_DROP_MALFORMED, len);
		if (payload_len >= 5 &&
		    bpf_skb_load_bytes(skb, payload_off + 4, &buf[4], 1) < 0)
			return drop(HT_DROP_MALFORMED, len);
		if (payload_len >= 6 &&
		    bpf_skb_load_bytes(skb, payload_off + 5, &buf[5], 1) < 0)
			return drop(HT_DROP_MALFORMED, len);
		if (payload_len >= 7 &&
		    bpf_skb_load_bytes(skb, payload_off + 6, &buf[6], 1) < 0)
			return drop(HT_DROP_MALFORMED, len);
	}

	if (payload_len >= 4 && starts_http(buf, payload_len)) {
		struct ht_session fresh = {
			.last_seen_ns = bpf_ktime_get_ns(),
			.start_seq = seq,
			.bytes = payload_len,
		};

		bpf_map_update_elem(&ht_sessions, &flow, &fresh, BPF_ANY);
		return keep(HT_KEEP_START, len);
	}

	sess = bpf_map_lookup_elem(&ht_sessions, &flow);
	if (!sess)
		return drop(HT_DROP_NOT_HTTP, len);
	if (sess->bytes > ht_max_session_bytes) {
		/* Userspace has stopped reading or the peer never ends the
		 * line: stop feeding it. */
		bpf_map_delete_elem(&ht_sessions, &flow);
		return drop(HT_DROP_OVERSIZE, len);
	}
	sess->last_seen_ns = bpf_ktime_get_ns();
	__sync_fetch_and_add(&sess->bytes, payload_len);
	return keep(HT_KEEP_SESSION, len);
}

char _license[] SEC("license") = "Dual BSD/GPL";
