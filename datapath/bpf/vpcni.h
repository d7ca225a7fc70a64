/* Maps, structs and verdicts shared by the tc programs; datapath/bpf.py mirrors each of them.
 * Built by bcc with -DVPCNI_PIN_DIR="...", -DVPCNI_MAX_ENDPOINTS=N, -DVPCNI_MAX_VPC_CIDRS=N and
 * -DVPCNI_MAX_FLOWS=N (see bpf.py, cflags()). */
#ifndef VPCNI_H
#define VPCNI_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/tcp.h>

/* What a program tells tc; Python: bpf.Verdict. */
enum vpcni_verdict {
	VPCNI_PASS = TC_ACT_OK,
	VPCNI_DROP = TC_ACT_SHOT,
	VPCNI_REDIRECT = TC_ACT_REDIRECT,
};

/* A pod on this node, keyed by its IPv4 address (network byte order). Python: bpf.Endpoint. */
struct endpoint {
	__u32 host_ifindex; /* host side of the pod's veth */
	__u32 eni_ifindex;  /* the ENI that owns the pod's address: its traffic leaves there */
	__u8 pod_mac[ETH_ALEN];
	__u8 host_mac[ETH_ALEN];
};

/* An ENI, keyed by ifindex. Python: bpf.Eni. */
struct eni {
	__be32 gateway; /* the subnet's VPC router; the kernel resolves its MAC */
	__u8 mac[ETH_ALEN];
	__u8 pad[2];
};

/* Per pod, keyed by host veth ifindex (a forged source names no pod). Python: bpf.Counters. */
struct counters {
	__u64 packets;
	__u64 bytes;
	__u64 redirected;
	__u64 spoof_drops;
	__u64 kernel_path; /* handed to the kernel for NAT: Services, outside the VPC, see below */
};

/* A VPC CIDR, network byte order; slots are filled from 0, mask 0 ends the list.
 * Python: bpf.VpcCidr. */
struct vpc_cidr {
	__be32 network;
	__be32 mask;
};

/* The client's end of a TCP/UDP flow whose packets must all go through the kernel (netfilter
 * DNAT and conntrack, i.e. kube-proxy): DNAT never changes it, so the key matches the flow
 * both ways. A pod's end for its Service flows (from_pod), a remote client's for flows to the
 * node (from_eni: TCP NodePort, hostPort). Python: bpf.Flow. */
struct flow {
	__be32 ip;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

BPF_TABLE_PINNED("hash", __be32, struct endpoint, endpoints, VPCNI_MAX_ENDPOINTS,
		 VPCNI_PIN_DIR "/endpoints");
BPF_TABLE_PINNED("hash", __u32, struct eni, enis, 64, VPCNI_PIN_DIR "/enis");
/* "_v2": struct counters grew kernel_path; bcc cannot reuse a pin of another layout. */
BPF_TABLE_PINNED("percpu_hash", __u32, struct counters, counters, VPCNI_MAX_ENDPOINTS,
		 VPCNI_PIN_DIR "/counters_v2");
BPF_TABLE_PINNED("array", __u32, struct vpc_cidr, vpc_cidrs, VPCNI_MAX_VPC_CIDRS,
		 VPCNI_PIN_DIR "/vpc_cidrs");
/* LRU: nothing expires flows, the least recently used make room (a flow's every packet
 * refreshes it); the value is unused. */
BPF_TABLE_PINNED("lru_hash", struct flow, __u8, kernel_flows, VPCNI_MAX_FLOWS,
		 VPCNI_PIN_DIR "/kernel_flows");

/* bcc 0.26 declares this helper with 3 arguments; the kernel's takes 4. */
static long (*vpcni_redirect_neigh)(__u32 ifindex, struct bpf_redir_neigh *params, int plen,
				    __u64 flags) = (void *)BPF_FUNC_redirect_neigh;

/* What a parser says about a frame. */
enum parsed {
	PARSED_IPV4,  /* the IPv4 header (options included) and L4_LEN bytes after it are linear,
		       * or the packet ends before that */
	PARSED_OTHER, /* not IPv4: ARP, IPv6 */
	PARSED_BAD,   /* says IPv4 but cannot be parsed: a runt or a bad header length */
};

/* Bytes a program reads past the IPv4 header: a TCP header without options (the largest L4
 * header it parses; UDP and ICMP take 8). */
#define L4_LEN 20

/* Make the first `want` bytes of the frame (or all of a shorter one) readable. Usually they
 * are: GSO and GRO packets keep their headers linear, so nothing is copied on the fast path. */
static __always_inline int headers_linear(struct __sk_buff *skb, __u32 want)
{
	if (want > skb->len)
		want = skb->len;
	if ((void *)(long)skb->data + want <= (void *)(long)skb->data_end)
		return 0;
	return bpf_skb_pull_data(skb, want);
}

/* The IPv4 header of a frame, made readable. A sender may put it outside the linear area
 * (AF_PACKET with PACKET_VNET_HDR), where a check against data_end fails although the packet is
 * a perfectly routable IPv4 packet: pull it in rather than treating it as "not IPv4". */
static __always_inline enum parsed parse_ipv4(struct __sk_buff *skb, struct iphdr **out)
{
	void *data, *data_end;
	struct iphdr *ip;
	__u32 ihl;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return PARSED_OTHER;
	if (headers_linear(skb, ETH_HLEN + sizeof(*ip) + L4_LEN) < 0)
		return PARSED_BAD;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > data_end || ((struct ethhdr *)data)->h_proto != bpf_htons(ETH_P_IP))
		return PARSED_BAD;
	ihl = ip->ihl;
	if (ihl < 5)
		return PARSED_BAD;
	if (ihl > 5) { /* options: the L4 header starts later */
		if (headers_linear(skb, ETH_HLEN + ihl * 4 + L4_LEN) < 0)
			return PARSED_BAD;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		ip = data + ETH_HLEN;
		if ((void *)(ip + 1) > data_end)
			return PARSED_BAD;
	}
	if ((void *)ip + ip->ihl * 4 > data_end)
		return PARSED_BAD;
	*out = ip;
	return PARSED_IPV4;
}

