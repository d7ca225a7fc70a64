"""Introspection for SREs: ENIs, pods, the pool and its plans, env settings, health.

Served on TCP (INTROSPECTION_BIND_ADDRESS) and on the agent's Unix socket. Read-only.
"""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web

from agent.api.cni import json_response
from agent.api.keys import NODE
from agent.executor import describe
from agent.ipam.planner import prefix_mode
from agent.node import Node

# The VPC CNI's /v1/ipamd-env-settings and /v1/networkutils-env-settings keys.
IPAMD_ENV = (
    "AWS_VPC_CNI_NODE_PORT_SUPPORT",
    "AWS_VPC_ENI_MTU",
    "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG",
    "AWS_VPC_K8S_CNI_VETHPREFIX",
    "AWS_VPC_K8S_CNI_LOGLEVEL",
    "AWS_VPC_K8S_CNI_BACKING_STORE",
    "ENABLE_PREFIX_DELEGATION",
    "WARM_ENI_TARGET",
    "WARM_IP_TARGET",
    "MINIMUM_IP_TARGET",
    "WARM_PREFIX_TARGET",
    "MAX_ENI",
    "IP_COOLDOWN_PERIOD",
    "DISABLE_INTROSPECTION",
    "DISABLE_METRICS",
    "DISABLE_LEAKED_ENI_CLEANUP",
    "CLUSTER_NAME",
    "ADDITIONAL_ENI_TAGS",
    "VPCNI_PREFIX_FALLBACK",
    "VPCNI_ADD_WAIT_MS",
    "VPCNI_EC2_QPS",
    "VPCNI_EC2_BURST",
)
NETWORKUTILS_ENV = (
    "AWS_VPC_K8S_CNI_VETHPREFIX",
    "AWS_VPC_ENI_MTU",
    "POD_MTU",
    "AWS_VPC_K8S_CNI_EXTERNALSNAT",
    "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
)


def enis(node: Node) -> dict[str, Any]:
    """GET /v1/enis."""
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


def _env(keys: tuple[str, ...]) -> dict[str, str]:
    return {key: os.environ.get(key, "") for key in keys}


def routes() -> list[web.RouteDef]:
    """The introspection GET routes."""

    def view(fn: Any) -> Any:
        async def handle(request: web.Request) -> web.Response:
            return json_response(fn(request.app[NODE]))

        return handle

    async def healthz(request: web.Request) -> web.Response:
        return json_response({"ok": True})

    async def readyz(request: web.Request) -> web.Response:
        node = request.app[NODE]
        if node.ready and node.accepting:
            return json_response({"ready": True})
        return json_response({"ready": False}, status=503)

    return [
        web.get("/v1/enis", view(enis)),
        web.get("/v1/pods", view(pods)),
        web.get("/v1/pool", view(pool)),
        web.get("/v1/datapath", view(lambda node: dict(node.datapath.status()))),
        web.get("/v1/ipamd-env-settings", view(lambda node: _env(IPAMD_ENV))),
        web.get("/v1/networkutils-env-settings", view(lambda node: _env(NETWORKUTILS_ENV))),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
    ]
