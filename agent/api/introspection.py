"""Introspection for SREs: ENIs, pods, the pool and its plans, env settings, health.

Served on TCP (INTROSPECTION_BIND_ADDRESS) and on the agent's Unix socket. Read-only.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from agent.api.cni import json_response
from agent.api.keys import NODE
from agent.cloud.port import Ec2Error
from agent.executor import describe
from agent.ipam.planner import max_enis, prefix_mode
from agent.ipam.subnets import prefix_report, prefixes_wanted
from agent.node import Node


def enis(node: Node) -> dict[str, Any]:
    """GET /v1/enis?format=vpcni: vpcni's own shape (per block counts, MACs, subnets)."""
    now = node.clock()
    stats = node.state.stats(now)
    out = []
    for eni in sorted(node.state.enis.values(), key=lambda e: e.device_number):
        cidrs = [
            {
                "cidr": str(block.cidr),
                "prefix": block.is_prefix,
                "assigned": block.assigned_count,
                "cooling": block.cooling_count(now),
            }
            for block in sorted(eni.blocks.values(), key=lambda b: b.base)
        ]
        out.append(
            {
                "id": eni.id,
                "device_number": eni.device_number,
                "primary": eni.primary,
                "subnet_id": eni.subnet_id,
                "subnet_cidr": str(eni.subnet_cidr),
                "primary_ip": str(eni.primary_ip),
                "mac": eni.mac,
                "cidrs": cidrs,
            }
        )
    return {
        "mode": "prefix" if prefix_mode(node.settings.pool, node.instance) else "secondary",
        "total_ips": stats.total,
        "assigned_ips": stats.assigned,
        "cooling_ips": stats.cooling,
        "enis": out,
    }


def aws_node_enis(node: Node) -> dict[str, Any]:
    """GET /v1/enis: aws-node's shape (`map[networkCard]ENIInfos`, Go's JSON field names), so
    scripts and jq filters written for aws-node keep working. Only network card 0 is managed.
    Container IDs and interface names are blanked, as aws-node blanks them."""
    now = node.clock()
    stats = node.state.stats(now)
    cooldown = node.settings.pool.ip_cooldown_period
    leases = {lease.ip: lease for lease in node.state.leases()}
    out: dict[str, Any] = {}
    for eni in node.state.enis.values():
        cidrs: dict[str, Any] = {}
        for block in eni.blocks.values():
            addresses: dict[str, Any] = {}
            for bit in range(block.size):
                ip = block.address(bit)
                lease = leases.get(ip) if block.assigned >> bit & 1 else None
                cool_until = block.cooling.get(bit)
                if lease is None and cool_until is None:
                    continue
                addresses[str(ip)] = {
                    "Address": str(ip),
                    "IPAMKey": {
                        "networkName": lease.key.network_name if lease else "",
                        "containerID": "",
                        "ifName": "",
                    },
                    "IPAMMetadata": {
                        "k8sPodNamespace": lease.pod_namespace if lease else "",
                        "k8sPodName": lease.pod_name if lease else "",
                    },
                    "AssignedTime": go_time(lease.assigned_at if lease else None),
                    "UnassignedTime": go_time(
                        None if lease or cool_until is None else cool_until - cooldown
                    ),
                }
            cidrs[str(block.cidr)] = {
                "Cidr": {
                    "IP": str(block.cidr.network_address),
                    "Mask": base64.b64encode(block.cidr.netmask.packed).decode(),
                },
                "IPAddresses": addresses,
                "IsPrefix": block.is_prefix,
                "AddressFamily": "4",
            }
        out[eni.id] = {
            "ID": eni.id,
            "IsPrimary": eni.primary,
            "IsTrunk": False,
            "IsEFA": False,
            "DeviceNumber": eni.device_number,
            "AvailableIPv4Cidrs": cidrs,
            "IPv6Cidrs": {},
            "IsExcludedForPodIPs": node.state.custom_networking and eni.primary,
            "RouteTableID": MAIN_TABLE if eni.primary else eni.device_number + 1,
            "SubnetID": eni.subnet_id,
        }
    return {"0": {"TotalIPs": stats.total, "AssignedIPs": stats.assigned, "ENIs": out}}


# The primary ENI uses the node's main table; ENI n uses table n + 1, as in the VPC CNI.
MAIN_TABLE = 254
_GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def go_time(epoch: float | None) -> str:
    """A time as Go's encoding/json writes time.Time (RFC 3339, UTC); None is Go's zero."""
    if epoch is None:
        return _GO_ZERO_TIME
    stamp = datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="microseconds")
    whole, _, fraction = stamp.removesuffix("+00:00").partition(".")
    fraction = fraction.rstrip("0")
    return f"{whole}.{fraction}Z" if fraction else f"{whole}Z"


