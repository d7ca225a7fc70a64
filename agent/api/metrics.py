"""Prometheus metrics, read from the node at scrape time.

The VPC CNI's awscni_* names where they mean the same thing, vpcni_* for what is new. Nothing
in the core or the node bumps a Prometheus object: a collector reads their plain counters.

The VPC CNI (Go client) exposes its counters under their bare names, `awscni_add_ip_req_count`,
where prometheus-client would append `_total`; dashboards and alerts written for it query the
bare names, so those few are exposed untyped under exactly that name (`vpc_cni_counter`).
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from agent.api.keys import NODE
from agent.ipam.planner import max_enis
from agent.node import Node


class NodeCollector:
    """Yields every metric from the node's current state."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        stats = node.state.stats(node.clock())
        c = node.counters

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        yield gauge("awscni_eni_allocated", "ENIs attached to the node", len(node.state.enis))
        yield gauge(
            "awscni_eni_max", "Max ENIs on this node", max_enis(node.settings.pool, node.instance)
        )
        yield gauge("awscni_total_ip_addresses", "Addresses in the pool", stats.total)
        yield gauge("awscni_assigned_ip_addresses", "Addresses leased to pods", stats.assigned)
        yield gauge("awscni_total_ipv4_prefixes", "/28 prefixes in the pool", stats.prefixes)
        yield gauge("awscni_ip_max", "Max pods on this node", node.max_pods)
        yield gauge("vpcni_cooling_ip_addresses", "Released addresses in cooldown", stats.cooling)
        yield vpc_cni_counter("awscni_add_ip_req_count", "CNI ADD requests", c.add)
        yield vpc_cni_counter("awscni_del_ip_req_count", "CNI DEL requests", c.delete)
        yield counter("vpcni_add_errors", "CNI ADD requests that failed", c.add_errors)
        yield counter(
            "vpcni_add_waited", "CNI ADDs that found the pool empty and waited", c.add_waited
        )
        yield counter("vpcni_plans", "Pool actions executed", c.plans)
        yield counter("vpcni_plan_errors", "Pool actions that failed", c.plan_errors)
        yield counter("vpcni_leases_dropped", "Leases dropped: block vanished", c.leases_dropped)
        yield counter(
            "vpcni_del_spool_replayed", "DELs spooled by the plugin, replayed", c.del_spool_replayed
        )
        yield counter(
            "vpcni_del_spool_rejected", "Spool files that were not a DEL", c.del_spool_rejected
        )
        yield counter("vpcni_checkpoint_writes", "Checkpoint writes", node.store.writes)
        errors = vpc_cni_counter("awscni_ipamd_error_count", "IPAM errors by kind", labels=["fn"])
        for kind, count in sorted(c.ipamd_errors.items()):
            errors.add_metric([kind], count)
        yield errors
        backoff = GaugeMetricFamily(
            "vpcni_prefix_fallback",
            "1 while prefixes on a subnet back off (secondary-IP fallback in use)",
            labels=["subnet"],
        )
        for subnet in node.backoff.subnets:
            backoff.add_metric([subnet], 1)
        yield backoff
        wait = c.add_wait_ms
        yield HistogramMetricFamily(
            "vpcni_add_wait_ms",
            "Time an ADD waited for a free address (ms)",
            buckets=wait.cumulative(),
            sum_value=wait.sum,
        )
        yield from _ec2_metrics(node)


def vpc_cni_counter(
    name: str, doc: str, value: float | None = None, *, labels: list[str] | None = None
) -> UnknownMetricFamily:
    """A VPC CNI counter under its exact name (no `_total`), as the VPC CNI exposes it."""
    return UnknownMetricFamily(name, doc, value=value, labels=labels)


def _ec2_metrics(node: Node) -> Iterator[Metric]:
    reqs = vpc_cni_counter("awscni_ec2api_req_count", "EC2 API calls", labels=["fn"])
    errs = vpc_cni_counter("awscni_ec2api_error_count", "EC2 API errors", labels=["fn"])
    latency = SummaryMetricFamily(
        "awscni_aws_api_latency_ms", "EC2 API latency (ms)", labels=["api"]
    )
    for action, values in sorted(node.ec2.call_stats().items()):
        calls = values.get("calls", 0.0)
        reqs.add_metric([action], calls)
        errs.add_metric([action], values.get("errors", 0.0))
        latency.add_metric([action], count_value=int(calls), sum_value=values.get("total_ms", 0.0))
    yield reqs
    yield errs
    yield latency
    seconds = HistogramMetricFamily(
        "vpcni_ec2_api_latency_seconds", "EC2 API latency per request sent", labels=["api"]
    )
    for action, histogram in sorted(node.ec2.latency_histograms().items()):
        seconds.add_metric([action], histogram.cumulative(), sum_value=histogram.sum)
    yield seconds


def registry(node: Node) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(NodeCollector(node))
    return reg


def routes(node: Node) -> list[web.RouteDef]:
    """GET /metrics in the Prometheus text format."""
    reg = registry(node)

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(reg)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get("/metrics", metrics)]


__all__ = ["NODE", "NodeCollector", "registry", "routes"]
