#!/bin/sh
# Container entrypoint: let bcc find kernel headers, install the CNI plugins on the node, then
# become the agent ("$@", vpcni-agent by default) so SIGTERM reaches it directly. The agent
# writes the network config (from VPCNI_CONFLIST_TEMPLATE into HOST_CNI_CONFDIR_PATH) once it
# is ready.
set -eu
# bcc compiles the tc programs against /lib/modules/$(uname -r)/build; the node's kernel is not
# the image's, but the image's Debian headers carry the UAPI structs the programs need.
kdir=/lib/modules/$(uname -r)
if [ ! -e "$kdir/build" ]; then
  hdr=$(ls -d /lib/modules/*/build 2>/dev/null | sort -V | tail -1 || true)
  if [ -n "$hdr" ]; then
    ln -sfn "$(dirname "$hdr")" "$kdir"
  fi
fi
"$(dirname "$0")/install-cni.sh"
export VPCNI_CONFLIST_TEMPLATE="${VPCNI_CONFLIST_TEMPLATE:-$(dirname "$0")/10-vpcni.conflist}"
exec "$@"