def ipamd_env(node: Node) -> dict[str, Any]:
    """GET /v1/ipamd-env-settings: aws-node's keys with the values in force, typed as aws-node
    types them (an unset IP target is 0), then vpcni's own."""
    pool = node.settings.pool
    return {
        "WARM_IP_TARGET": pool.warm_ip_target or 0,
        "WARM_ENI_TARGET": pool.warm_eni_target,
        "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG": pool.custom_networking,
        "MINIMUM_IP_TARGET": pool.minimum_ip_target or 0,
        "WARM_PREFIX_TARGET": pool.warm_prefix_target,
        "ENABLE_PREFIX_DELEGATION": pool.prefix_delegation,
        "MAX_ENI": pool.max_eni,
        "IP_COOLDOWN_PERIOD": pool.ip_cooldown_period,
        "DISABLE_LEAKED_ENI_CLEANUP": not node.settings.leaked_eni_cleanup,
        "CLUSTER_NAME": node.settings.cluster_name,
        "ADDITIONAL_ENI_TAGS": dict(node.settings.additional_eni_tags),
        "VPCNI_PREFIX_FALLBACK": pool.prefix_fallback,
        "VPCNI_ADD_WAIT_MS": node.settings.add_wait_ms,
        "VPCNI_EC2_QPS": node.settings.ec2_qps,
        "VPCNI_EC2_BURST": node.settings.ec2_burst,
        "VPCNI_IGNORED": [w.split()[0] for w in node.settings.warnings if "ignores it" in w],
    }


def networkutils_env(node: Node) -> dict[str, Any]:
    """GET /v1/networkutils-env-settings: the datapath settings in force. The SNAT ones as
    parsed; only BPF mode SNATs, so other modes report EXTERNALSNAT true (no SNAT on the node)
    and no exclusions."""
    snat = node.settings.snat
    bpf = node.datapath.mode == "bpf"
    return {
        "AWS_VPC_ENI_MTU": node.settings.mtu,
        "POD_MTU": node.settings.pod_mtu,
        "AWS_VPC_K8S_CNI_VETHPREFIX": node.settings.veth_prefix,
        "AWS_VPC_K8S_CNI_EXTERNALSNAT": snat.external or not bpf,
        "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS": [str(c) for c in snat.exclude] if bpf else [],
        "AWS_VPC_K8S_CNI_RANDOMIZESNAT": snat.randomize,
        "VPCNI_DATAPATH": node.datapath.mode,
    }


def eni_configs(node: Node) -> dict[str, Any]:
    """GET /v1/eni-configs: the ENIConfig in force for new ENIs, where it came from and the
    Kubernetes watch behind it (aws-node answers with the spec alone)."""
    out: dict[str, Any] = {
        "custom_networking": node.settings.pool.custom_networking,
        "subnet": node.limits.new_eni_subnet,
        "securityGroups": list(node.executor.security_groups),
    }
    watch = node.kube_watch
    if watch is not None and watch.follows_eni_configs:
        choice = watch.choice
        out["name"] = choice.name if choice else None
        out["source"] = choice.source if choice else "waiting for the first list"
        out["kubernetes"] = watch.status.view()
    elif node.settings.eni_config is not None:
        out["source"] = f"file {node.settings.eni_config} (VPCNI_ENI_CONFIG)"
    return out


def pods(node: Node) -> list[dict[str, Any]]:
    """GET /v1/pods."""
    return [
        {
            "network_name": lease.key.network_name,
            "container_id": lease.key.container_id,
            "ifname": lease.key.ifname,
            "pod_namespace": lease.pod_namespace,
            "pod_name": lease.pod_name,
            "ip": str(lease.ip),
            "eni_id": lease.eni_id,
            "cidr": str(lease.cidr),
            "assigned_at": lease.assigned_at,
        }
        for lease in sorted(node.state.leases(), key=lambda item: item.ip)
    ]


def pool(node: Node) -> dict[str, Any]:
    """GET /v1/pool: targets, short/over, max pods, recent plans and why, back-off, EC2 calls."""
    now = node.clock()
    decision = node.decide()
    stats = decision.stats
    settings = node.settings.pool
    return {
        "mode": "prefix" if prefix_mode(settings, node.instance) else "secondary",
        "instance_type": node.instance.name,
        "settings": {
            "ENABLE_PREFIX_DELEGATION": settings.prefix_delegation,
            "WARM_ENI_TARGET": settings.warm_eni_target,
            "WARM_IP_TARGET": settings.warm_ip_target,
            "MINIMUM_IP_TARGET": settings.minimum_ip_target,
            "WARM_PREFIX_TARGET": settings.warm_prefix_target,
            "MAX_ENI": settings.max_eni,
            "IP_COOLDOWN_PERIOD": settings.ip_cooldown_period,
            "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG": settings.custom_networking,
            "VPCNI_PREFIX_FALLBACK": settings.prefix_fallback,
        },
        "max_pods": node.max_pods,
        "max_pods_source": node.max_pods_source,
        "stats": {
            "total": stats.total,
            "assigned": stats.assigned,
            "available": stats.available,
            "cooling": stats.cooling,
            "prefixes": stats.prefixes,
            "free_prefixes": stats.free_prefixes,
            "enis": stats.enis,
        },
        "short": decision.short,
        "over": decision.over,
        "next": {
            "action": None if decision.action is None else describe(decision.action),
            "reason": decision.reason,
        },
        "plans": [
            {
                "at": record.at,
                "action": record.action,
                "reason": record.reason,
                "outcome": record.outcome,
                "duration_ms": round(record.duration_ms, 3),
            }
            for record in reversed(node.plans)
        ],
        "backoff": [
            {
                "subnet_id": entry.subnet_id,
                "failures": entry.failures,
                "retry_in_s": round(max(entry.until - now, 0.0), 3),
                "fallback": settings.prefix_fallback,
            }
            for entry in node.backoff.subnets.values()
        ],
        "ec2_pause_s": round(node.ec2_pause(), 3),
        "ec2_calls": {action: dict(values) for action, values in node.ec2.call_stats().items()},
    }