/* Whether an address is inside one of the VPC's CIDRs (the fast path's reach). */
static __always_inline int in_vpc(__be32 addr)
{
	struct vpc_cidr *cidr;

#pragma unroll
	for (__u32 i = 0; i < VPCNI_MAX_VPC_CIDRS; i++) {
		__u32 slot = i;

		cidr = vpc_cidrs.lookup(&slot);
		if (!cidr || !cidr->mask)
			return 0;
		if ((addr & cidr->mask) == cidr->network)
			return 1;
	}
	return 0;
}

enum l4_kind {
	L4_OTHER,  /* no ports: ICMP echo, other protocols */
	L4_PORTS,  /* TCP or UDP with its ports: the flows are filled in */
	L4_KERNEL, /* fragments and ICMP errors: only the kernel can match them to a NATed flow
		    * (conntrack reassembles, and translates the header an ICMP error quotes) */
};

#define IP_FRAGMENT 0x3FFF /* more-fragments flag or a fragment offset */

/* Classify a packet and, for TCP/UDP, fill in the flow seen from each end. */
static __always_inline enum l4_kind l4_flows(struct __sk_buff *skb, struct iphdr *ip,
					     struct flow *src, struct flow *dst)
{
	void *data_end = (void *)(long)skb->data_end;
	__u8 *l4 = (__u8 *)ip + ip->ihl * 4;
	__be16 *ports = (__be16 *)l4;

	if (ip->frag_off & bpf_htons(IP_FRAGMENT))
		return L4_KERNEL;
	if (ip->protocol == IPPROTO_ICMP) {
		if (l4 + 1 > (__u8 *)data_end)
			return L4_OTHER;
		/* destination unreachable (incl. fragmentation needed), time exceeded, parameter
		 * problem */
		return (*l4 == 3 || *l4 == 11 || *l4 == 12) ? L4_KERNEL : L4_OTHER;
	}
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return L4_OTHER;
	if ((void *)(ports + 2) > data_end)
		return L4_OTHER;
	src->ip = ip->saddr;
	src->port = ports[0];
	src->proto = ip->protocol;
	dst->ip = ip->daddr;
	dst->port = ports[1];
	dst->proto = ip->protocol;
	return L4_PORTS;
}

/* Count a routing hop like the kernel's ip_decrease_ttl(), with the incremental checksum;
 * false when the packet must not be forwarded (the kernel then sends time-exceeded). */
static __always_inline int forward_hop(struct iphdr *ip)
{
	__u32 check = ip->check;

	if (ip->ttl <= 1)
		return 0;
	check += bpf_htons(0x0100);
	ip->check = (__sum16)(check + (check >= 0xFFFF));
	ip->ttl--;
	return 1;
}

/* Hand the frame to a local pod: its MACs, straight into its netns (skips the host stack). */
static __always_inline int deliver_to_pod(struct __sk_buff *skb, struct iphdr *ip,
					  struct endpoint *ep)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return VPCNI_DROP;
	if (!forward_hop(ip))
		return VPCNI_PASS;
	__builtin_memcpy(eth->h_dest, ep->pod_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, ep->host_mac, ETH_ALEN);
	return bpf_redirect_peer(ep->host_ifindex, 0);
}

#endif
