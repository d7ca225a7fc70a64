"""A small stateful stand-in for kube-apiserver (none can be installed here), for the kube tests.

It speaks the real REST + watch protocol for the two kinds vpcni reads: cluster-scoped `nodes`
(core v1) and `eniconfigs` (crd.k8s.amazonaws.com/v1alpha1) — list with a resourceVersion,
`fieldSelector=metadata.name=`, watch as JSON lines from a resourceVersion, ERROR events with
410 Gone for a version older than the retained history, BOOKMARK events when the client allows
them, `timeoutSeconds`. Every object stored is validated first: nodes against the Kubernetes
OpenAPI schema (kubernetes-validate), ENIConfigs against the CRD's openAPIV3Schema in deploy/.
Tests drive it: put/delete objects, compact the history, expire the open watches, go down.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import orjson
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
CRD = ROOT / "deploy" / "eniconfig-crd.yaml"
KUBERNETES_VERSION = "1.31"

PATHS = {
    "nodes": "/api/v1/nodes",
    "eniconfigs": "/apis/crd.k8s.amazonaws.com/v1alpha1/eniconfigs",
}
LIST_KINDS = {
    "nodes": ("v1", "NodeList"),
    "eniconfigs": ("crd.k8s.amazonaws.com/v1alpha1", "ENIConfigList"),
}


@dataclass
class Event:
    version: int
    type: str
    obj: dict[str, Any]


@dataclass
class Collection:
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: list[Event] = field(default_factory=list)


def eni_config_schema() -> dict[str, Any]:
    """The ENIConfig CRD's openAPIV3Schema, as deploy/ ships it."""
    crd = yaml.safe_load(CRD.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


class FakeApiServer:
    """State, and the aiohttp app that serves it."""

    def __init__(self) -> None:
        self.version = 100
        self.oldest = 100  # watches from a version below this get 410 Gone
        self.collections = {kind: Collection() for kind in PATHS}
        self.down = False
        self.requests: list[str] = []  # "list nodes", "watch eniconfigs@105", ...
        self.open_watches: dict[str, int] = dict.fromkeys(PATHS, 0)  # streaming now, by kind
        self._changed = asyncio.Condition()
        self._expire = 0  # bumped to end every open watch with 410
        self._schema = eni_config_schema()

    # -- what tests do ---------------------------------------------------------------------

    async def put(self, kind: str, obj: dict[str, Any]) -> None:
        """Create or replace an object (validated first), as kubectl apply would."""
        self.validate(kind, obj)
        coll = self.collections[kind]
        name = obj["metadata"]["name"]
        self.version += 1
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(self.version)
        kind_type = "MODIFIED" if name in coll.objects else "ADDED"
        coll.objects[name] = stored
        coll.history.append(Event(self.version, kind_type, stored))
        await self._notify()

    async def delete(self, kind: str, name: str) -> None:
        coll = self.collections[kind]
        obj = coll.objects.pop(name)
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        coll.history.append(Event(self.version, "DELETED", obj))
        await self._notify()

    def compact(self) -> None:
        """Forget the history, as etcd compaction does: older versions get 410 Gone."""
        self.oldest = self.version + 1
        for coll in self.collections.values():
            coll.history.clear()

    async def expire_watches(self) -> None:
        """End every open watch with a 410 ERROR event (their version was compacted away)."""
        self.compact()
        self._expire += 1
        await self._notify()

    async def set_down(self, down: bool) -> None:
        """An outage: every request answers 503 and open watches are cut."""
        self.down = down
        await self._notify()

    def validate(self, kind: str, obj: dict[str, Any]) -> None:
        """Refuse what a real API server would refuse (schema errors), as it would."""
        if kind == "nodes":
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        else:
            jsonschema.validate(obj, self._schema)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- the protocol ----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        for kind, path in PATHS.items():
            app.router.add_get(path, self._handler(kind))
        return app

    def _handler(self, kind: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            if self.down:
                return _status(503, "ServiceUnavailable", "the fake API server is down")
            name = _name_selector(request.query.get("fieldSelector", ""))
            if request.query.get("watch") in ("true", "1"):
                return await self._watch(request, kind, name)
            self.requests.append(f"list {kind}")
            coll = self.collections[kind]
            items = [o for n, o in coll.objects.items() if name is None or n == name]
            api_version, list_kind = LIST_KINDS[kind]
            body = {
                "apiVersion": api_version,
                "kind": list_kind,
                "metadata": {"resourceVersion": str(self.version)},
                "items": items,
            }
            return web.Response(body=orjson.dumps(body), content_type="application/json")

        return handle

    async def _watch(self, request: web.Request, kind: str, name: str | None) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self.version)
        self.requests.append(f"watch {kind}@{since}")
        bookmarks = request.query.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(request.query.get("timeoutSeconds") or 300)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if since < self.oldest - 1:
            await _send(response, {"type": "ERROR", "object": _gone()})
            return response
        expire = self._expire
        sent = since
        self.open_watches[kind] += 1
        try:
            await self._stream(response, kind, name, sent, expire, bookmarks, timeout)
        finally:
            self.open_watches[kind] -= 1
        return response

    async def _stream(
        self,
        response: web.StreamResponse,
        kind: str,
        name: str | None,
        sent: int,
        expire: int,
        bookmarks: bool,
        timeout: float,
    ) -> None:
        """Send events from `sent` on until the watch ends (timeout, expiry, outage)."""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            async with asyncio.timeout(timeout):
                while not self.down:
                    if self._expire != expire:
                        await _send(response, {"type": "ERROR", "object": _gone()})
                        break
                    for event in self.collections[kind].history:
                        if event.version <= sent:
                            continue
                        sent = event.version
                        if name is None or event.obj["metadata"]["name"] == name:
                            await _send(response, {"type": event.type, "object": event.obj})
                    if bookmarks and sent < self.version:
                        sent = self.version
                        await _send(response, _bookmark(kind, self.version))
                    async with self._changed:
                        await self._changed.wait()


async def _send(response: web.StreamResponse, event: dict[str, Any]) -> None:
    await response.write(orjson.dumps(event) + b"\n")


def _gone() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "message": "too old resource version",
        "reason": "Expired",
        "code": 410,
    }