async def subnets(node: Node) -> dict[str, Any]:
    """GET /v1/subnets: for each subnet the node uses, free addresses, free aligned /28s, the
    CIDR reservations, how many more prefixes this node can get there, what limits it and, when
    fragmentation does, the reservation command that would fix it. Asks EC2 (not cached)."""
    state, limits = node.state, node.limits
    used = {e.subnet_id for e in state.pod_enis()}
    if limits.new_eni_subnet is not None:  # None: custom networking without an ENIConfig yet
        used.add(limits.new_eni_subnet)
    enis_left = max_enis(node.settings.pool, node.instance) - state.attached_on_card0()
    out: list[dict[str, Any]] = []
    for subnet_id in sorted(used):
        try:
            usage = await node.ec2.subnet_usage(subnet_id)
        except Ec2Error as e:
            out.append({"subnet_id": subnet_id, "error": str(e)})
            continue
        wanted = prefixes_wanted(
            state,
            subnet_id=subnet_id,
            slots_per_eni=node.instance.slots_per_eni,
            enis_left=enis_left,
            new_eni_subnet=limits.new_eni_subnet,
            max_pods=limits.max_pods,
        )
        report = prefix_report(usage, node_wants=wanted)
        node.subnet_reports[subnet_id] = report
        out.append(
            {
                "subnet_id": report.subnet_id,
                "cidr": str(report.cidr),
                "free_addresses": report.free_addresses,
                "free_prefix_blocks": report.free_prefix_blocks,
                "reservations": [
                    {"cidr": str(r.cidr), "type": r.type} for r in report.reservations
                ],
                "node_wants": report.node_wants,
                "node_can_get": report.node_can_get,
                "limit": report.limit,
                "fix": report.fix,
                "fix_in_use": report.fix_in_use,
            }
        )
    return {"prefix_mode": prefix_mode(node.settings.pool, node.instance), "subnets": out}


def routes() -> list[web.RouteDef]:
    """The introspection GET routes."""

    def view(fn: Any) -> Any:
        async def handle(request: web.Request) -> web.Response:
            return json_response(fn(request.app[NODE]))

        return handle

    async def healthz(request: web.Request) -> web.Response:
        return json_response({"ok": True})

    async def subnets_view(request: web.Request) -> web.Response:
        return json_response(await subnets(request.app[NODE]))

    async def readyz(request: web.Request) -> web.Response:
        node = request.app[NODE]
        body: dict[str, Any] = {"ready": node.ready and node.accepting}
        # The API server's state is a detail, not a condition: ADD and DEL never need it.
        if node.kube_watch is not None:
            body["kubernetes"] = node.kube_watch.status.view()
        return json_response(body, status=200 if body["ready"] else 503)

    async def eni_view(request: web.Request) -> web.Response:
        node = request.app[NODE]
        fmt = request.query.get("format", "aws-node")
        if fmt not in ("aws-node", "vpcni"):
            return json_response({"error": "format must be aws-node or vpcni"}, status=400)
        return json_response(enis(node) if fmt == "vpcni" else aws_node_enis(node))

    paths = [
        web.get("/v1/enis", eni_view),
        web.get("/v1/pods", view(pods)),
        web.get("/v1/pool", view(pool)),
        web.get("/v1/datapath", view(lambda node: dict(node.datapath.status()))),
        web.get("/v1/subnets", subnets_view),
        web.get("/v1/eni-configs", view(eni_configs)),
        web.get("/v1/ipamd-env-settings", view(ipamd_env)),
        web.get("/v1/networkutils-env-settings", view(networkutils_env)),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
    ]
    # aws-node answers `/` with the list of its paths ({"AvailableCommands": [...]}).
    listing = {"AvailableCommands": sorted(route.path for route in paths)}

    async def root(request: web.Request) -> web.Response:
        return json_response(listing)

    return [*paths, web.get("/", root)]
