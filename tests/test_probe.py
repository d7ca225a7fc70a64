"""agent.probe, the DaemonSet's exec probe: asks a real agent over its socket, with introspection
turned off, and fails with a reason when nothing or an unready agent answers."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_harness import REPO, free_port


def run_probe(sock: Path, check: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.probe", "--socket", str(sock), "--timeout", "5", check],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_probes_pass_on_a_ready_agent_without_introspection(sock_dir: Path) -> None:
    sock = sock_dir / "a.sock"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(sock_dir), "DISABLE_INTROSPECTION": "true"}
    argv = [sys.executable, "-m", "agent.main", "--cloud", "sim", "--datapath", "none",
            "--socket", str(sock), "--state-dir", str(sock_dir),
            "--metrics", f"127.0.0.1:{free_port()}"]  # fmt: skip
    with open(sock_dir / "agent.log", "wb") as log:
        agent = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while (ready := run_probe(sock, "ready")).returncode != 0:
            assert agent.poll() is None and time.monotonic() < deadline, ready.stdout
            time.sleep(0.2)
        assert run_probe(sock, "live").returncode == 0
    finally:
        agent.terminate()
        assert agent.wait(timeout=30) == 0
    gone = run_probe(sock, "live")
    assert gone.returncode == 1 and str(sock) in gone.stdout


@pytest.fixture
def unready_agent(sock_dir: Path) -> Iterator[Path]:
    """A socket answering /readyz as a stopping agent does: 503."""
    path = sock_dir / "unready.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4096)
            body = b'{"ready": false}'
            conn.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield path
    thread.join(timeout=10)
    server.close()


def test_ready_fails_on_503_and_says_why(unready_agent: Path) -> None:
    done = run_probe(unready_agent, "ready")
    assert done.returncode == 1
    assert "503 Service Unavailable" in done.stdout and '"ready": false' in done.stdout
