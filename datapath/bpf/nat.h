/* SNAT to the world (AWS_VPC_K8S_CNI_EXTERNALSNAT=false): a pod's flow to an address outside
 * the VPC's CIDRs and the excluded CIDRs leaves with the primary ENI's primary IP and a port of
 * our range; replies are translated back. The whole engine is here; to_eni.c (tc egress of
 * each ENI) translates out, from_eni.c (tc ingress) translates replies. Python: bpf.NatKey,
 * bpf.NatEntry, bpf.SnatConfig, bpf.SnatStat.
 *
 * Two pinned LRU maps keyed by the same tuple struct:
 *   nat_out: the pod's view  {remote, pod ip,  remote port, pod port,  proto} -> node ip, port
 *   nat_in:  the reply's view {remote, node ip, remote port, NAT port, proto} -> pod ip, port
 * A nat_in entry is the claim on a NAT port for one remote end; its last_seen and closing flag
 * decide when the claim may be taken by another flow. LRU: a full table evicts the least
 * recently used flows rather than refusing new ones; an eviction is counted when a flow finds
 * its claim gone (SNAT_EVICTED). ICMP echo uses the identifier as the port, remote port 0.
 */
#ifndef VPCNI_NAT_H
#define VPCNI_NAT_H

#include <uapi/linux/icmp.h>
#include <uapi/linux/udp.h>

struct nat_key {
	__be32 remote;
	__be32 local;
	__be16 remote_port;
	__be16 local_port;
	__u8 proto;
	__u8 pad[3];
};

struct nat_entry {
	__be32 addr;
	__be16 port;
	__u8 closing; /* a TCP FIN or RST went by: the short timeout applies */
	__u8 pad;
	__u64 last_seen; /* bpf_ktime_get_ns() */
};

/* How ports are picked (AWS_VPC_K8S_CNI_RANDOMIZESNAT). Python: bpf.Randomize. */
enum snat_randomize {
	SNAT_SEQUENTIAL = 0, /* "none": from the pod's own port on, one after the other */
	SNAT_HASH = 1,	     /* "hashrandom": from a keyed hash of the addresses and remote port */
	SNAT_PRNG = 2,	     /* "prng": a fresh random port on every try */
};

/* Slot 0 of snat_config; node_ip 0 turns SNAT off. Python: bpf.SnatConfig. */
struct snat_config {
	__be32 node_ip;	      /* the primary ENI's primary IP */
	__u32 node_ifindex;   /* the primary ENI: SNATed packets leave there */
	__u16 port_min;	      /* the NAT port range, host order */
	__u16 port_max;
	__u32 randomize;      /* enum snat_randomize */
	__u32 hash_secret;    /* keys SNAT_HASH, chosen by the agent */
	__u32 tcp_timeout;    /* seconds idle before a claim may be taken */
	__u32 closing_timeout;
	__u32 udp_timeout;
	__u32 icmp_timeout;
};

/* Counters per reason, per CPU. Python: bpf.SnatStat. */
enum snat_stat {
	SNAT_NEW,	    /* a port was claimed for a flow */
	SNAT_OUT,	    /* packets translated pod -> world */
	SNAT_IN,	    /* replies translated back */
	SNAT_EXCLUDED,	    /* packets to an excluded CIDR, left alone */
	SNAT_COLLISION,	    /* a try that found its port taken (the retry loop) */
	SNAT_NO_PORT,	    /* every try collided: packet dropped */
	SNAT_RECLAIMED,	    /* an expired claim taken over by a new flow */
	SNAT_EXPIRED,	    /* a flow came back after its claim was taken: it got a new port */
	SNAT_EVICTED,	    /* a flow found its claim gone: the LRU table was full */
	SNAT_CLOSED,	    /* TCP FIN/RST seen: the claim moves to the short timeout */
	SNAT_UNTRACKED,	    /* a packet in our port range to the node that matches no claim */
	SNAT_UNSUPPORTED,   /* not TCP/UDP/ICMP echo, or a fragment: passed untranslated */
	SNAT_ICMP_ERROR,    /* an ICMP error about a SNATed flow, translated back (PMTU) */
	SNAT_STATS,
};

#define SNAT_RETRIES 16

