"""Prometheus metrics, read from the node at scrape time, in aws-node's names, types and labels.

aws-node's metrics (utils/prometheusmetrics) keep their exact names, types and label names, so
dashboards, alerts and the cni-metrics-helper that read aws-node read vpcni the same way;
vpcni_* families are vpcni's own. Nothing in the core or the node bumps a Prometheus object: a
collector reads their plain counters.

aws-node's Go client exposes a counter under its bare name (`awscni_add_ip_req_count`, typed
`counter`); prometheus-client's text writer would rename it `..._total`. So the text is written
here (`exposition`), from prometheus-client's metric families, with every family's name as it
is declared.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Iterable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from agent.api.keys import NODE
from agent.ipam.planner import max_enis
from agent.node import Node

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# aws-node's start-up histogram buckets (seconds).
STARTUP_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class AwsCounter(Metric):
    """A counter under its exact name, as aws-node's Go client exposes it (no `_total`)."""

    def __init__(
        self, name: str, doc: str, labels: Iterable[str] = (), value: float | None = None
    ) -> None:
        super().__init__(name, doc, "counter")
        self.label_names = tuple(labels)
        if value is not None:
            self.add([], value)

    def add(self, values: Iterable[str], value: float) -> None:
        """One sample, its label values in the declared order."""
        self.add_sample(self.name, dict(zip(self.label_names, values, strict=True)), value)


