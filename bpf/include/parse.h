/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * parse.h - bounded, verifier-friendly parsing of Ethernet frames for the
 * programs that use direct packet access (XDP and TC).
 *
 * Packets are hostile: every header is bounds-checked against data_end
 * before it is read, IPv4 options and IPv6 extension headers are skipped
 * by their length fields in a bounded walk, and a non-first fragment is
 * reported as having no transport header, so no program ever reads payload
 * bytes as ports. A frame that claims to be IP but can't be parsed comes
 * back as PARSE_MALFORMED so each program can give it an explicit verdict.
 */
#ifndef SOCKGATE_PARSE_H
#define SOCKGATE_PARSE_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

/* At most this many VLAN tags (802.1ad outer + 802.1Q inner). */
#define PARSE_MAX_VLAN 2
/* At most this many IPv6 extension headers are walked; more is malformed. */
#define PARSE_MAX_EXTHDR 8

#define IPV6_FRAG_OFFSET_MASK 0xfff8
#define IPV4_FRAG_OFFSET_MASK 0x1fff
#define IPV4_MORE_FRAGMENTS 0x2000

enum parse_result {
	PARSE_IP = 0,		/* IPv4 or IPv6, headers parsed as far as they go */
	PARSE_NON_IP,		/* ARP, LLDP, ... : eth_proto says which */
	PARSE_MALFORMED,	/* claims to be IP (or VLAN) but is truncated or invalid */
};

/* Bits of struct packet.flags. */
#define PKT_FRAGMENT	(1 << 0)	/* part of a fragmented datagram */
#define PKT_NONFIRST	(1 << 1)	/* non-first fragment: no transport header */
#define PKT_HAS_L4	(1 << 2)	/* sport/dport/tcp_flags/icmp fields are valid */

/*
 * struct packet - what the parser learned. Addresses are in network byte
 * order, IPv4 in the first four bytes of the 16 with the rest zero, so one
 * key layout serves both families. Ports are in host byte order.
 */
struct packet {
	__u8 src[16];
	__u8 dst[16];
	__u16 eth_proto;	/* host order, after VLAN tags */
	__u16 sport;
	__u16 dport;
	__u8 family;		/* AF_INET (2) or AF_INET6 (10) for PARSE_IP */
	__u8 l4_proto;		/* IPPROTO_* of the transport header */
	__u8 flags;		/* PKT_* */
	__u8 tcp_flags;		/* byte 13 of the TCP header */
	__u8 icmp_type;
	__u8 icmp_code;
	__u16 l3_off;		/* offset of the IP header from data */
	__u16 l4_off;		/* offset of the transport header from data */
	__u32 frag_id;		/* host order: IPv4 ID or IPv6 fragment identification,
				 * set when PKT_FRAGMENT is */
};

#define PKT_AF_INET	2
#define PKT_AF_INET6	10

static __always_inline int parse_l4(void *data, void *pos, void *data_end,
				    struct packet *pkt)
{
	pkt->l4_off = pos - data;
	if (pkt->flags & PKT_NONFIRST)
		return PARSE_IP;

	switch (pkt->l4_proto) {
	case IPPROTO_TCP: {
		struct tcphdr *tcp = pos;

		if ((void *)(tcp + 1) > data_end)
			return PARSE_MALFORMED;
		if (tcp->doff < 5)
			return PARSE_MALFORMED;
		pkt->sport = bpf_ntohs(tcp->source);
		pkt->dport = bpf_ntohs(tcp->dest);
		pkt->tcp_flags = ((__u8 *)tcp)[13];
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr *udp = pos;

		if ((void *)(udp + 1) > data_end)
			return PARSE_MALFORMED;
		pkt->sport = bpf_ntohs(udp->source);
		pkt->dport = bpf_ntohs(udp->dest);
		break;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		/* type and code are the only fields every ICMP message has */
		__u8 *icmp = pos;

		if ((void *)(icmp + 2) > data_end)
			return PARSE_MALFORMED;
		pkt->icmp_type = icmp[0];
		pkt->icmp_code = icmp[1];
		break;
	}
	default:
		return PARSE_IP;
	}
	pkt->flags |= PKT_HAS_L4;
	return PARSE_IP;
}

static __always_inline int parse_ipv4(void *data, void *pos, void *data_end,
				      struct packet *pkt)
{
	struct iphdr *ip = pos;
	__u32 hdr_len;
	__u16 frag;

	if ((void *)(ip + 1) > data_end)
		return PARSE_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_MALFORMED;
	hdr_len = ip->ihl * 4;		/* 20..60: options are skipped */
	if (pos + hdr_len > data_end)
		return PARSE_MALFORMED;
	if (bpf_ntohs(ip->tot_len) < hdr_len)
		return PARSE_MALFORMED;

	pkt->family = PKT_AF_INET;
	pkt->l3_off = pos - data;
	pkt->l4_proto = ip->protocol;
	__builtin_memcpy(pkt->src, &ip->saddr, 4);
	__builtin_memcpy(pkt->dst, &ip->daddr, 4);

