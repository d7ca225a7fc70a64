/* tc egress of each ENI: a pod's packet that the kernel routed towards the world leaves with
 * the node's primary IP (SNAT, nat.h), through the primary ENI. */
#include "vpcni.h"
#include "nat.h"

int to_eni(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct snat_config *cfg = snat_config.lookup(&zero);
	struct iphdr *ip = NULL;
	struct eni *primary;

	if (!cfg || !cfg->node_ip)
		return VPCNI_PASS; /* AWS_VPC_K8S_CNI_EXTERNALSNAT=true */
	if (parse_ipv4(skb, &ip) != PARSED_IPV4 || !ip)
		return VPCNI_PASS;
	if (ip->saddr == cfg->node_ip) {
		/* The node's address leaving a secondary ENI: a pod of that ENI answering a
		 * NodePort/hostPort client through conntrack, routed by the pod's policy rule before
		 * the source became the node's. The VPC drops it there: use the primary. */
		if (skb->ifindex != cfg->node_ifindex)
			goto primary;
		return VPCNI_PASS;
	}
	/* The node's own traffic, and pods' traffic inside the VPC, keep their source. */
	if (!endpoints.lookup(&ip->saddr) || in_vpc(ip->daddr))
		return VPCNI_PASS;
	if (snat_excluded(ip->daddr)) {
		snat_count(SNAT_EXCLUDED);
		return VPCNI_PASS;
	}
	if (snat_out(skb, ip, cfg) == VPCNI_DROP)
		return VPCNI_DROP;
	if (skb->ifindex == cfg->node_ifindex)
		return VPCNI_PASS;
	/* A pod of a secondary ENI: its policy route chose that ENI, but the node's address
	 * belongs to the primary, and the VPC drops a source an ENI does not own. */
primary:
	primary = enis.lookup(&cfg->node_ifindex);
	if (!primary)
		return VPCNI_DROP;
	struct bpf_redir_neigh nh = {.nh_family = AF_INET, .ipv4_nh = primary->gateway};
	return vpcni_redirect_neigh(cfg->node_ifindex, &nh, sizeof(nh), 0);
}
