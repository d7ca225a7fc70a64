/* Maps, structs and verdicts shared by the tc programs; datapath/bpf.py mirrors each of them.
 * Built by bcc with -DVPCNI_PIN_DIR="..." and -DVPCNI_MAX_ENDPOINTS=N (see bpf.py, cflags()). */
#ifndef VPCNI_H
#define VPCNI_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/pkt_cls.h>

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
};

BPF_TABLE_PINNED("hash", __be32, struct endpoint, endpoints, VPCNI_MAX_ENDPOINTS,
		 VPCNI_PIN_DIR "/endpoints");
BPF_TABLE_PINNED("hash", __u32, struct eni, enis, 64, VPCNI_PIN_DIR "/enis");
BPF_TABLE_PINNED("percpu_hash", __u32, struct counters, counters, VPCNI_MAX_ENDPOINTS,
		 VPCNI_PIN_DIR "/counters");

/* bcc 0.26 declares this helper with 3 arguments; the kernel's takes 4. */
static long (*vpcni_redirect_neigh)(__u32 ifindex, struct bpf_redir_neigh *params, int plen,
				    __u64 flags) = (void *)BPF_FUNC_redirect_neigh;

/* The IPv4 header of an Ethernet frame, or NULL for anything else (ARP, IPv6, runts). */
static __always_inline struct iphdr *ipv4_header(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return NULL;
	return ip;
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