def datapath_metrics(status: Mapping[str, Any]) -> Iterator[Metric]:
    """From GET /v1/datapath: rules BPF mode bypasses, and SNAT counters by reason."""
    bypass = status.get("policy_bypass") or {}
    yield GaugeMetricFamily(
        "vpcni_policy_bypass_rules",
        "Netfilter FORWARD rules of the node (a NetworkPolicy engine?) that BPF mode's "
        "redirects skip; use --datapath kernel to keep them in force",
        value=len(bypass.get("rules") or ()),
    )
    snat = status.get("snat")
    if snat:
        packets = CounterMetricFamily(
            "vpcni_snat", "BPF SNAT events by reason (see docs/datapath.md)", labels=["reason"]
        )
        for reason, count in sorted(snat["counters"].items()):
            packets.add_metric([reason], count)
        yield packets
        yield GaugeMetricFamily("vpcni_snat_flows", "SNAT port claims held", value=snat["flows"])


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

        yield gauge("awscni_eni_allocated", "The number of ENIs allocated", len(node.state.enis))
        yield gauge(
            "awscni_eni_max",
            "The maximum number of ENIs that can be attached to the instance",
            max_enis(node.settings.pool, node.instance),
        )
        yield gauge("awscni_total_ip_addresses", "The total number of IP addresses", stats.total)
        yield gauge(
            "awscni_assigned_ip_addresses",
            "The number of IP addresses assigned to pods",
            stats.assigned,
        )
        yield gauge(
            "awscni_total_ipv4_prefixes", "The total number of IPv4 prefixes", stats.prefixes
        )
        yield gauge(
            "awscni_ip_max",
            "The maximum number of IP addresses that can be allocated to the instance",
            node.max_pods,
        )
        yield from _per_cidr_and_eni(node)
        yield AwsCounter(
            "awscni_add_ip_req_count", "The number of add IP address requests", value=c.add
        )
        deletes = AwsCounter(
            "awscni_del_ip_req_count", "The number of delete IP address requests", ["reason"]
        )
        for reason, count in sorted(c.delete_reasons.items()):
            deletes.add([reason], count)
        yield deletes
        yield AwsCounter(
            "awscni_no_available_ip_addresses",
            "The number of pod IP assignments that fail due to no available IP addresses",
            value=c.ipamd_errors.get("no_available_ip", 0),
        )
        errors = AwsCounter(
            "awscni_ipamd_error_count", "The number of errors encountered in ipamd", ["fn"]
        )
        for kind, count in sorted(c.ipamd_errors.items()):
            errors.add([kind], count)
        yield errors
        in_progress = GaugeMetricFamily(
            "awscni_ipamd_action_inprogress",
            "The number of ipamd actions in progress",
            labels=["fn"],
        )
        for fn, count in sorted(c.in_progress.items()):
            in_progress.add_metric([fn], count)
        yield in_progress
        reconcile = AwsCounter(
            "awscni_reconcile_count",
            "The number of times ipamd reconciles on ENIs and IP/Prefix addresses",
            ["fn"],
        )
        for fn, count in sorted(c.reconcile.items()):
            reconcile.add([fn], count)
        yield reconcile
        yield AwsCounter(
            "awscni_force_removed_enis",
            "The number of ENIs force removed while they had assigned pods",
            value=c.force_removed_enis,
        )
        yield AwsCounter(
            "awscni_force_removed_ips",
            "The number of IPs force removed while they had assigned pods",
            value=c.force_removed_ips,
        )
        watch = node.kube_watch
        yield from _startup(c.startup_seconds, with_api_server=watch is not None)
        if watch is not None:
            yield gauge(
                "vpcni_kubernetes_api_connected",
                "1 while the watch on the Kubernetes API (Node, ENIConfigs) is connected",
                float(watch.status.connected),
            )
            yield counter(
                "vpcni_kubernetes_api_errors",
                "Failed lists and watches of the Kubernetes API",
                watch.status.errors,
            )
            yield counter(
                "vpcni_kubernetes_relists",
                "Lists after the first (410 Gone, reconnects)",
                watch.status.relists,
            )
        build = GaugeMetricFamily(
            "awscni_build_info",
            "A metric with a constant '1' value labeled by version and the runtime it runs on",
            labels=["version", "goversion"],
        )
        build.add_metric([_version(), f"python{platform.python_version()}"], 1)
        yield build
        yield gauge("vpcni_cooling_ip_addresses", "Released addresses in cooldown", stats.cooling)
        yield counter("vpcni_add_errors", "CNI ADD requests that failed", c.add_errors)
        yield counter(
            "vpcni_add_waited", "CNI ADDs that found the pool empty and waited", c.add_waited
        )
        yield counter("vpcni_plans", "Pool actions executed", c.plans)
        yield counter("vpcni_plan_errors", "Pool actions that failed", c.plan_errors)
        yield counter("vpcni_leases_dropped", "Leases dropped: block vanished", c.leases_dropped)
        yield counter(
            "vpcni_leases_reconciled",
            "Leases released because their pod was gone (no host veth, no netns): lost DELs",
            c.leases_reconciled,
        )
        yield counter(
            "vpcni_leases_adopted",
            "aws-node leases taken over when switching from aws-node in place",
            c.leases_adopted,
        )
        yield counter(
            "vpcni_leases_not_adopted",
            "aws-node leases not taken over: address in no block of this node, or leased twice",
            c.leases_not_adopted,
        )
        yield counter(
            "vpcni_del_spool_replayed", "DELs spooled by the plugin, replayed", c.del_spool_replayed
        )
        yield counter(
            "vpcni_del_spool_rejected", "Spool files that were not a DEL", c.del_spool_rejected
        )
        yield counter("vpcni_checkpoint_writes", "Checkpoint writes", node.store.writes)
        backoff = GaugeMetricFamily(
            "vpcni_prefix_fallback",
            "1 while prefixes on a subnet back off (secondary-IP fallback in use)",
            labels=["subnet"],
        )
        for subnet in node.backoff.subnets:
            backoff.add_metric([subnet], 1)
        yield backoff
        yield from _subnet_metrics(node)
        yield from datapath_metrics(node.datapath.status())
        wait = c.add_wait_ms
        yield HistogramMetricFamily(
            "vpcni_add_wait_ms",
            "Time an ADD waited for a free address (ms)",
            buckets=wait.cumulative(),
            sum_value=wait.sum,
        )
        yield from _ec2_metrics(node)


def _subnet_metrics(node: Node) -> Iterator[Metric]:
    """The last prefix report per subnet (refreshed by GET /v1/subnets, `vpcni-ctl subnet`:
    it lists every interface of the subnet, too costly for each scrape)."""
    families = {
        "free_prefix_blocks": GaugeMetricFamily(
            "vpcni_subnet_free_prefix_blocks",
            "Aligned /28s free in the subnet, as of the last subnet report",
            labels=["subnet"],
        ),
        "node_can_get": GaugeMetricFamily(
            "vpcni_subnet_prefixes_obtainable",
            "More /28 prefixes this node can get in the subnet, as of the last report",
            labels=["subnet"],
        ),
        "fragmented": GaugeMetricFamily(
            "vpcni_subnet_fragmented",
            "1 when fragmentation, not free addresses, limits prefixes (a reservation fixes it)",
            labels=["subnet"],
        ),
    }
    for subnet, report in sorted(node.subnet_reports.items()):
        families["free_prefix_blocks"].add_metric([subnet], report.free_prefix_blocks)
        families["node_can_get"].add_metric([subnet], report.node_can_get)
        families["fragmented"].add_metric([subnet], int(report.limit == "fragmentation"))
    yield from families.values()