	frag = bpf_ntohs(ip->frag_off);
	if (frag & (IPV4_MORE_FRAGMENTS | IPV4_FRAG_OFFSET_MASK))
		pkt->flags |= PKT_FRAGMENT;
	if (frag & IPV4_FRAG_OFFSET_MASK)
		pkt->flags |= PKT_NONFIRST;
	if (pkt->flags & PKT_FRAGMENT)
		pkt->frag_id = bpf_ntohs(ip->id);

	return parse_l4(data, pos + hdr_len, data_end, pkt);
}

/*
 * A generic IPv6 extension header: next header, then its length in 8-octet
 * units not counting the first 8 (AH counts 4-octet units, minus 2).
 */
struct ipv6_opt {
	__u8 nexthdr;
	__u8 hdrlen;
};

static __always_inline int parse_ipv6(void *data, void *pos, void *data_end,
				      struct packet *pkt)
{
	struct ipv6hdr *ip6 = pos;
	__u8 next;
	int i;

	if ((void *)(ip6 + 1) > data_end)
		return PARSE_MALFORMED;
	if (ip6->version != 6)
		return PARSE_MALFORMED;

	pkt->family = PKT_AF_INET6;
	pkt->l3_off = pos - data;
	__builtin_memcpy(pkt->src, &ip6->saddr, 16);
	__builtin_memcpy(pkt->dst, &ip6->daddr, 16);
	next = ip6->nexthdr;
	pos = ip6 + 1;

#pragma unroll
	for (i = 0; i < PARSE_MAX_EXTHDR; i++) {
		struct ipv6_opt *opt = pos;
		__u32 len;

		switch (next) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			if ((void *)(opt + 1) > data_end)
				return PARSE_MALFORMED;
			len = ((__u32)opt->hdrlen + 1) * 8;
			break;
		case IPPROTO_AH:
			if ((void *)(opt + 1) > data_end)
				return PARSE_MALFORMED;
			len = ((__u32)opt->hdrlen + 2) * 4;
			break;
		case IPPROTO_FRAGMENT: {
			struct frag_hdr {
				__u8 nexthdr;
				__u8 reserved;
				__be16 frag_off;
				__be32 identification;
			} *fh = pos;

			if ((void *)(fh + 1) > data_end)
				return PARSE_MALFORMED;
			pkt->flags |= PKT_FRAGMENT;
			pkt->frag_id = bpf_ntohl(fh->identification);
			if (bpf_ntohs(fh->frag_off) & IPV6_FRAG_OFFSET_MASK)
				pkt->flags |= PKT_NONFIRST;
			len = sizeof(*fh);
			break;
		}
		default:
			pkt->l4_proto = next;
			return parse_l4(data, pos, data_end, pkt);
		}
		if (pos + len > data_end)
			return PARSE_MALFORMED;
		next = opt->nexthdr;
		pos += len;
	}
	/* Still inside the extension header chain after the walk's bound. */
	return PARSE_MALFORMED;
}

/*
 * parse_packet - parse the frame between data and data_end into pkt.
 * pkt must be zeroed by the caller.
 */
static __always_inline int parse_packet(void *data, void *data_end,
					struct packet *pkt)
{
	struct ethhdr *eth = data;
	void *pos;
	__u16 proto;
	int i;

	if ((void *)(eth + 1) > data_end)
		return PARSE_MALFORMED;
	proto = bpf_ntohs(eth->h_proto);
	pos = eth + 1;

#pragma unroll
	for (i = 0; i < PARSE_MAX_VLAN; i++) {
		struct vlan_hdr {
			__be16 tci;
			__be16 encapsulated_proto;
		} *vlan = pos;

		if (proto != ETH_P_8021Q && proto != ETH_P_8021AD)
			break;
		if ((void *)(vlan + 1) > data_end)
			return PARSE_MALFORMED;
		proto = bpf_ntohs(vlan->encapsulated_proto);
		pos = vlan + 1;
	}
	pkt->eth_proto = proto;

	switch (proto) {
	case ETH_P_IP:
		return parse_ipv4(data, pos, data_end, pkt);
	case ETH_P_IPV6:
		return parse_ipv6(data, pos, data_end, pkt);
	case ETH_P_8021Q:
	case ETH_P_8021AD:
		/* a third tag: more than we walk */
		return PARSE_MALFORMED;
	default:
		return PARSE_NON_IP;
	}
}

/* is_neighbour_discovery - ICMPv6 router/neighbour solicitation,
 * advertisement and redirect (types 133-137), which IPv6 needs as IPv4
 * needs ARP. */
static __always_inline int is_neighbour_discovery(const struct packet *pkt)
{
	return pkt->family == PKT_AF_INET6 &&
	       pkt->l4_proto == IPPROTO_ICMPV6 &&
	       (pkt->flags & PKT_HAS_L4) &&
	       pkt->icmp_type >= 133 && pkt->icmp_type <= 137;
}

#endif /* SOCKGATE_PARSE_H */
