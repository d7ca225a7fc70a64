"""The CNI API on the agent's Unix socket: the plugin's requests in, CNI results out.

Validation happens here, before the node sees anything; every failure is a 4xx with a CNI error
body `{"code", "msg", "details"}` (4 bad env, 6 decode, 7 invalid config, 3 unknown container,
11 try again later, 50 STATUS: no IP can be had).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from agent.api.keys import NODE
from agent.ipam.state import IPAMKey
from agent.node import Node
from agent.pods import Attachment, NodeError, PodRequest

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
MAX_BODY = 64 * 1024
GATEWAY = "169.254.1.1"
CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Any absolute path (containerd may keep netns under its state dir): the datapath opens it once
# and refuses what is not a pod's network namespace (see datapath.netns).
NETNS_MAX = 4095
K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
# No '/', ':', '%' or whitespace (str.isspace's, as \s is for a str pattern).
IFNAME_CHARS = re.compile(r"[^/:%\s]+")


class CniError(Exception):
    """A request the API refuses; becomes an HTTP error with a CNI error body."""

    def __init__(self, code: int, msg: str, details: str = "", *, status: int = 400) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details
        self.status = status


def error_response(code: int, msg: str, details: str = "", *, status: int) -> web.Response:
    body = orjson.dumps({"code": code, "msg": msg, "details": details})
    return web.Response(body=body, status=status, content_type="application/json")


def json_response(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


async def read_body(request: web.Request) -> dict[str, Any]:
    """The JSON object body, bounded; CniError 6 for anything else."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise CniError(6, f"request body over {MAX_BODY} bytes", status=413)
    # read(n) returns whatever has arrived, so a body delivered in pieces needs a loop.
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(MAX_BODY + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY:
            raise CniError(6, f"request body over {MAX_BODY} bytes", status=413)
    data = b"".join(chunks)
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise CniError(6, "request body is not valid JSON", str(e)) from None
    if not isinstance(doc, dict):
        raise CniError(6, "request body must be a JSON object")
    return doc


def _string(doc: Mapping[str, Any], name: str, *, code: int = 4) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise CniError(code, f"{name} is required and must be a non-empty string")
    return value


def parse_pod(doc: Mapping[str, Any], *, need_netns: bool) -> tuple[PodRequest, str]:
    """Validate an ADD/DEL/CHECK body; returns the request and its cniVersion."""
    config = doc.get("config")
    if not isinstance(config, dict):
        raise CniError(7, "config (the network configuration) must be an object")
    version = doc.get("cniVersion") or config.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            1,
            f"cniVersion {version!r} is not supported",
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    container_id = _string(doc, "containerID")
    if not CONTAINER_ID.fullmatch(container_id):
        raise CniError(4, "containerID must match [A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
    ifname = _string(doc, "ifName")
    # The kernel's dev_valid_name(): at most 15 bytes, no '/', ':' or whitespace, not . or ..;
    # '%' would make it a template ("eth%d" → the next free eth<N>); `lo` is every netns's own.
    if (
        len(ifname.encode()) > 15
        or ifname in (".", "..", "lo")
        or not ifname.isprintable()
        or not IFNAME_CHARS.fullmatch(ifname)
    ):
        raise CniError(
            4, "ifName must be 1-15 printable characters without '/', ':', '%' or spaces, not lo"
        )
    netns = doc.get("netns") or ""
    if not isinstance(netns, str):
        raise CniError(4, "netns must be a string")
    if (netns or need_netns) and (
        not netns.startswith("/") or "\0" in netns or len(netns.encode()) > NETNS_MAX
    ):
        raise CniError(4, "netns must be an absolute path", netns[:200])
    args = doc.get("args") or {}
    if not isinstance(args, dict):
        raise CniError(4, "args must be an object")
    namespace = args.get("K8S_POD_NAMESPACE", "") or ""
    name = args.get("K8S_POD_NAME", "") or ""
    for label, value in (("K8S_POD_NAMESPACE", namespace), ("K8S_POD_NAME", name)):
        if not isinstance(value, str) or (value and not K8S_NAME.fullmatch(value)):
            raise CniError(4, f"{label} is not a Kubernetes name", str(value)[:100])
    network = config.get("name", "")
    if not isinstance(network, str):
        raise CniError(7, "config.name must be a string")
    mtu = config.get("mtu")
    if mtu is not None and (not isinstance(mtu, int) or not 576 <= mtu <= 9001):
        raise CniError(7, "config.mtu must be an integer in [576, 9001]")
    veth_prefix = config.get("vethPrefix")
    if veth_prefix is not None and (
        not isinstance(veth_prefix, str) or not re.fullmatch(r"[a-z][a-z0-9]{0,3}", veth_prefix)
    ):
        raise CniError(7, "config.vethPrefix must be 1-4 lowercase letters/digits")
    return (
        PodRequest(
            key=IPAMKey(network_name=network, container_id=container_id, ifname=ifname),
            netns=netns,
            pod_namespace=namespace,
            pod_name=name,
            mtu=mtu,
            veth_prefix=veth_prefix,
        ),
        version,
    )


def cni_result(version: str, req: PodRequest, attachment: Attachment) -> dict[str, Any]:
    """The ADD result in the request's CNI version."""
    wired = attachment.wired
    pod_iface: dict[str, Any] = {"name": req.key.ifname, "sandbox": req.netns}
    if wired.pod_mac:
        pod_iface["mac"] = wired.pod_mac
    if version == "1.1.0":
        pod_iface["mtu"] = attachment.mtu
    interfaces: list[dict[str, Any]] = []
    if wired.host_veth:
        interfaces.append({"name": wired.host_veth, "mac": wired.host_mac})
    interfaces.append(pod_iface)
    ip: dict[str, Any] = {
        "address": f"{attachment.lease.ip}/32",
        "gateway": GATEWAY,
        "interface": len(interfaces) - 1,
    }
    if version.startswith("0."):
        ip["version"] = "4"
    return {
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY}],
        "dns": {},
    }


