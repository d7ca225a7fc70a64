/* tc ingress of each ENI: traffic for a local pod goes straight into the pod's netns, except
 * flows the kernel NATs (kernel_flows), which conntrack must see both ways; replies to SNATed
 * flows are translated back (nat.h). */
#include "vpcni.h"
#include "nat.h"

int from_eni(struct __sk_buff *skb)
{
	struct flow remote = {}, local = {};
	struct iphdr *ip = NULL;
	struct snat_config *cfg;
	struct endpoint *dst;
	int translated;
	__u32 zero = 0;
	enum l4_kind kind;

	if (parse_ipv4(skb, &ip) != PARSED_IPV4 || !ip)
		return VPCNI_PASS; /* not IPv4, or for the kernel to drop */
	cfg = snat_config.lookup(&zero);
	if (cfg && cfg->node_ip && ip->daddr == cfg->node_ip) {
		/* A reply to a SNATed flow: back to the pod's address, then through the kernel,
		 * whose conntrack saw the request leave (and undoes a Service DNAT if any). */
		translated = snat_in(skb, ip, cfg);
		if (translated)
			return translated < 0 ? VPCNI_DROP : VPCNI_PASS;
		/* Not ours; the ICMP error check may have pulled data, which moves the packet. */
		if (parse_ipv4(skb, &ip) != PARSED_IPV4 || !ip)
			return VPCNI_PASS;
	}
	dst = endpoints.lookup(&ip->daddr);
	if (!dst)
		return VPCNI_PASS; /* for the node, or for the kernel to DNAT to a pod (to_pod) */
	kind = l4_flows(skb, ip, &remote, &local);
	if (kind == L4_KERNEL ||
	    (kind == L4_PORTS && (kernel_flows.lookup(&local) || kernel_flows.lookup(&remote))))
		return VPCNI_PASS;
	return deliver_to_pod(skb, ip, dst);
}
