"""The Kubernetes port: this node's max pods and its ENIConfig, watched (read-only) as aws-node
reads them.

Reflectors (client-go's pattern: list, watch from the list's resourceVersion, re-list on 410
Gone, back off on errors) follow this node (`MY_NODE_NAME`) and, with custom networking, the
cluster's ENIConfigs (`crd.k8s.amazonaws.com/v1alpha1`). After every change the rest of the
agent gets values, never the stream: the Node's `status.capacity.pods` (the kubelet's
--max-pods, which ipamd takes as its maxPods when it has the API server) and the pure
`select_eni_config`'s choice (`EniConfigChoice`). Nothing here sits on an ADD or DEL's path:
pods already have what they need, and an unreachable API server shows in `KubeStatus`
(`/readyz` details, metrics) instead; what was learned stays in force meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("vpcni.kube")

# aws-node's keys (pkg/eniconfig): an externally managed label wins, then the annotation, then
# the label; a node with none uses the ENIConfig named "default".
EXTERNAL_LABEL = "vpc.amazonaws.com/externalEniConfig"
DEFAULT_ANNOTATION = "k8s.amazonaws.com/eniConfig"
DEFAULT_LABEL = "k8s.amazonaws.com/eniConfig"
DEFAULT_NAME = "default"
# Back-off after a failed list or watch: 1 s doubling, jittered, capped.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EniConfigChoice:
    """The node's ENIConfig: its name, why that name, and its spec once it exists."""

    name: str
    source: str  # e.g. "annotation k8s.amazonaws.com/eniConfig"
    subnet: str | None = None  # None while no ENIConfig of that name exists
    security_groups: tuple[str, ...] = ()


def select_eni_config(
    *,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    eni_configs: Mapping[str, Mapping[str, Any]],
    annotation_key: str = DEFAULT_ANNOTATION,
    label_key: str = DEFAULT_LABEL,
) -> EniConfigChoice:
    """aws-node's rule for the node's ENIConfig, over plain values (`eni_configs`: name → spec)."""
    for where, values, key in (
        ("label", labels, EXTERNAL_LABEL),
        ("annotation", annotations, annotation_key),
        ("label", labels, label_key),
    ):
        if key in values:
            name, source = values[key], f"{where} {key}"
            break
    else:
        name, source = DEFAULT_NAME, "no annotation or label: the default ENIConfig"
    spec = eni_configs.get(name)
    if spec is None:
        return EniConfigChoice(name=name, source=source)
    groups = spec.get("securityGroups") or ()
    return EniConfigChoice(
        name=name,
        source=source,
        subnet=str(spec.get("subnet") or "") or None,
        security_groups=tuple(str(g) for g in groups),
    )


def capacity_pods(capacity: Mapping[str, Any] | None) -> int | None:
    """The Node's `status.capacity.pods` (what the kubelet's --max-pods made it) as a whole
    number, as ipamd reads it; None when the Node has none. ValueError when it is not a
    positive whole quantity ("110", "1k"; not "1.5" or "-3")."""
    from lightkube.utils.quantity import parse_quantity

    text = (capacity or {}).get("pods")
    if text is None:
        return None
    try:
        amount = parse_quantity(str(text))
    except ValueError:
        amount = None
    if amount is None or amount != amount.to_integral_value() or amount <= 0:
        raise ValueError(f"capacity.pods {text!r} is not a positive whole number")
    return int(amount)


@dataclass(slots=True)
class KubeStatus:
    """How the watch on the API server is doing (for /readyz details and metrics)."""

    connected: bool = False
    last_error: str = ""
    error_since: float | None = None  # wall clock of the first error of the current outage
    relists: int = 0  # lists after the first (410 Gone, errors)
    errors: int = 0
    events: int = 0

    def ok(self) -> None:
        self.connected, self.last_error, self.error_since = True, "", None

    def failed(self, error: str, now: float) -> None:
        self.errors += 1
        self.connected, self.last_error = False, error
        if self.error_since is None:
            self.error_since = now

    def view(self) -> dict[str, Any]:
        """The status as JSON-ready values."""
        return {
            "connected": self.connected,
            "last_error": self.last_error,
            "error_since": self.error_since,
            "relists": self.relists,
            "errors": self.errors,
            "events": self.events,
        }


