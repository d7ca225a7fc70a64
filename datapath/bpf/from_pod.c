/* tc ingress of each pod's host veth: anti-spoofing, counters, and the pod's way out. */
#include "vpcni.h"

/* Destinations the kernel does not send out of the pod's ENI go through the kernel as usual:
 * the node's own addresses, and pods it routes to a host veth without an endpoint entry (pods
 * the VPC CNI wired before the node switched to vpcni, see agent/adopt.py). */
static __always_inline int not_via_eni(struct __sk_buff *skb, struct iphdr *ip, __u32 eni_ifindex)
{
	struct bpf_fib_lookup fib = {};
	long found;

	fib.family = AF_INET;
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	fib.ifindex = skb->ingress_ifindex;
	found = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (found == BPF_FIB_LKUP_RET_NOT_FWDED)
		return 1;
	/* fib.ifindex is the egress device once a route matched, whether or not a neighbour
	 * entry exists yet. */
	return (found == BPF_FIB_LKUP_RET_SUCCESS || found == BPF_FIB_LKUP_RET_NO_NEIGH) &&
	       fib.ifindex != eni_ifindex;
}

/* Hand the packet to the kernel's stack (netfilter, conntrack, policy routing). */
static __always_inline int to_kernel(struct counters *count)
{
	if (count)
		count->kernel_path++;
	return VPCNI_PASS;
}

int from_pod(struct __sk_buff *skb)
{
	struct counters zero = {};
	__u32 ifindex = skb->ingress_ifindex;
	struct flow pod = {}, peer = {};
	struct iphdr *ip = NULL;
	enum parsed parsed;
	struct counters *count;
	struct endpoint *src, *dst;
	enum l4_kind kind;
	struct eni *eni;
	__u8 one = 1;
	long verdict;

	parsed = parse_ipv4(skb, &ip);
	if (parsed == PARSED_OTHER)
		return VPCNI_PASS;
	count = counters.lookup_or_try_init(&ifindex, &zero);
	if (count) {
		count->packets++;
		count->bytes += skb->len;
	}
	/* An IPv4 packet whose source cannot be read cannot be proven the pod's own. */
	if (parsed != PARSED_IPV4 || !ip) {
		if (count)
			count->spoof_drops++;
		return VPCNI_DROP;
	}
	src = endpoints.lookup(&ip->saddr);
	if (!src || src->host_ifindex != ifindex) {
		if (count)
			count->spoof_drops++;
		return VPCNI_DROP;
	}
	kind = l4_flows(skb, ip, &pod, &peer);
	if (kind == L4_KERNEL)
		return to_kernel(count);
	dst = endpoints.lookup(&ip->daddr);
	if (!dst && !in_vpc(ip->daddr)) {
		/* Service ClusterIPs (kube-proxy DNAT), the internet (SNAT), peered networks: the
		 * kernel routes them, and replies of TCP/UDP flows are sent back to it (from_eni).
		 * Recorded even when the peer's end already is (to_pod saw a VIP answer before). */
		if (kind == L4_PORTS && !kernel_flows.lookup(&pod))
			kernel_flows.update(&pod, &one);
		return to_kernel(count);
	}
	/* A flow the kernel NATs stays there both ways, else conntrack sees half of it: the
	 * pod's own port (a Service client; also its later flows from that port), or the peer's
	 * (this pod is the backend answering a local Service client, or a client that reached it
	 * through the node: NodePort, hostPort). */
	if (kind == L4_PORTS && (kernel_flows.lookup(&pod) || kernel_flows.lookup(&peer)))
		return to_kernel(count);
	if (dst) {
		verdict = deliver_to_pod(skb, ip, dst);
	} else {
		eni = enis.lookup(&src->eni_ifindex);
		if (!eni || not_via_eni(skb, ip, src->eni_ifindex) || !forward_hop(ip))
			return VPCNI_PASS;
		struct bpf_redir_neigh nh = {.nh_family = AF_INET, .ipv4_nh = eni->gateway};
		verdict = vpcni_redirect_neigh(src->eni_ifindex, &nh, sizeof(nh), 0);
	}
	if (verdict == VPCNI_REDIRECT && count)
		count->redirected++;
	return verdict;
}