async def _guarded(request: web.Request, verb: str) -> web.Response:
    try:
        return await _handle(request, verb)
    except CniError as e:
        return error_response(e.code, e.msg, e.details, status=e.status)
    except NodeError as e:
        return error_response(e.code, e.msg, e.details, status=e.status)


async def _handle(request: web.Request, verb: str) -> web.Response:
    node = request.app[NODE]
    if verb == "status":
        ok, why = node.can_serve()
        if ok:
            return json_response({"cniVersion": "1.1.0", "msg": why})
        return error_response(50, "no IP addresses can be had", why, status=503)
    doc = await read_body(request)
    if verb == "gc":
        return await _gc(node, doc)
    req, version = parse_pod(doc, need_netns=verb == "add")
    if verb == "add":
        attachment = await node.add(req)
        return json_response(cni_result(version, req, attachment))
    if verb == "del":
        await node.delete(req)
        return json_response({})
    problems = await node.check(req)
    if problems:
        return error_response(100, "pod networking does not match", "; ".join(problems), status=409)
    return json_response({})


async def _gc(node: Node, doc: Mapping[str, Any]) -> web.Response:
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise CniError(7, "config must be an object")
    valid = doc.get("validAttachments", config.get("cni.dev/valid-attachments", []))
    if not isinstance(valid, list):
        raise CniError(7, "validAttachments must be a list")
    keep: list[tuple[str, str]] = []
    for item in valid:
        if not isinstance(item, dict):
            raise CniError(7, "validAttachments entries must be objects")
        container_id, ifname = item.get("containerID"), item.get("ifname")
        if not isinstance(container_id, str) or not isinstance(ifname, str):
            raise CniError(7, "validAttachments entries need containerID and ifname strings")
        keep.append((container_id, ifname))
    network = config.get("name", "")
    released = await node.gc(network if isinstance(network, str) else "", keep)
    return json_response({"released": [str(lease.ip) for lease in released]})


def routes() -> list[web.RouteDef]:
    """POST /v1/cni/{add,del,check,gc}, GET /v1/cni/status."""

    def handler(verb: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            return await _guarded(request, verb)

        return handle

    return [
        web.post("/v1/cni/add", handler("add")),
        web.post("/v1/cni/del", handler("del")),
        web.post("/v1/cni/check", handler("check")),
        web.post("/v1/cni/gc", handler("gc")),
        web.get("/v1/cni/status", handler("status")),
    ]