BPF_TABLE_PINNED("lru_hash", struct nat_key, struct nat_entry, nat_out, VPCNI_MAX_NAT,
		 VPCNI_PIN_DIR "/nat_out");
BPF_TABLE_PINNED("lru_hash", struct nat_key, struct nat_entry, nat_in, VPCNI_MAX_NAT,
		 VPCNI_PIN_DIR "/nat_in");
BPF_TABLE_PINNED("array", __u32, struct snat_config, snat_config, 1,
		 VPCNI_PIN_DIR "/snat_config");
BPF_TABLE_PINNED("array", __u32, struct vpc_cidr, snat_exclude, VPCNI_MAX_EXCLUDE_CIDRS,
		 VPCNI_PIN_DIR "/snat_exclude");
BPF_TABLE_PINNED("percpu_array", __u32, __u64, snat_stats, SNAT_STATS,
		 VPCNI_PIN_DIR "/snat_stats");

static __always_inline void snat_count(__u32 reason)
{
	__u64 *value = snat_stats.lookup(&reason);

	if (value)
		*value += 1;
}

static __always_inline int snat_excluded(__be32 addr)
{
	struct vpc_cidr *cidr;

#pragma unroll
	for (__u32 i = 0; i < VPCNI_MAX_EXCLUDE_CIDRS; i++) {
		__u32 slot = i;

		cidr = snat_exclude.lookup(&slot);
		if (!cidr || !cidr->mask)
			return 0;
		if ((addr & cidr->mask) == cidr->network)
			return 1;
	}
	return 0;
}

/* Where a translation happens: offsets into the frame and the tuple, from the pod's side for
 * egress and from the reply's side for ingress. */
struct nat_packet {
	struct nat_key key;
	__u32 l4_off;
	__u32 csum_off; /* L4 checksum */
	__u32 port_off; /* the local end's port (source port out, destination port in; echo id) */
	__u8 tcp_flags; /* FIN/RST/SYN bits of a TCP packet, else 0 */
	__u8 udp_nocsum;
};

#define NAT_FIN 0x01
#define NAT_SYN 0x02
#define NAT_RST 0x04

/* Fill `pkt` for translating the local end (source if `out`, destination if not); false for
 * what SNAT leaves alone (fragments, ICMP other than echo, other protocols). */
static __always_inline int nat_parse(struct __sk_buff *skb, struct iphdr *ip, int out,
				     struct nat_packet *pkt)
{
	void *data_end = (void *)(long)skb->data_end;
	__u32 l4_off = ETH_HLEN + ip->ihl * 4;
	__u8 *l4 = (__u8 *)ip + ip->ihl * 4;

	if (ip->frag_off & bpf_htons(IP_FRAGMENT))
		return 0;
	pkt->l4_off = l4_off;
	pkt->key.proto = ip->protocol;
	pkt->key.remote = out ? ip->daddr : ip->saddr;
	pkt->key.local = out ? ip->saddr : ip->daddr;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)l4;

		if ((void *)(tcp + 1) > data_end)
			return 0;
		pkt->key.remote_port = out ? tcp->dest : tcp->source;
		pkt->key.local_port = out ? tcp->source : tcp->dest;
		pkt->csum_off = l4_off + offsetof(struct tcphdr, check);
		pkt->port_off = l4_off + (out ? 0 : 2);
		pkt->tcp_flags = (tcp->fin ? NAT_FIN : 0) | (tcp->syn ? NAT_SYN : 0) |
				 (tcp->rst ? NAT_RST : 0);
		return 1;
	}
	if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = (void *)l4;

		if ((void *)(udp + 1) > data_end)
			return 0;
		pkt->key.remote_port = out ? udp->dest : udp->source;
		pkt->key.local_port = out ? udp->source : udp->dest;
		pkt->csum_off = l4_off + offsetof(struct udphdr, check);
		pkt->port_off = l4_off + (out ? 0 : 2);
		pkt->udp_nocsum = udp->check == 0;
		return 1;
	}
	if (ip->protocol == IPPROTO_ICMP) {
		struct icmphdr *icmp = (void *)l4;

		if ((void *)(icmp + 1) > data_end)
			return 0;
		if (icmp->type != (out ? ICMP_ECHO : ICMP_ECHOREPLY) || icmp->code != 0)
			return 0;
		pkt->key.remote_port = 0;
		pkt->key.local_port = icmp->un.echo.id;
		pkt->csum_off = l4_off + offsetof(struct icmphdr, checksum);
		pkt->port_off = l4_off + offsetof(struct icmphdr, un.echo.id);
		return 1;
	}
	return 0;
}

