// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * firewall.c - sockgate's XDP firewall: allow and deny lists of CIDRs,
 * ports and CIDR+protocol+port combinations, with per-reason counters and
 * per-rule hit counters.
 *
 * Rules never make the program scan: every lookup is a hash, an LPM trie or
 * an array index, so the cost per packet does not grow with the rule count.
 *
 *  - Address rules live in fw_exact (/32 and /128) and fw_prefix (shorter
 *    prefixes), keyed by group 0 and direction (source or destination),
 *    except the IPv4 /32s of group 0, the most common rule by far, which
 *    live in fw_exact4 under an 8-byte key: hashing and comparing 24
 *    bytes that are mostly constant cost a lookup about 6 ns.
 *  - Port rules live in fw_ports, one slot per (protocol, direction, port).
 *    A slot names the port-only rule that covers the port and the group of
 *    CIDR+port rules that cover it. A group's CIDRs are in fw_exact and
 *    fw_prefix under that group id, so a CIDR+port rule costs one array
 *    lookup plus one address lookup.
 *
 * The control plane builds each rule set as a new generation of these maps
 * with a new instance of this program and swaps it in through the bpf_link,
 * so a packet sees either the old rule set or the new one, never a mix.
 * fw_settings (the mode), fw_counters and fw_chain are shared by every
 * generation and pinned, so reloading can't flip an allow list into a deny
 * list.
 */
#include "include/parse.h"

#define FW_MODE_DENY	0	/* drop what matches, pass the rest */
#define FW_MODE_ALLOW	1	/* pass what matches, drop the rest */

/* Direction of an address or port selector. */
#define FW_DIR_SRC	0
#define FW_DIR_DST	1

/* Bits of fw_present and of fw_port.group_kinds: which lookups can hit. */
#define FW_KIND_SRC_EXACT	(1 << 0)
#define FW_KIND_SRC_PREFIX	(1 << 1)
#define FW_KIND_DST_EXACT	(1 << 2)
#define FW_KIND_DST_PREFIX	(1 << 3)
#define FW_KIND_PORTS		(1 << 4)

/* Port slots: (protocol index << 1 | direction) << 16 | port. */
#define FW_PORT_SLOTS	(4 << 16)
#define FW_PROTO_TCP	0
#define FW_PROTO_UDP	1

/* Why a packet got its verdict; the index of fw_counters. */
enum fw_reason {
	FW_PASS_NO_MATCH = 0,	/* deny mode, no rule matched */
	FW_PASS_RULE,		/* allow mode, a rule matched */
	FW_PASS_ALWAYS,		/* ARP and IPv6 neighbour discovery in allow mode */
	FW_PASS_NON_IP,		/* non-IP traffic in deny mode */
	FW_DROP_RULE,		/* deny mode, a rule matched */
	FW_DROP_NO_MATCH,	/* allow mode, no rule matched */
	FW_DROP_MALFORMED,	/* truncated or invalid headers, in both modes */
	FW_REASON_MAX,
};

struct fw_config {
	__u32 mode;		/* FW_MODE_* */
	__u32 xdp_flags;	/* how the program was attached, for status */
};

struct fw_counter {
	__u64 packets;
	__u64 bytes;
};

/* Key of fw_exact: a full address of one group and direction. */
struct fw_exact_key {
	__u32 group;
	__u8 dir;
	__u8 family;
	__u16 pad;
	__u8 addr[16];
};

/* Key of fw_exact4: an IPv4 address (network order) of group 0 and a
 * direction. */
struct fw_exact4_key {
	__u32 addr;
	__u32 dir;
};

/* Key of fw_prefix: prefixlen counts the 64 bits of group, dir, family and
 * pad, plus the address prefix. */
struct fw_prefix_key {
	__u32 prefixlen;
	__u32 group;
	__u8 dir;
	__u8 family;
	__u16 pad;
	__u8 addr[16];
};

/* What an address entry matches: the rule (for its hit counter) and when it
 * stops matching (bpf_ktime_get_boot_ns, 0 = never). */
struct fw_match {
	__u32 rule;
	__u32 pad;
	__u64 expires;
};

/* A port slot. rule is the port-only rule covering the port (0 = none);
 * group the CIDR+port group covering it (0 = none) and group_kinds which of
 * that group's address lookups can hit. */
struct fw_port {
	__u32 rule;
	__u32 group;
	__u32 group_kinds;
	__u32 pad;
	__u64 expires;
};

/* A rule as the control plane wrote it, read back by `firewall list`. The
 * program never reads it. */
