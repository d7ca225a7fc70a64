/* tc egress of each pod's host veth. Redirects enter the pod's netns past this hook, so only
 * packets the kernel forwards get here: those it may have DNATed (NodePort, hostPort, Service
 * replies, SNAT replies). Record the sender's end, so that the pod's replies to it go back
 * through the kernel too (from_pod), where conntrack undoes the DNAT. This covers UDP, which
 * has no SYN to tell a new client by, and never slows the node's own flows. */
#include "vpcni.h"

int to_pod(struct __sk_buff *skb)
{
	struct flow remote = {}, local = {};
	struct iphdr *ip = NULL;
	__u8 one = 1;

	if (parse_ipv4(skb, &ip) != PARSED_IPV4 || !ip)
		return VPCNI_PASS;
	/* Look first: a write per packet would bounce the entry between CPUs. */
	if (l4_flows(skb, ip, &remote, &local) == L4_PORTS && !kernel_flows.lookup(&remote))
		kernel_flows.update(&remote, &one);
	return VPCNI_PASS;
}