def _per_cidr_and_eni(node: Node) -> Iterator[Metric]:
    per_cidr = GaugeMetricFamily(
        "awscni_assigned_ip_per_cidr",
        "The total number of IP addresses assigned per cidr",
        labels=["cidr"],
    )
    per_eni = GaugeMetricFamily(
        "awscni_assigned_ip_per_eni",
        "The number of allocated ips partitioned by eni",
        labels=["eni"],
    )
    for eni in node.state.enis.values():
        for block in eni.blocks.values():
            per_cidr.add_metric([str(block.cidr)], block.assigned_count)
        per_eni.add_metric([eni.id], sum(b.assigned_count for b in eni.blocks.values()))
    yield per_cidr
    yield per_eni


def _startup(seconds: float | None, *, with_api_server: bool) -> Iterator[Metric]:
    startup = HistogramMetricFamily(
        "awscni_ipamd_startup_duration_seconds",
        "The duration of IPAMD startup from process start to ready to serve CNI requests",
        labels=["success", "with_api_server", "failure_reason"],
    )
    if seconds is not None:
        buckets = [(_number(b), float(seconds <= b)) for b in STARTUP_BUCKETS]
        labels = ["true", "true" if with_api_server else "false", ""]
        startup.add_metric(labels, [*buckets, ("+Inf", 1.0)], seconds)
    yield startup


def _version() -> str:
    try:
        return version("vpcni")
    except PackageNotFoundError:
        return "unknown"


def _ec2_metrics(node: Node) -> Iterator[Metric]:
    reqs = AwsCounter(
        "awscni_ec2api_req_count", "The number of requests made to EC2 APIs by CNI", ["fn"]
    )
    errs = AwsCounter("awscni_ec2api_error_count", "The number of failed EC2 APIs requests", ["fn"])
    for action, values in sorted(node.ec2.call_stats().items()):
        reqs.add([action], values.get("calls", 0.0))
        errs.add([action], values.get("errors", 0.0))
    yield reqs
    yield errs
    latency = SummaryMetricFamily(
        "awscni_aws_api_latency_ms",
        "AWS API call latency in ms",
        labels=["api", "error", "status"],
    )
    for (action, failed, status), (count, total) in sorted(node.ec2.api_outcomes().items()):
        latency.add_metric(
            [action, "true" if failed else "false", status], count_value=count, sum_value=total
        )
    yield latency
    api_errors = AwsCounter(
        "awscni_aws_api_error_count",
        "The number of times AWS API returns an error",
        ["api", "error"],
    )
    for (action, code), count in sorted(node.ec2.api_errors().items()):
        api_errors.add([action, code], count)
    yield api_errors
    seconds = HistogramMetricFamily(
        "vpcni_ec2_api_latency_seconds", "EC2 API latency per request sent", labels=["api"]
    )
    for action, histogram in sorted(node.ec2.latency_histograms().items()):
        seconds.add_metric([action], histogram.cumulative(), sum_value=histogram.sum)
    yield seconds


def exposition(metrics: Iterable[Metric]) -> bytes:
    """The Prometheus text format (0.0.4), each family under the name it was declared with."""
    lines: list[str] = []
    for metric in metrics:
        mtype = {"unknown": "untyped"}.get(metric.type, metric.type)
        name = metric.name
        # prometheus-client's own counters (process_cpu_seconds) name their samples `_total`.
        if mtype == "counter" and any(s.name == f"{name}_total" for s in metric.samples):
            name = f"{name}_total"
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        lines.append(f"# HELP {name} {doc}\n# TYPE {name} {mtype}\n")
        for sample in metric.samples:
            if sample.name.endswith("_created"):
                continue  # OpenMetrics-only samples; the Go client has none
            labels = ",".join(
                f'{key}="{_escape(value)}"' for key, value in sorted(sample.labels.items())
            )
            label_text = f"{{{labels}}}" if labels else ""
            lines.append(f"{sample.name}{label_text} {_number(sample.value)}\n")
    return "".join(lines).encode()


def _number(value: float) -> str:
    """A sample value as the Go client writes it (2, 0.25, +Inf, NaN)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def registry(node: Node) -> CollectorRegistry:
    """The node's metrics plus the process's (CPU, memory, file descriptors, start time)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(NodeCollector(node))
    ProcessCollector(registry=reg)
    return reg


def routes(node: Node) -> list[web.RouteDef]:
    """GET /metrics in the Prometheus text format."""
    reg = registry(node)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=exposition(reg.collect()), headers={"Content-Type": CONTENT_TYPE})

    return [web.get("/metrics", metrics)]


__all__ = ["NODE", "NodeCollector", "exposition", "registry", "routes"]
