/* tc ingress of each pod's host veth: anti-spoofing, counters, and the pod's way out. */
#include "vpcni.h"

/* Node-local destinations (the node's own addresses) go through the kernel as usual. */
static __always_inline int is_local(struct __sk_buff *skb, struct iphdr *ip)
{
	struct bpf_fib_lookup fib = {};

	fib.family = AF_INET;
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	fib.ifindex = skb->ingress_ifindex;
	return bpf_fib_lookup(skb, &fib, sizeof(fib), 0) == BPF_FIB_LKUP_RET_NOT_FWDED;
}

int from_pod(struct __sk_buff *skb)
{
	struct counters zero = {};
	__u32 ifindex = skb->ingress_ifindex;
	struct iphdr *ip = ipv4_header(skb);
	struct counters *count;
	struct endpoint *src, *dst;
	struct eni *eni;
	long verdict;

	if (!ip)
		return VPCNI_PASS;
	count = counters.lookup_or_try_init(&ifindex, &zero);
	if (count) {
		count->packets++;
		count->bytes += skb->len;
	}
	src = endpoints.lookup(&ip->saddr);
	if (!src || src->host_ifindex != ifindex) {
		if (count)
			count->spoof_drops++;
		return VPCNI_DROP;
	}
	dst = endpoints.lookup(&ip->daddr);
	if (dst) {
		verdict = deliver_to_pod(skb, ip, dst);
	} else {
		eni = enis.lookup(&src->eni_ifindex);
		if (!eni || is_local(skb, ip) || !forward_hop(ip))
			return VPCNI_PASS;
		struct bpf_redir_neigh nh = {.nh_family = AF_INET, .ipv4_nh = eni->gateway};
		verdict = vpcni_redirect_neigh(src->eni_ifindex, &nh, sizeof(nh), 0);
	}
	if (verdict == VPCNI_REDIRECT && count)
		count->redirected++;
	return verdict;
}
