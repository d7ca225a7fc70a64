#!/bin/sh
# Puts the vpcni CNI plugin and its network config on the node, from inside the DaemonSet pod
# through hostPath mounts. agent.cni.install writes both atomically (temp file + rename), so a
# runtime never execs or parses a half-written file.
#   HOST_CNI_BIN_DIR   the node's /opt/cni/bin as mounted here    (default /host/opt/cni/bin)
#   HOST_CNI_CONF_DIR  the node's /etc/cni/net.d as mounted here  (default /host/etc/cni/net.d)
#   VPCNI_SHIM_PYTHON  the node's python3: the plugin runs on the node, not in this image
#                      (default /usr/bin/python3)
#   VPCNI_CONFLIST     conflist template (default: 10-vpcni.conflist beside this script);
#                      VPCNI_SOCKET, POD_MTU/AWS_VPC_ENI_MTU, AWS_VPC_K8S_CNI_VETHPREFIX,
#                      AWS_VPC_K8S_PLUGIN_LOG_FILE and AWS_VPC_K8S_PLUGIN_LOG_LEVEL override it.
set -eu
bin_dir=${HOST_CNI_BIN_DIR:-/host/opt/cni/bin}
conf_dir=${HOST_CNI_CONF_DIR:-/host/etc/cni/net.d}
conflist=${VPCNI_CONFLIST:-$(dirname "$0")/10-vpcni.conflist}

python3 -m agent.cni.install shim --python "${VPCNI_SHIM_PYTHON:-/usr/bin/python3}" "$bin_dir/vpcni"
python3 -m agent.cni.install conflist "$conflist" "$conf_dir/10-vpcni.conflist"
echo "install-cni: wrote $bin_dir/vpcni and $conf_dir/10-vpcni.conflist" >&2
