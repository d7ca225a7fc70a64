#!/bin/sh
# The DaemonSet's init container (same image, privileged, host network): node settings the
# datapath needs before the agent starts. Each is idempotent and says what it did. The agent
# itself sets net.ipv4.ip_forward=1 at start (pods' traffic is routed through the node) and, in
# kernel mode, rp_filter=1 on each pod's host veth (its anti-spoofing; BPF mode checks sources in
# from_pod).
set -eu
# BPF mode pins its maps under /sys/fs/bpf so that a restarted or upgraded agent finds its pods'
# state: that must be a bpffs on the node. EKS AMIs mount it; elsewhere it is mounted here and
# reaches the node through the Bidirectional volume mount.
if ! grep -qs '^[^ ]* /sys/fs/bpf bpf ' /proc/mounts; then
  mount -t bpf bpf /sys/fs/bpf
  echo "node-init: mounted bpffs on /sys/fs/bpf"
fi
# Loose reverse-path filtering on the primary ENI (the default route's device), as aws-node
# does: a NodePort or hostPort connection arrives there and is DNATed to a pod on a secondary
# ENI, whose `from <pod> lookup <eni table>` rule makes the reverse path that ENI; strict
# filtering (1, several distributions' default) would drop it. The kernel applies the larger of
# conf/all and conf/<dev>, so 2 here is enough.
primary=$(ip -4 -o route show default | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
if [ -n "$primary" ]; then
  echo 2 >"/proc/sys/net/ipv4/conf/$primary/rp_filter"
  echo "node-init: net.ipv4.conf.$primary.rp_filter=2"
else
  echo "node-init: no default route: rp_filter left as it is" >&2
fi
