"""`make run`: a demo node on the embedded EC2 emulator.

Starts vpcni-agent (m5.large, prefix delegation, WARM_PREFIX_TARGET=1) in a sandbox netns,
creates a few pod netns and ADDs each through the real `vpcni` plugin binary exactly as a
runtime would (env + stdin), prints the ENI, prefix and pod tables, pings pod to pod and to a VPC
host, then tears everything down (also on Ctrl-C). Without root it runs IPAM only and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from agent.cni.install import install_plugin
from agent.introspect_cli import PATHS, fetch, render

# Wide enough for ENI ids and reasons even when stdout is not a terminal (CI logs, pipes).
console = Console(width=max(Console().width, 150))
SANDBOX = "vpcni-demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def plugin_binary() -> Path:
    """The plugin `make plugin` builds (build/vpcni in the source tree)."""
    path = Path(__file__).resolve().parent.parent / "build" / "vpcni"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `make plugin` (needs Debian's golang-go)")
    return path


def wait_ready(address: str, agent: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise SystemExit(f"vpcni-agent exited with {agent.returncode} during start-up")
        try:
            if fetch("/readyz", address=address, unix_socket=None, timeout=1).get("ready"):
                return
        except (OSError, RuntimeError, ValueError):
            pass
        time.sleep(0.1)
    raise SystemExit("vpcni-agent did not become ready in time")


def run_plugin(
    plugin: list[str], command: str, conf: dict[str, Any], *, container: str, netns: str, pod: str
) -> tuple[int, Any, float]:
    """Exec a CNI plugin as kubelet/containerd would; (exit code, JSON output, ms)."""
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(Path(plugin[-1]).parent),
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={pod}",
    }
    started = time.perf_counter()
    out = subprocess.run(plugin, input=json.dumps(conf).encode(), env=env, capture_output=True)
    ms = (time.perf_counter() - started) * 1000
    doc = json.loads(out.stdout) if out.stdout.strip() else out.stderr.decode()
    return out.returncode, doc, ms


def cni(plugin: Path, command: str, conf: dict[str, Any], *, pod: str, netns: str) -> Any:
    """Run the plugin for `pod` and report the outcome on the console."""
    rc, doc, ms = run_plugin(
        [str(plugin)], command, conf, container=f"demo-{pod}", netns=netns, pod=pod
    )
    if rc != 0:
        console.print(f"[red]{command} {pod} failed[/]: {doc}")
        return {}
    console.print(f"{command} {pod}: exit 0 in {ms:.1f} ms")
    return doc


def netns_exec(netns: str, *cmd: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__)
    parser.add_argument("--pods", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="wait for Ctrl-C before teardown")
    args = parser.parse_args(argv)
    root = os.geteuid() == 0
    if not root:
        console.print(
            "[yellow]not root: running IPAM only (no netns, no datapath); "
            "run as root for pods that ping[/]"
        )
    work = Path(tempfile.mkdtemp(prefix="vpcni-demo-"))
    plugin = work / "bin" / "vpcni"
    install_plugin(plugin_binary(), plugin)
    introspection = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "ENABLE_PREFIX_DELEGATION": "true",
        "WARM_PREFIX_TARGET": "1",
        "AWS_VPC_K8S_CNI_LOGLEVEL": "WARN",
    }
    cmd = [
        sys.executable,
        "-m",
        "agent.main",
        "--cloud",
        "sim",
        "--sim-instance-type",
        "m5.large",
        "--socket",
        str(work / "agent.sock"),
        "--state-dir",
        str(work / "state"),
        "--introspection",
        introspection,
        "--metrics",
        f"127.0.0.1:{free_port()}",
        "--datapath",
        "bpf" if root else "none",
    ]
    if root:
        cmd += ["--host-netns", SANDBOX]
    console.rule("vpcni demo: m5.large on the EC2 emulator, prefix delegation")
    console.print(" ".join(cmd[2:]))
    agent = subprocess.Popen(cmd, env=env)
    pods = [f"pod{i}" for i in range(1, args.pods + 1)]
    added: dict[str, str] = {}
    conf = {
        "cniVersion": "1.1.0",
        "name": "vpcni",
        "type": "vpcni",
        "socket": str(work / "agent.sock"),
    }
    try:
        wait_ready(introspection, agent)
        for pod in pods:
            netns = f"/var/run/netns/{SANDBOX}-{pod}"
            if root:
                subprocess.run(["ip", "netns", "add", f"{SANDBOX}-{pod}"], check=False)
            result = cni(plugin, "ADD", conf, pod=pod, netns=netns)
            if result.get("ips"):
                added[pod] = result["ips"][0]["address"].split("/")[0]
        for view in ("enis", "pods", "pool"):
            console.rule(f"vpcni-ctl {view}")
            render(view, fetch(PATHS[view], address=introspection, unix_socket=None), console)
        if root and len(added) >= 2:
            datapath = fetch("/v1/datapath", address=introspection, unix_socket=None)
            console.rule(f"datapath: {datapath.get('mode')}")
            first, second = list(added)[:2]
            ping = netns_exec(f"{SANDBOX}-{first}", "ping", "-c", "2", "-W", "1", added[second])
            ok = "[green]ok[/]" if ping.returncode == 0 else "[red]FAILED[/]"
            console.print(f"ping {first} ({added[first]}) → {second} ({added[second]}): {ok}")
            remote = datapath["remote_host_ip"]
            ping = netns_exec(f"{SANDBOX}-{first}", "ping", "-c", "2", "-W", "1", str(remote))
            ok = "[green]ok[/]" if ping.returncode == 0 else "[red]FAILED[/]"
            console.print(f"ping {first} → VPC host {remote}: {ok}")
        if args.keep:
            console.print("Ctrl-C to tear down")
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        console.rule("teardown")
        if agent.poll() is None:
            for pod in added:
                cni(plugin, "DEL", conf, pod=pod, netns=f"/var/run/netns/{SANDBOX}-{pod}")
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
        if root:
            for pod in pods:
                subprocess.run(["ip", "netns", "del", f"{SANDBOX}-{pod}"], check=False)
            subprocess.run(
                [sys.executable, "-m", "agent.ctl", "sandbox", "down", SANDBOX], check=False
            )
        console.print(f"agent exited {agent.returncode}; state was in {work}")
    return 0 if len(added) == len(pods) else 1


if __name__ == "__main__":
    sys.exit(main())