def _bookmark(kind: str, version: int) -> dict[str, Any]:
    api_version, list_kind = LIST_KINDS[kind]
    return {
        "type": "BOOKMARK",
        "object": {
            "apiVersion": api_version,
            "kind": list_kind.removesuffix("List"),
            "metadata": {"resourceVersion": str(version)},
        },
    }


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
            "reason": reason, "code": code}  # fmt: skip
    return web.Response(status=code, body=orjson.dumps(body), content_type="application/json")


def _name_selector(selector: str) -> str | None:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if key == "metadata.name":
            return value.lstrip("=")
    return None


@contextlib.asynccontextmanager
async def serving(server: FakeApiServer, kubeconfig: Path) -> AsyncIterator[str]:
    """Serve on loopback and write a kubeconfig for it; yields the server URL."""
    runner = web.AppRunner(server.app(), shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": url}}],
                "users": [{"name": "vpcni", "user": {"token": "fake-token"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "vpcni"}}],
                "current-context": "fake",
            }
        )
    )
    try:
        yield url
    finally:
        await server.set_down(True)
        await runner.cleanup()


def node(
    name: str,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    pods: str | None = None,
) -> dict[str, Any]:
    """A Node object as the kubelet registers it (the fields vpcni reads and a few more);
    `pods`: its status.capacity.pods (what the kubelet's --max-pods made it)."""
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, **(labels or {})},
            "annotations": annotations or {},
        },
        "spec": {"providerID": f"aws:///us-west-2a/i-{abs(hash(name)) % 10**17:017x}"},
    }
    if pods is not None:
        obj["status"] = {"capacity": {"cpu": "96", "memory": "384Gi", "pods": pods}}
    return obj


def eni_config(name: str, subnet: str, groups: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "crd.k8s.amazonaws.com/v1alpha1",
        "kind": "ENIConfig",
        "metadata": {"name": name},
        "spec": {"subnet": subnet, "securityGroups": groups},
    }