struct fw_rule {
	__u8 src[16];
	__u8 dst[16];
	__u8 src_family;	/* 0 = no source selector */
	__u8 src_len;
	__u8 dst_family;	/* 0 = no destination selector */
	__u8 dst_len;
	__u8 proto;		/* IPPROTO_TCP, IPPROTO_UDP or 0 */
	__u8 pad[3];
	__u16 sport_lo;
	__u16 sport_hi;		/* sport_hi = 0: no source port selector */
	__u16 dport_lo;
	__u16 dport_hi;		/* dport_hi = 0: no destination port selector */
	__u64 expires;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fw_config);
} fw_settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FW_REASON_MAX);
	__type(key, enum fw_reason);
	__type(value, struct fw_counter);
} fw_counters SEC(".maps");

/* Where a passed packet goes next: slot 0 may hold another XDP program
 * (the guard), so two capabilities can share one interface. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} fw_chain SEC(".maps");

/* Management prefixes the operator can't be locked out of (src fields of
 * struct fw_rule). Only the control plane reads it: rule changes that would
 * cut these are refused unless forced. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, struct fw_rule);
} fw_management SEC(".maps");

/* Per generation. max_entries are set by the control plane to fit. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct fw_exact_key);
	__type(value, struct fw_match);
} fw_exact SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, struct fw_exact4_key);
	__type(value, struct fw_match);
} fw_exact4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fw_prefix_key);
	__type(value, struct fw_match);
} fw_prefix SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_PORT_SLOTS);
	__type(key, __u32);
	__type(value, struct fw_port);
} fw_ports SEC(".maps");

/*
 * IPv4 prefilter for the address prefixes of group 0: one bit per /24 and
 * direction, set when some prefix rule covers part of that /24. Most
 * packets that match no prefix are turned away by this one inlined array
 * lookup instead of an LPM trie walk, which costs ten times more. Word
 * (dir << FW_V4FILTER_DIR_SHIFT | addr >> 14), bit (addr >> 8) & 63. A
 * generation without IPv4 prefixes sizes it to one entry; a missing word
 * means "can't tell", and the trie decides.
 */
#define FW_V4FILTER_DIR_SHIFT	18
#define FW_V4FILTER_WORDS	(2 << FW_V4FILTER_DIR_SHIFT)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FW_V4FILTER_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} fw_v4filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} fw_hits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fw_rule);
} fw_rules SEC(".maps");

/* FW_KIND_* bits of this generation's group 0 and ports: the control plane
 * sets it at load, so lookups of kinds that have no rules are dead code the
 * verifier removes. */
volatile const __u32 fw_present = 0;

static __always_inline int match_live(__u64 expires)
{
	return expires == 0 || expires > bpf_ktime_get_boot_ns();
}

/*
 * match_addr - does an address rule of this group and direction cover the
 * packet's address? An exact entry is tried first; an expired one falls
 * through to the prefixes, whose entries carry the latest expiry of every
 * prefix that covers them.
 */
static __always_inline int match_addr(const struct packet *pkt, __u32 group,
				      __u8 dir, __u32 kinds, __u32 *rule)
{
	const __u8 *addr = dir == FW_DIR_SRC ? pkt->src : pkt->dst;
	__u32 exact_kind = dir == FW_DIR_SRC ? FW_KIND_SRC_EXACT : FW_KIND_DST_EXACT;
	__u32 prefix_kind = dir == FW_DIR_SRC ? FW_KIND_SRC_PREFIX : FW_KIND_DST_PREFIX;
	struct fw_match *m;

	if ((kinds & exact_kind) && group == 0 && pkt->family == PKT_AF_INET) {
		struct fw_exact4_key key = {
			.addr = *(__u32 *)addr,
			.dir = dir,
		};

		m = bpf_map_lookup_elem(&fw_exact4, &key);
		if (m && match_live(m->expires)) {
			*rule = m->rule;
			return 1;
		}
	} else if (kinds & exact_kind) {
		struct fw_exact_key key = {
			.group = group,
			.dir = dir,
			.family = pkt->family,
		};

		__builtin_memcpy(key.addr, addr, 16);
		m = bpf_map_lookup_elem(&fw_exact, &key);
		if (m && match_live(m->expires)) {
			*rule = m->rule;
			return 1;
		}
	}
	if ((kinds & prefix_kind) && group == 0 && pkt->family == PKT_AF_INET) {
		__u32 a = bpf_ntohl(*(__u32 *)addr);
		__u32 word = (__u32)dir << FW_V4FILTER_DIR_SHIFT | a >> 14;
		__u64 *bits = bpf_map_lookup_elem(&fw_v4filter, &word);

		if (bits && !(*bits & (1ULL << ((a >> 8) & 63))))
			return 0;	/* no prefix covers this /24 */
	}
	if (kinds & prefix_kind) {
		struct fw_prefix_key key = {
			.prefixlen = 64 + (pkt->family == PKT_AF_INET ? 32 : 128),
			.group = group,
			.dir = dir,
			.family = pkt->family,
		};

		__builtin_memcpy(key.addr, addr, 16);
		m = bpf_map_lookup_elem(&fw_prefix, &key);
		if (m && match_live(m->expires)) {
			*rule = m->rule;
			return 1;
		}
	}
	return 0;
}

