"""A small CRI v1 client over grpcio: the pod sandbox calls kubelet makes, nothing more.

The messages come from tests/cri/api.proto (a trimmed copy of the cri-api v1 definitions),
compiled with grpcio-tools' protoc on first use into build/cri-api/<hash>/api_pb2.py. That
generated module is imported by path, so mypy never sees it (it would only see untyped,
generated code); this module wraps it in typed calls and dataclasses. No `_pb2_grpc` stubs
either: each RPC is a `channel.unary_unary` with the message classes' own (de)serializers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

REPO = Path(__file__).resolve().parent.parent
PROTO = REPO / "tests" / "cri" / "api.proto"
SERVICE = "/runtime.v1.RuntimeService/"


@cache
def api() -> ModuleType:
    """The compiled CRI messages (compiled once per proto text, then imported by path)."""
    text = PROTO.read_bytes()
    out = REPO / "build" / "cri-api" / hashlib.sha256(text).hexdigest()[:12]
    module = out / "api_pb2.py"
    if not module.exists():
        partial = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        partial.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{PROTO.parent}",
                f"--python_out={partial}",
                PROTO.name,
            ],
            check=True,
            capture_output=True,
        )
        try:
            partial.rename(out)
        except OSError:  # another process got there first with the same output
            subprocess.run(["rm", "-rf", str(partial)], check=False)
    spec = importlib.util.spec_from_file_location("vpcni_cri_api_pb2", module)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


@dataclass(frozen=True)
class PodMeta:
    """What kubelet puts in PodSandboxMetadata: the pod's identity and the sandbox attempt."""

    name: str
    namespace: str = "default"
    uid: str = ""
    attempt: int = 0

    @staticmethod
    def new(name: str, namespace: str = "default") -> PodMeta:
        """A pod with a fresh UID, attempt 0."""
        return PodMeta(name, namespace, str(uuid.uuid4()), 0)

    def next_attempt(self) -> PodMeta:
        """The same pod's next sandbox, as kubelet makes after a dead one."""
        return PodMeta(self.name, self.namespace, self.uid, self.attempt + 1)


@dataclass(frozen=True)
class SandboxStatus:
    """PodSandboxStatus with the verbose info containerd adds (its pid and netns path)."""

    id: str
    meta: PodMeta
    ready: bool
    ip: str
    pid: int
    netns: str


@dataclass(frozen=True)
class Sandbox:
    """One ListPodSandbox item."""

    id: str
    meta: PodMeta
    ready: bool


def _meta(msg: Any) -> PodMeta:
    return PodMeta(str(msg.name), str(msg.namespace), str(msg.uid), int(msg.attempt))


def _netns(spec: Any) -> str:
    for ns in spec.get("linux", {}).get("namespaces", []):
        if ns.get("type") == "network":
            return str(ns.get("path", ""))
    return ""


class CriClient:
    """RuntimeService calls on one containerd socket; errors are grpc.RpcError."""

    def __init__(self, endpoint: str, timeout: float = 120.0) -> None:
        self.pb = api()
        self.timeout = timeout
        self.channel = grpc.insecure_channel(endpoint)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any, response: str) -> Any:
        rpc: grpc.UnaryUnaryMultiCallable[Any, Any] = self.channel.unary_unary(
            SERVICE + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=getattr(self.pb, response).FromString,
        )
        return rpc(request, timeout=self.timeout)

    def version(self) -> tuple[str, str, str]:
        """(runtime name, runtime version, runtime API version)."""
        r = self._call("Version", self.pb.VersionRequest(version="v1"), "VersionResponse")
        return str(r.runtime_name), str(r.runtime_version), str(r.runtime_api_version)

    def run_pod_sandbox(
        self,
        meta: PodMeta,
        labels: dict[str, str] | None = None,
        host_ports: dict[int, int] | None = None,
    ) -> str:
        """RunPodSandbox as kubelet sends it for a pod on the pod network; the sandbox id.

        `host_ports`: container port → host port (TCP), the pod's hostPorts.
        """
        pb = self.pb
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(
                name=meta.name, uid=meta.uid, namespace=meta.namespace, attempt=meta.attempt
            ),
            hostname=meta.name,
            port_mappings=[
                pb.PortMapping(protocol=pb.TCP, container_port=port, host_port=host_port)
                for port, host_port in (host_ports or {}).items()
            ],
            labels={
                "io.kubernetes.pod.name": meta.name,
                "io.kubernetes.pod.namespace": meta.namespace,
                "io.kubernetes.pod.uid": meta.uid,
                **(labels or {}),
            },
            linux=pb.LinuxPodSandboxConfig(
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(
                        network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD
                    )
                )
            ),
        )
        r = self._call(
            "RunPodSandbox", pb.RunPodSandboxRequest(config=config), "RunPodSandboxResponse"
        )
        return str(r.pod_sandbox_id)

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        """StopPodSandbox: the runtime tears the network down (CNI DEL)."""
        req = self.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id)
        self._call("StopPodSandbox", req, "StopPodSandboxResponse")

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        """RemovePodSandbox: the runtime forgets the sandbox and removes its netns."""
        req = self.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)
        self._call("RemovePodSandbox", req, "RemovePodSandboxResponse")

    def pod_sandbox_status(self, sandbox_id: str) -> SandboxStatus:
        """PodSandboxStatus (verbose, for containerd's pid and netns path of the sandbox)."""
        req = self.pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True)
        r = self._call("PodSandboxStatus", req, "PodSandboxStatusResponse")
        info: dict[str, Any] = json.loads(r.info["info"]) if "info" in r.info else {}
        return SandboxStatus(
            id=str(r.status.id),
            meta=_meta(r.status.metadata),
            ready=r.status.state == self.pb.SANDBOX_READY,
            ip=str(r.status.network.ip),
            pid=int(info.get("pid", 0)),
            netns=_netns(info.get("runtimeSpec", {})),
        )

    def list_pod_sandbox(self, *, ready_only: bool = False) -> list[Sandbox]:
        """ListPodSandbox, optionally only the ready ones."""
        pb = self.pb
        flt = pb.PodSandboxFilter()
        if ready_only:
            flt.state.CopyFrom(pb.PodSandboxStateValue(state=pb.SANDBOX_READY))
        r = self._call(
            "ListPodSandbox", pb.ListPodSandboxRequest(filter=flt), "ListPodSandboxResponse"
        )
        return [
            Sandbox(str(item.id), _meta(item.metadata), item.state == pb.SANDBOX_READY)
            for item in r.items
        ]

    def conditions(self) -> dict[str, tuple[bool, str]]:
        """Status: each runtime condition (RuntimeReady, NetworkReady) → (status, message)."""
        r = self._call("Status", self.pb.StatusRequest(), "StatusResponse")
        return {str(c.type): (bool(c.status), str(c.message)) for c in r.status.conditions}
