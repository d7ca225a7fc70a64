/* tc ingress of each ENI: traffic for a local pod goes straight into the pod's netns, except
 * flows the kernel NATs (kernel_flows), which conntrack must see both ways. */
#include "vpcni.h"
#include "nat.h"

/* The first packet of a TCP connection (SYN without ACK). */
static __always_inline int tcp_syn(struct __sk_buff *skb, struct iphdr *ip)
{
	void *data_end = (void *)(long)skb->data_end;
	struct tcphdr *tcp = (void *)ip + ip->ihl * 4;

	if (ip->protocol != IPPROTO_TCP || (void *)(tcp + 1) > data_end)
		return 0;
	return tcp->syn && !tcp->ack;
}

int from_eni(struct __sk_buff *skb)
{
	struct flow remote = {}, local = {};
	struct iphdr *ip = NULL;
	struct snat_config *cfg;
	struct endpoint *dst;
	int translated;
	__u32 zero = 0;
	enum l4_kind kind;
	__u8 one = 1;

	if (parse_ipv4(skb, &ip) != PARSED_IPV4 || !ip)
		return VPCNI_PASS; /* not IPv4, or for the kernel to drop */
	cfg = snat_config.lookup(&zero);
	if (cfg && cfg->node_ip && ip->daddr == cfg->node_ip) {
		/* A reply to a SNATed flow: back to the pod's address, then through the kernel,
		 * whose conntrack saw the request leave (and undoes a Service DNAT if any). */
		translated = snat_in(skb, ip, cfg);
		if (translated)
			return translated < 0 ? VPCNI_DROP : VPCNI_PASS;
	}
	kind = l4_flows(skb, ip, &remote, &local);
	dst = endpoints.lookup(&ip->daddr);
	if (!dst) {
		/* A connection to the node: a NodePort (externalTrafficPolicy Local) or hostPort
		 * DNAT may hand it to a local pod without SNAT. The client's end is what that DNAT
		 * keeps: record it, so that the pod's replies go back through the kernel too
		 * (from_pod). Only on a SYN: replies to the node's own connections (API server,
		 * DNS) must not send pods' flows to those servers the slow way. */
		if (kind == L4_PORTS && tcp_syn(skb, ip))
			kernel_flows.update(&remote, &one);
		return VPCNI_PASS;
	}
	if (kind == L4_KERNEL ||
	    (kind == L4_PORTS && (kernel_flows.lookup(&local) || kernel_flows.lookup(&remote))))
		return VPCNI_PASS;
	return deliver_to_pod(skb, ip, dst);
}
