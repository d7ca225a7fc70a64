"""The real agent as a subprocess, the real `vpcni` plugin binary, and the fixtures that start
them (loaded for every test module through `pytest_plugins` in conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from agent.cni import install

REPO = Path(__file__).resolve().parent.parent
SUBNET = IPv4Network("10.0.0.0/20")
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range: a port the kernel hands out
    (bind to 0) may go to the agent's own emulator between this check and the agent's bind."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        port = random.randrange(10_000, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in 10000-{low}")


class Agent:
    """One `python -m agent.main --cloud sim --datapath none` process."""

    def __init__(self, state_dir: Path, sock: Path, env: dict[str, str], *args: str) -> None:
        self.state_dir = state_dir
        self.socket = sock
        self.env = env
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_dir / "agent.log"
        self.base = ""

    def start(self, timeout: float = 20.0) -> None:
        intro, metrics = free_port(), free_port()
        self.base = f"http://127.0.0.1:{intro}"
        self.metrics_url = f"http://127.0.0.1:{metrics}/metrics"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("VPCNI_", "WARM_", "AWS_", "ENABLE_", "MINIMUM_", "MAX_ENI"))
        }
        env.update(NO_PROXY="127.0.0.1,localhost", AWS_EC2_METADATA_DISABLED="false")
        env.update(self.env)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agent.main",
                    "--cloud",
                    "sim",
                    "--datapath",
                    "none",
                    "--socket",
                    str(self.socket),
                    "--state-dir",
                    str(self.state_dir),
                    "--introspection",
                    f"127.0.0.1:{intro}",
                    "--metrics",
                    f"127.0.0.1:{metrics}",
                    *self.args,
                ],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.tail()}")
            try:
                if self.get("/readyz").get("ready") is True:
                    return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"agent not ready after {timeout} s:\n{self.tail()}")
            time.sleep(0.05)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def get(self, path: str) -> Any:
        with NO_PROXY.open(self.base + path, timeout=5) as r:
            return json.loads(r.read())

    def metrics(self) -> str:
        with NO_PROXY.open(self.metrics_url, timeout=5) as r:
            return str(r.read().decode())

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"agent ignored SIGTERM for {timeout} s:\n{self.tail()}") from None


PLUGIN = REPO / "build" / "vpcni"
_built: list[Path] = []


def built_plugin() -> Path:
    """build/vpcni, brought up to date by `make plugin` once per session (Debian's go, offline);
    the test is skipped, saying why, where there is no go toolchain."""
    if not _built:
        if shutil.which("go") is None:
            pytest.skip("no go toolchain to build the plugin (apt-get install golang-go)")
        done = subprocess.run(
            ["make", "-s", "plugin"], cwd=REPO, capture_output=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        _built.append(PLUGIN)
    return _built[0]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `vpcni` binary installed into a CNI bin dir of its own, as the installer does."""
    path = tmp_path_factory.mktemp("cni-bin") / "vpcni"
    install.install_plugin(built_plugin(), path)
    return path


@pytest.fixture
def start_agent(sock_dir: Path) -> Iterator[Any]:
    """start_agent(**env, args=()) → a ready Agent; all are stopped at teardown."""
    agents: list[Agent] = []

    def start(*args: str, state_dir: Path | None = None, **env: str) -> Agent:
        env = {"ENABLE_PREFIX_DELEGATION": "true", "WARM_PREFIX_TARGET": "1", **env}
        agent = Agent(state_dir or sock_dir, sock_dir / "a.sock", env, *args)
        agents.append(agent)
        agent.start()
        return agent

    yield start
    for agent in agents:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.stop()


class Cni:
    """Runs the plugin as a runtime does: CNI_* environment, network config on stdin."""

    def __init__(self, plugin: Path, sock: Path) -> None:
        self.plugin = plugin
        self.config = {"cniVersion": "1.1.0", "name": "vpcni", "type": "vpcni", "socket": str(sock)}

    def __call__(
        self,
        command: str,
        container_id: str = "",
        *,
        netns: str | None = None,
        ifname: str = "eth0",
        config: dict[str, Any] | None = None,
    ) -> tuple[int, Any]:
        env = {"CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin", "PATH": "/usr/bin:/bin"}
        if container_id:
            env.update(
                CNI_CONTAINERID=container_id,
                CNI_NETNS=f"/var/run/netns/cni-{container_id}" if netns is None else netns,
                CNI_IFNAME=ifname,
                CNI_ARGS=(
                    f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{container_id};"
                    f"K8S_POD_INFRA_CONTAINER_ID={container_id}"
                ),
            )
        done = subprocess.run(
            [str(self.plugin)],
            input=json.dumps({**self.config, **(config or {})}).encode(),
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        out = done.stdout.strip()
        return done.returncode, json.loads(out) if out else None


@contextlib.contextmanager
def pod_namespaces(node: str) -> Iterator[Callable[[int], list[str]]]:
    """make(n) → n fresh pod netns names `<node>-p<i>`; on exit they and the sandbox node
    `node` are removed."""
    made: list[str] = []

    def make(n: int) -> list[str]:
        names = [f"{node}-p{len(made) + i}" for i in range(n)]
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
        made.extend(names)
        return names

    try:
        yield make
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False)
        subprocess.run(
            [sys.executable, "-m", "agent.ctl", "sandbox", "down", node],
            check=False,
            capture_output=True,
        )


def address(result: dict[str, Any]) -> str:
    return str(IPv4Interface(result["ips"][0]["address"]).ip)
