/* tc ingress of each ENI: traffic for a local pod goes straight into the pod's netns, except
 * replies of flows the kernel NATs (kernel_flows), which conntrack must translate back. */
#include "vpcni.h"

int from_eni(struct __sk_buff *skb)
{
	struct iphdr *ip = ipv4_header(skb);
	struct flow remote = {}, pod = {};
	struct endpoint *dst;
	enum l4_kind kind;

	if (!ip)
		return VPCNI_PASS;
	dst = endpoints.lookup(&ip->daddr);
	if (!dst)
		return VPCNI_PASS;
	kind = l4_flows(skb, ip, &remote, &pod);
	if (kind == L4_KERNEL || (kind == L4_PORTS && kernel_flows.lookup(&pod)))
		return VPCNI_PASS;
	return deliver_to_pod(skb, ip, dst);
}