/* Rewrite the local end's address (at `addr_off`) and port, with every checksum. */
static __always_inline int nat_rewrite(struct __sk_buff *skb, struct nat_packet *pkt,
				       __u32 addr_off, __be32 old_addr, __be32 new_addr,
				       __be16 new_port)
{
	__be16 old_port = pkt->key.local_port;
	__u64 l4_flags = pkt->key.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (pkt->key.proto != IPPROTO_ICMP && !pkt->udp_nocsum) {
		/* TCP/UDP checksums cover the addresses (pseudo-header); ICMP's does not. */
		if (bpf_l4_csum_replace(skb, pkt->csum_off, old_addr, new_addr,
					l4_flags | BPF_F_PSEUDO_HDR | sizeof(new_addr)))
			return -1;
	}
	if (!pkt->udp_nocsum &&
	    bpf_l4_csum_replace(skb, pkt->csum_off, old_port, new_port, l4_flags | sizeof(new_port)))
		return -1;
	if (bpf_skb_store_bytes(skb, pkt->port_off, &new_port, sizeof(new_port), 0))
		return -1;
	if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old_addr, new_addr,
				sizeof(new_addr)))
		return -1;
	return bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0);
}

static __always_inline __u64 nat_timeout_ns(struct snat_config *cfg, __u8 proto, __u8 closing)
{
	__u32 s = cfg->icmp_timeout;

	if (proto == IPPROTO_TCP)
		s = closing ? cfg->closing_timeout : cfg->tcp_timeout;
	else if (proto == IPPROTO_UDP)
		s = cfg->udp_timeout;
	return (__u64)s * 1000000000ULL;
}

static __always_inline int nat_expired(struct snat_config *cfg, struct nat_entry *claim,
				       __u8 proto, __u64 now)
{
	return now > claim->last_seen &&
	       now - claim->last_seen > nat_timeout_ns(cfg, proto, claim->closing);
}

/* Note a packet of the flow on its claim: the time, and whether TCP is closing. */
static __always_inline void nat_touch(struct nat_entry *claim, struct nat_packet *pkt, __u64 now)
{
	claim->last_seen = now;
	if (pkt->tcp_flags & (NAT_FIN | NAT_RST)) {
		if (!claim->closing)
			snat_count(SNAT_CLOSED);
		claim->closing = 1;
	} else if (pkt->tcp_flags & NAT_SYN) {
		claim->closing = 0; /* the pod reuses its port for a new connection */
	}
}

/* The first port to try, host order, in [0, size). */
static __always_inline __u32 nat_first_port(struct snat_config *cfg, struct nat_key *key,
					    __u32 size)
{
	if (cfg->randomize == SNAT_SEQUENTIAL)
		return bpf_ntohs(key->local_port) % size;
	if (cfg->randomize == SNAT_HASH) {
		/* Same addresses and remote port, same first try, like iptables --random. */
		__u32 h = cfg->hash_secret ^ key->local;

		h = (h ^ key->remote) * 0x9E3779B1;
		h = (h ^ key->remote_port ^ ((__u32)key->proto << 16)) * 0x85EBCA6B;
		return (h ^ (h >> 16)) % size;
	}
	return bpf_get_prandom_u32() % size;
}

/* Claim a port for the flow in `pkt` (the pod's view): the mapping in `out`, or -1. */
static __always_inline int nat_claim(struct snat_config *cfg, struct nat_packet *pkt, __u64 now,
				     struct nat_entry *out)
{
	__u32 size = (__u32)cfg->port_max - cfg->port_min + 1;
	__u32 offset = nat_first_port(cfg, &pkt->key, size);
	struct nat_entry back = {.addr = pkt->key.local, .port = pkt->key.local_port};
	struct nat_key in = pkt->key;
	struct nat_entry *held;