class KubeWatch:
    """Follows this node (its capacity.pods) and, when `on_eni_config` is given, the
    ENIConfigs; calls back with each new value."""

    def __init__(
        self,
        *,
        client: Any,  # lightkube.AsyncClient (untyped here so tests and mypy need no stubs)
        node_name: str,
        on_max_pods: Callable[[int | None], None],
        on_eni_config: Callable[[EniConfigChoice], None] | None = None,
        annotation_key: str = DEFAULT_ANNOTATION,
        label_key: str = DEFAULT_LABEL,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        from lightkube.generic_resource import create_global_resource
        from lightkube.resources.core_v1 import Node

        self.client = client
        self.node_name = node_name
        self.on_max_pods = on_max_pods
        self.on_eni_config = on_eni_config
        self.annotation_key = annotation_key
        self.label_key = label_key
        self.clock = clock
        self.rng = rng or random.Random()
        self.status = KubeStatus()
        self.choice: EniConfigChoice | None = None
        # The Node's capacity.pods as last handed on (None: no Node, none set, or unreadable).
        self.max_pods: int | None = None
        self._capacity_error = ""
        self._node_kind = Node
        self._eni_config_kind = create_global_resource(
            group="crd.k8s.amazonaws.com",
            version="v1alpha1",
            kind="ENIConfig",
            plural="eniconfigs",
        )
        self._nodes: dict[str, Any] = {}
        self._eni_configs: dict[str, Any] = {}
        self._synced: set[str] = set()

    @property
    def follows_eni_configs(self) -> bool:
        """Does this watch choose the node's ENIConfig (custom networking from the API)?"""
        return self.on_eni_config is not None

    async def run(self) -> None:
        """Watch until cancelled; never raises for the API server's sake."""
        reflectors = [self._reflect("node", self._node_kind, self._nodes, fields=self.node_name)]
        if self.follows_eni_configs:
            reflectors.append(self._reflect("eniconfigs", self._eni_config_kind, self._eni_configs))
        await asyncio.gather(*reflectors)

    async def _reflect(
        self, what: str, kind: Any, store: dict[str, Any], fields: str | None = None
    ) -> None:
        from lightkube import ApiError

        selector = {"metadata.name": fields} if fields else None
        delay = BACKOFF_FIRST
        listed = False
        while True:
            try:
                listing = self.client.list(kind, fields=selector)
                objects = [obj async for obj in listing]
                version = listing.resourceVersion
                if listed:
                    self.status.relists += 1
                listed = True
                store.clear()
                store.update({obj.metadata.name: obj for obj in objects})
                self._synced.add(what)
                self.status.ok()
                self._recompute()
                delay = BACKOFF_FIRST
                async for event, obj in self.client.watch(
                    kind, fields=selector, resource_version=version
                ):
                    self.status.events += 1
                    if event == "DELETED":
                        store.pop(obj.metadata.name, None)
                    elif event in ("ADDED", "MODIFIED"):
                        store[obj.metadata.name] = obj
                    else:  # BOOKMARK: only a newer resourceVersion, which lightkube keeps
                        continue
                    self._recompute()
            except asyncio.CancelledError:
                raise
            except ApiError as e:
                if e.status.code == 410:  # our version is too old: list again, now
                    log.info("watch expired, listing again", extra={"what": what})
                    continue
                self._failed(what, f"{e.status.code} {e.status.message}")
            except Exception as e:  # unreachable, reset, bad JSON: back off and list again
                self._failed(what, f"{type(e).__name__}: {e}")
            else:
                continue
            await asyncio.sleep(delay * (0.5 + self.rng.random()))
            delay = min(delay * 2, BACKOFF_MAX)

    def _failed(self, what: str, error: str) -> None:
        if self.status.connected or not self.status.last_error:
            log.warning("Kubernetes API unreachable", extra={"what": what, "error": error})
        self.status.failed(error, self.clock())

    def _recompute(self) -> None:
        if "node" not in self._synced:
            return
        node = self._nodes.get(self.node_name)
        self._node_capacity(node)
        if self.follows_eni_configs and "eniconfigs" in self._synced:
            self._eni_config(node)

    def _node_capacity(self, node: Any) -> None:
        status = node.status if node is not None else None
        try:
            pods = capacity_pods(status.capacity if status is not None else None)
        except ValueError as e:  # aws-node refuses it too; the calculator's figure stands
            if str(e) != self._capacity_error:  # once, not at every status update
                log.error("cannot read max pods from the Node", extra={"error": str(e)})
            self._capacity_error, pods = str(e), None
        else:
            self._capacity_error = ""
        if pods == self.max_pods:
            return
        self.max_pods = pods
        try:
            self.on_max_pods(pods)
        except Exception:  # the watch must outlive a bad consumer
            log.exception("applying the Node's max pods failed")

    def _eni_config(self, node: Any) -> None:
        assert self.on_eni_config is not None
        metadata = node.metadata if node is not None else None
        choice = select_eni_config(
            labels=dict(metadata.labels or {}) if metadata else {},
            annotations=dict(metadata.annotations or {}) if metadata else {},
            eni_configs={
                name: dict(obj.get("spec") or {}) for name, obj in self._eni_configs.items()
            },
            annotation_key=self.annotation_key,
            label_key=self.label_key,
        )
        if choice != self.choice:
            self.choice = choice
            log.info(
                "ENIConfig in force",
                extra={
                    "eni_config": choice.name,
                    "source": choice.source,
                    "subnet": choice.subnet,
                    "security_groups": list(choice.security_groups),
                },
            )
            try:
                self.on_eni_config(choice)
            except Exception:  # the watch must outlive a bad consumer
                log.exception("applying the ENIConfig failed")


def client_from_env() -> Any:
    """A lightkube client from the pod's service account (in-cluster), or $KUBECONFIG."""
    from lightkube import AsyncClient, KubeConfig

    return AsyncClient(KubeConfig.from_env(), field_manager="vpcni")
