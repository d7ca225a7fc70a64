"""`make_datapath`: the datapath the settings ask for, or kernel mode when BPF cannot load."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from ipaddress import IPv4Network

from datapath.bpf import MAX_ENDPOINTS, Programs
from datapath.modes import BpfDatapath, KernelDatapath
from datapath.port import Datapath, NoDatapath, SnatPolicy

log = logging.getLogger(__name__)
MODES = ("bpf", "kernel", "none")


async def make_datapath(
    mode: str,
    *,
    host_netns: str | None,
    vpc_cidrs: Sequence[IPv4Network],
    mtu: int = 9001,
    workers: int = 4,
    max_endpoints: int = MAX_ENDPOINTS,
    snat: SnatPolicy | None = None,
) -> Datapath:
    """The datapath for `mode` ("bpf", "kernel" or "none"); `mtu` is the ENI MTU
    (AWS_VPC_ENI_MTU), set on secondary ENIs as the VPC CNI does. `vpc_cidrs` (IMDS) is
    where BPF mode redirects past the host's stack; the rest goes through the kernel, so
    kube-proxy's Service DNAT applies. `snat` (BPF mode): SNAT of pods' traffic to the world,
    aws-node's default when None.

    "bpf" compiles the programs here (once per agent start, ~0.4 s, on a thread); when bcc is
    missing or cannot compile (no kernel headers) it logs why and returns kernel mode, whose
    `.mode` and status show the result.
    """
    if mode == "none":
        return NoDatapath()
    if mode == "kernel":
        return KernelDatapath(host_netns=host_netns, eni_mtu=mtu, workers=workers)
    if mode != "bpf":
        raise ValueError(f"unknown datapath mode {mode!r}; expected one of {', '.join(MODES)}")
    try:
        programs = await asyncio.to_thread(Programs, host_netns, max_endpoints=max_endpoints)
    except Exception as e:  # bcc raises bare Exception on compile errors, ImportError if absent
        reason = _why(e)
        log.warning("BPF datapath unavailable (%s); using kernel mode", reason)
        return KernelDatapath(
            host_netns=host_netns, eni_mtu=mtu, workers=workers, fallback_reason=reason
        )
    return BpfDatapath(
        programs,
        vpc_cidrs=vpc_cidrs,
        host_netns=host_netns,
        eni_mtu=mtu,
        workers=workers,
        snat=snat,
    )


def _why(error: Exception) -> str:
    """bcc only says "Failed to compile"; name the usual cause when it applies."""
    first = str(error).splitlines()[0] if str(error) else ""
    reason = f"{type(error).__name__}: {first}"
    headers = os.environ.get("BCC_KERNEL_SOURCE") or f"/lib/modules/{os.uname().release}/build"
    if not os.path.isdir(os.path.join(headers, "include")):
        reason += f" (no kernel headers at {headers})"
    return reason