	in.local = cfg->node_ip;
	nat_touch(&back, pkt, now);
	for (__u32 i = 0; i < SNAT_RETRIES; i++) {
		/* The first half walks on from the first try, the rest jump at random: a pod's
		 * many flows to one server start from one hashed port and must not run out. */
		if (i)
			offset = (cfg->randomize == SNAT_PRNG || i >= SNAT_RETRIES / 2)
					 ? bpf_get_prandom_u32()
					 : offset + 1;
		in.local_port = bpf_htons((__u16)(cfg->port_min + offset % size));
		if (nat_in.insert(&in, &back) == 0)
			goto claimed;
		held = nat_in.lookup(&in);
		if (held && nat_expired(cfg, held, pkt->key.proto, now)) {
			nat_in.update(&in, &back);
			snat_count(SNAT_RECLAIMED);
			goto claimed;
		}
		snat_count(SNAT_COLLISION);
	}
	snat_count(SNAT_NO_PORT);
	return -1;
claimed:
	out->addr = cfg->node_ip;
	out->port = in.local_port;
	out->closing = 0;
	out->last_seen = now;
	nat_out.update(&pkt->key, out);
	snat_count(SNAT_NEW);
	return 0;
}

/* A pod's packet leaving for the world: translate its source. VPCNI_PASS or VPCNI_DROP. */
static __always_inline int snat_out(struct __sk_buff *skb, struct iphdr *ip,
				    struct snat_config *cfg)
{
	struct nat_packet pkt = {};
	struct nat_entry mapping = {};
	struct nat_entry *known, *claim;
	struct nat_key in;
	__u64 now = bpf_ktime_get_ns();

	if (!nat_parse(skb, ip, 1, &pkt)) {
		snat_count(SNAT_UNSUPPORTED);
		return VPCNI_PASS;
	}
	known = nat_out.lookup(&pkt.key);
	if (known) {
		in = pkt.key;
		in.local = known->addr;
		in.local_port = known->port;
		claim = nat_in.lookup(&in);
		if (claim && claim->addr == pkt.key.local && claim->port == pkt.key.local_port &&
		    known->addr == cfg->node_ip) {
			/* A new connection from a port whose last one is closing takes a new NAT
			 * port, as a new conntrack entry would: the server may still hold the old
			 * one in TIME_WAIT and answer the SYN with an ACK. */
			if (!(claim->closing && (pkt.tcp_flags & NAT_SYN))) {
				nat_touch(claim, &pkt, now);
				mapping = *known;
				goto translate;
			}
		} else {
			snat_count(claim ? SNAT_EXPIRED : SNAT_EVICTED);
		}
	}
	if (nat_claim(cfg, &pkt, now, &mapping))
		return VPCNI_DROP;
translate:
	if (nat_rewrite(skb, &pkt, ETH_HLEN + offsetof(struct iphdr, saddr), pkt.key.local,
			mapping.addr, mapping.port))
		return VPCNI_DROP;
	snat_count(SNAT_OUT);
	return VPCNI_PASS;
}

/* An ICMP error to the node about a SNATed flow (fragmentation needed, unreachable, time
 * exceeded) quotes the translated header: translate the quote and the destination back, so
 * that the pod learns the path MTU (the ENI's is 9001, the internet's 1500). 1 if translated,
 * 0 if not ours, -1 to drop. The quoted L4 checksum is left alone: nobody checks it. */
static __always_inline int snat_icmp_error(struct __sk_buff *skb, struct iphdr *ip,
					   struct snat_config *cfg)
{
	__u32 icmp_off = ETH_HLEN + ip->ihl * 4;
	__u32 inner_off = icmp_off + sizeof(struct icmphdr);
	__u32 csum_off = icmp_off + offsetof(struct icmphdr, checksum);
	struct nat_key key = {};
	struct nat_entry *claim;
	struct icmphdr *icmp;
	struct iphdr *inner;
	__be16 old_check, new_check, pod_port;
	void *data, *data_end;
	__be32 pod_ip;
	__u32 port_off;
	__u8 *l4;

