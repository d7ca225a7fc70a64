"""A small blocking HTTP/1.1 client for the agent's Unix socket (what the plugin does), for
tests that drive a real agent process."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("vpcni", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def call(
    sock: Path, method: str, path: str, body: Any = None, *, timeout: float = 30.0
) -> tuple[int, Any]:
    """One request; (status, decoded JSON body or None). OSError when nobody answers."""
    conn = _UnixConnection(sock, timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def pod_body(
    container_id: str, *, netns: str, command: str = "ADD", network: str = "vpcni"
) -> dict[str, Any]:
    """An ADD/DEL body as the plugin sends it."""
    return {
        "command": command,
        "cniVersion": "1.1.0",
        "containerID": container_id,
        "netns": netns,
        "ifName": "eth0",
        "args": {
            "K8S_POD_NAMESPACE": "default",
            "K8S_POD_NAME": f"pod-{container_id}",
            "K8S_POD_INFRA_CONTAINER_ID": container_id,
        },
        "config": {"cniVersion": "1.1.0", "name": network, "type": "vpcni"},
    }