/* match_port - port rules and CIDR+port rules for one port direction. */
static __always_inline int match_port(const struct packet *pkt, __u32 proto,
				      __u8 dir, __u32 *rule)
{
	__u16 port = dir == FW_DIR_SRC ? pkt->sport : pkt->dport;
	__u32 slot = ((proto << 1 | dir) << 16) | port;
	struct fw_port *p;

	p = bpf_map_lookup_elem(&fw_ports, &slot);
	if (!p)
		return 0;
	if (p->rule && match_live(p->expires)) {
		*rule = p->rule;
		return 1;
	}
	if (p->group) {
		if (match_addr(pkt, p->group, FW_DIR_SRC, p->group_kinds, rule))
			return 1;
		if (match_addr(pkt, p->group, FW_DIR_DST, p->group_kinds, rule))
			return 1;
	}
	return 0;
}

/* match_rules - does any rule of this generation cover the packet? */
static __always_inline int match_rules(const struct packet *pkt, __u32 *rule)
{
	__u32 proto;

	if (match_addr(pkt, 0, FW_DIR_SRC, fw_present, rule))
		return 1;
	if (match_addr(pkt, 0, FW_DIR_DST, fw_present, rule))
		return 1;

	if (!(fw_present & FW_KIND_PORTS) || !(pkt->flags & PKT_HAS_L4))
		return 0;	/* a non-first fragment has no ports */
	if (pkt->l4_proto == IPPROTO_TCP)
		proto = FW_PROTO_TCP;
	else if (pkt->l4_proto == IPPROTO_UDP)
		proto = FW_PROTO_UDP;
	else
		return 0;
	if (match_port(pkt, proto, FW_DIR_DST, rule))
		return 1;
	return match_port(pkt, proto, FW_DIR_SRC, rule);
}

static __always_inline void count(__u32 reason, __u64 bytes)
{
	struct fw_counter *c = bpf_map_lookup_elem(&fw_counters, &reason);

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

static __always_inline void count_hit(__u32 rule)
{
	__u64 *hits = bpf_map_lookup_elem(&fw_hits, &rule);

	if (hits)
		(*hits)++;
}

static __always_inline int verdict(struct xdp_md *ctx, __u32 reason, __u64 bytes)
{
	count(reason, bytes);
	if (reason >= FW_DROP_RULE)
		return XDP_DROP;
	/* Hand the packet to the next program on this interface, if any; a
	 * tail call that finds an empty slot falls through to XDP_PASS. */
	bpf_tail_call(ctx, &fw_chain, 0);
	return XDP_PASS;
}

SEC("xdp")
int sockgate_firewall(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	struct packet pkt = {};
	struct fw_config *cfg;
	__u32 key = 0, rule = 0;
	int allow, matched;

	cfg = bpf_map_lookup_elem(&fw_settings, &key);
	if (!cfg)
		return XDP_ABORTED;
	allow = cfg->mode == FW_MODE_ALLOW;

	switch (parse_packet(data, data_end, &pkt)) {
	case PARSE_MALFORMED:
		return verdict(ctx, FW_DROP_MALFORMED, bytes);
	case PARSE_NON_IP:
		if (!allow)
			return verdict(ctx, FW_PASS_NON_IP, bytes);
		if (pkt.eth_proto == ETH_P_ARP)
			return verdict(ctx, FW_PASS_ALWAYS, bytes);
		return verdict(ctx, FW_DROP_NO_MATCH, bytes);
	}

	if (allow && is_neighbour_discovery(&pkt))
		return verdict(ctx, FW_PASS_ALWAYS, bytes);

	matched = match_rules(&pkt, &rule);
	if (matched)
		count_hit(rule);
	if (allow)
		return verdict(ctx, matched ? FW_PASS_RULE : FW_DROP_NO_MATCH, bytes);
	return verdict(ctx, matched ? FW_DROP_RULE : FW_PASS_NO_MATCH, bytes);
}

char _license[] SEC("license") = "Dual BSD/GPL";
