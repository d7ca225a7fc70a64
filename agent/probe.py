"""The DaemonSet's liveness and readiness probe: asks the agent over its Unix socket.

    python -m agent.probe [--socket /run/vpcni/agent.sock] [--timeout 5] live|ready

`live` is GET /healthz (the event loop answers), `ready` is GET /readyz (start-up done, taking
ADDs). Exit 0 when the agent answers 200, else 1 with one line saying why (kubelet shows it in
the pod's events). The socket is always served, so the probes work whatever
DISABLE_INTROSPECTION says. Standard library and one request only: kubelet runs this every few
seconds on every node.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence

PATHS = {"live": "/healthz", "ready": "/readyz"}


def probe(socket_path: str, path: str, timeout: float) -> tuple[bool, str]:
    """GET `path` over the agent's socket: (answered 200, what to print)."""
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
    except OSError as e:
        return False, f"{socket_path}: {e.strerror or e}"
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    ok = len(parts) >= 2 and parts[1] == "200"
    return ok, f"{path}: {status_line[9:] or 'no answer'} {body[:200].decode('utf-8', 'replace')}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; the exit status is the probe's verdict."""
    parser = argparse.ArgumentParser(prog="python -m agent.probe", description=__doc__)
    parser.add_argument("check", choices=sorted(PATHS))
    parser.add_argument("--socket", default=os.environ.get("VPCNI_SOCKET", "/run/vpcni/agent.sock"))
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    args = parser.parse_args(argv)
    ok, message = probe(args.socket, PATHS[args.check], args.timeout)
    print(message.strip())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
