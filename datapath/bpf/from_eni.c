/* tc ingress of each ENI: traffic for a local pod goes straight into the pod's netns. */
#include "vpcni.h"

int from_eni(struct __sk_buff *skb)
{
	struct iphdr *ip = ipv4_header(skb);
	struct endpoint *dst;

	if (!ip)
		return VPCNI_PASS;
	dst = endpoints.lookup(&ip->daddr);
	if (!dst)
		return VPCNI_PASS;
	return deliver_to_pod(skb, ip, dst);
}