	if (ip->protocol != IPPROTO_ICMP || (ip->frag_off & bpf_htons(IP_FRAGMENT)))
		return 0;
	/* The quote too: its IP header and 8 bytes (rare packets, a pull is fine). */
	if (headers_linear(skb, inner_off + sizeof(struct iphdr) + 8) < 0)
		return 0;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (icmp_off > 60 + ETH_HLEN)
		return 0;
	icmp = data + icmp_off;
	if ((void *)(icmp + 1) > data_end)
		return 0;
	if (icmp->type != ICMP_DEST_UNREACH && icmp->type != ICMP_TIME_EXCEEDED &&
	    icmp->type != ICMP_PARAMETERPROB)
		return 0;
	inner = (void *)(icmp + 1);
	/* The inner header with options would push the quote beyond what parse_ipv4 pulled. */
	if ((void *)(inner + 1) > data_end || inner->ihl != 5 || inner->saddr != cfg->node_ip)
		return 0;
	l4 = (void *)(inner + 1);
	if (l4 + 8 > (__u8 *)data_end)
		return 0;
	key.remote = inner->daddr;
	key.local = inner->saddr;
	key.proto = inner->protocol;
	if (inner->protocol == IPPROTO_TCP || inner->protocol == IPPROTO_UDP) {
		key.local_port = *(__be16 *)l4;
		key.remote_port = *(__be16 *)(l4 + 2);
		port_off = inner_off + sizeof(struct iphdr);
	} else if (inner->protocol == IPPROTO_ICMP && l4[0] == ICMP_ECHO) {
		key.local_port = ((struct icmphdr *)l4)->un.echo.id;
		port_off = inner_off + sizeof(struct iphdr) + offsetof(struct icmphdr, un.echo.id);
	} else {
		return 0;
	}
	old_check = inner->check;
	claim = nat_in.lookup(&key);
	if (!claim)
		return 0;
	pod_ip = claim->addr;
	pod_port = claim->port;
	/* The quoted header: its checksum, then its source and port; the ICMP checksum covers
	 * all three. */
	if (bpf_l3_csum_replace(skb, inner_off + offsetof(struct iphdr, check), key.local, pod_ip,
				sizeof(pod_ip)) ||
	    bpf_skb_load_bytes(skb, inner_off + offsetof(struct iphdr, check), &new_check,
			       sizeof(new_check)) ||
	    bpf_l4_csum_replace(skb, csum_off, old_check, new_check, sizeof(new_check)) ||
	    bpf_l4_csum_replace(skb, csum_off, key.local, pod_ip, sizeof(pod_ip)) ||
	    bpf_l4_csum_replace(skb, csum_off, key.local_port, pod_port, sizeof(pod_port)) ||
	    bpf_skb_store_bytes(skb, inner_off + offsetof(struct iphdr, saddr), &pod_ip,
				sizeof(pod_ip), 0) ||
	    bpf_skb_store_bytes(skb, port_off, &pod_port, sizeof(pod_port), 0))
		return -1;
	/* The outer destination: the pod instead of the node. */
	if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), key.local, pod_ip,
				sizeof(pod_ip)) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct iphdr, daddr), &pod_ip,
				sizeof(pod_ip), 0))
		return -1;
	snat_count(SNAT_ICMP_ERROR);
	return 1;
}

/* A packet for the node: if it answers a SNATed flow, translate its destination back to the
 * pod. 1 if translated, 0 if not ours, -1 to drop. */
static __always_inline int snat_in(struct __sk_buff *skb, struct iphdr *ip,
				   struct snat_config *cfg)
{
	struct nat_packet pkt = {};
	struct nat_entry *claim;
	__be32 pod_ip;
	__be16 pod_port;

	if (!nat_parse(skb, ip, 0, &pkt))
		return snat_icmp_error(skb, ip, cfg);
	claim = nat_in.lookup(&pkt.key);
	if (!claim) {
		__u16 port = bpf_ntohs(pkt.key.local_port);

		if (pkt.key.proto != IPPROTO_ICMP && port >= cfg->port_min && port <= cfg->port_max)
			snat_count(SNAT_UNTRACKED);
		return 0;
	}
	nat_touch(claim, &pkt, bpf_ktime_get_ns());
	pod_ip = claim->addr;
	pod_port = claim->port;
	if (nat_rewrite(skb, &pkt, ETH_HLEN + offsetof(struct iphdr, daddr), pkt.key.local, pod_ip,
			pod_port))
		return -1;
	snat_count(SNAT_IN);
	return 1;
}

#endif
