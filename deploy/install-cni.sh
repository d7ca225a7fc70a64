#!/bin/sh
# Puts the CNI plugins on the node, from inside the DaemonSet pod through hostPath mounts:
# vpcni (the static Go binary), and loopback and portmap (containernetworking-plugins), which
# containerd's CRI runs for every sandbox and for hostPorts. agent.cni.install copies each
# atomically (temp file + rename) and never replaces a newer plugin already on the node.
# The network config is not written here: the agent writes it once it is ready
# (VPCNI_CONFLIST_TEMPLATE, set by entrypoint.sh), so the node stays NotReady until then.
#   HOST_CNI_BIN_PATH  the node's /opt/cni/bin as mounted here (aws-node's name; HOST_CNI_BIN_DIR
#                      also works; default /host/opt/cni/bin)
#   VPCNI_PLUGIN_DIRS  where the image keeps the plugins, searched in order
#                      (default: this script's directory, then /usr/lib/cni)
set -eu
bin_dir=${HOST_CNI_BIN_PATH:-${HOST_CNI_BIN_DIR:-/host/opt/cni/bin}}
dirs=${VPCNI_PLUGIN_DIRS:-$(dirname "$0"):/usr/lib/cni}
set --
old_ifs=$IFS
IFS=:
for dir in $dirs; do set -- "$@" --from "$dir"; done
IFS=$old_ifs
python3 -m agent.cni.install plugins "$@" "$bin_dir"
