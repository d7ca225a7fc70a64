"""A real containerd (Debian's 1.6, CRI plugin built in) for tests, in throw-away directories.

Loaded for every test module through `pytest_plugins` in conftest.py. Root only: the fixtures
skip with the reason when not root or when containerd/runc/ctr/gcc are missing (scripts/
bootstrap.sh installs them).

Fixtures:
- `pause_image` (session): the pod sandbox image, built once: tests/cri/pause.c compiled with
  `gcc -static`, packed as a docker-archive tar (one layer, config JSON, manifest.json) cached at
  build/pause/vpcni-pause-<hash>.tar. Nothing can be pulled here, so containerd's
  `sandbox_image` names this image.
- `start_containerd` (function): `start_containerd(netns_under_state_dir=False, netns=None)
  -> Containerd`, started and with the pause image imported into the `k8s.io` namespace.
  Everything it started is stopped and removed at teardown: tasks and containers it still
  holds are killed and deleted, pod netns it made are unmounted, containerd gets SIGTERM,
  mounts under its root and state are detached and the directories removed.

A `Containerd` has its own `root`, `state`, `socket` (gRPC, CRI on the same socket), `config`
(config.toml) and `log`, and the CRI plugin's `cni_bin_dir` (created EMPTY) and `cni_conf_dir`:
temp dirs named with the test process id, never the host's /opt/cni/bin, /etc/cni/net.d or
/run/containerd socket. Methods:
- `ctr(*args, namespace="k8s.io", check=True, timeout=60)`: runs `ctr -a SOCKET -n NS ARGS`,
  returns the CompletedProcess (text); raises CtrError with stderr when check and it fails.
  E.g. `ctr("images", "import", "img.tar")`, `ctr("run", "--rm", "--net-host", IMG, ID, CMD)`.
- `start()`, `stop()`, `restart()`: the daemon only; shims and sandboxes keep running across a
  restart, as on a node.
- `endpoint`: `unix://<socket>`, for a CRI client.
Pod netns: containerd puts them in /var/run/netns/cni-<uuid> unless `netns_under_state_dir`
(then under `state`). `netns` (a path) runs the daemon, and so its shims and the CNI plugins it
execs, in that network namespace instead of the caller's: a sandbox node's host netns, as on a
node where containerd shares the host netns with the agent (`portmap` then sets its hostPort
rules there, not in the test machine's root netns). The API socket is a file, reachable from
any netns.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
PAUSE_SOURCE = REPO / "tests" / "cri" / "pause.c"
PAUSE_CACHE = REPO / "build" / "pause"
TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "gcc")
# Plugins that probe or write outside our directories, or need kernels/filesystems not here.
DISABLED_PLUGINS = (
    "io.containerd.internal.v1.opt",  # installs into /opt/containerd
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
)
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def unavailable() -> str | None:
    """Why containerd tests cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root to run containerd, runc and pod network namespaces"
    missing = [tool for tool in TOOLS if shutil.which(tool, path=ENV["PATH"]) is None]
    if missing:
        return f"missing {', '.join(missing)} (scripts/bootstrap.sh installs them as root)"
    return None


class CtrError(AssertionError):
    """`ctr` failed; the message holds its command line and stderr."""


@dataclass(frozen=True)
class PauseImage:
    """The sandbox image: its reference and the docker-archive tar that holds it."""

    name: str
    tar: Path


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def build_pause_image(cache: Path = PAUSE_CACHE) -> PauseImage:
    """Compile pause.c statically and pack it as a docker-archive; reuse a cached tar.

    The tar is named after a hash of the source, so an edit rebuilds it. Members have fixed
    owners and mtimes, so a rebuild of the same source gives the same image id.
    """
    source = PAUSE_SOURCE.read_bytes()
    tag = hashlib.sha256(source).hexdigest()[:12]
    name = f"localhost/vpcni-pause:{tag}"
    out = cache / f"vpcni-pause-{tag}.tar"
    if out.exists():
        return PauseImage(name, out)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vpcni-pause-") as tmp:
        binary = Path(tmp) / "pause"
        subprocess.run(
            ["gcc", "-static", "-Os", "-s", "-o", str(binary), str(PAUSE_SOURCE)],
            check=True,
            capture_output=True,
            env=ENV,
        )
        layer_buf = io.BytesIO()
        with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.USTAR_FORMAT) as layer:
            _tar_member(layer, "pause", binary.read_bytes(), 0o755)
        layer_bytes = layer_buf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/pause"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        },
        sort_keys=True,
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [name], "Layers": ["layer.tar"]}]
    ).encode()
    partial = out.with_suffix(f".{os.getpid()}.tmp")
    with tarfile.open(partial, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        _tar_member(archive, "layer.tar", layer_bytes, 0o644)
        _tar_member(archive, config_name, config, 0o644)
        _tar_member(archive, "manifest.json", manifest, 0o644)
    partial.rename(out)  # parallel builders write the same bytes; the last rename wins
    return PauseImage(name, out)


def render_config(ctd: Containerd) -> str:
    """containerd's config.toml (version 2) for this instance."""
    disabled = ", ".join(f'"{p}"' for p in DISABLED_PLUGINS)
    cri = '[plugins."io.containerd.grpc.v1.cri"]'
    return f"""version = 2
root = "{ctd.root}"
state = "{ctd.state}"
disabled_plugins = [{disabled}]

[grpc]
  address = "{ctd.socket}"

[ttrpc]
  address = "{ctd.socket}.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

{cri}
  sandbox_image = "{ctd.sandbox_image}"
  # The VM lacks CAP_SYS_RESOURCE: runc cannot raise a sandbox's oom_score_adj.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = {str(ctd.netns_under_state_dir).lower()}
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

{cri[:-1]}.cni]
  bin_dir = "{ctd.cni_bin_dir}"
  conf_dir = "{ctd.cni_conf_dir}"
  max_conf_num = 1

{cri[:-1]}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

{cri[:-1]}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
"""


class Containerd:
    """One containerd daemon in its own directories (see the module docstring)."""

    def __init__(
        self,
        base: Path,
        sandbox_image: str,
        *,
        netns_under_state_dir: bool = False,
        netns: str | None = None,
    ) -> None:
        self.base = base
        self.root = base / "root"
        self.state = base / "state"
        self.socket = base / "containerd.sock"
        self.config = base / "config.toml"
        self.log = base / "containerd.log"
        self.cni_bin_dir = base / "cni-bin"
        self.cni_conf_dir = base / "cni-conf"
        self.sandbox_image = sandbox_image
        self.netns_under_state_dir = netns_under_state_dir
        self.netns = netns
        self.proc: subprocess.Popen[bytes] | None = None
        for d in (self.root, self.state, self.cni_bin_dir, self.cni_conf_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.config.write_text(render_config(self))

    @property
    def endpoint(self) -> str:
        """The gRPC target of the CRI (and containerd) API."""
        return f"unix://{self.socket}"

    def start(self, timeout: float = 30.0) -> None:
        """Start the daemon and wait until `ctr version` answers."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        enter = ["nsenter", f"--net={self.netns}"] if self.netns else []
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*enter, "containerd", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=ENV,
                start_new_session=True,  # a Ctrl-C of pytest must not reach it first
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"containerd exited {self.proc.returncode}:\n{self.tail()}")
            if self.socket.exists() and self.ctr("version", check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"containerd not up after {timeout} s:\n{self.tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the daemon and wait (shims and their containers keep running)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        """Stop and start the daemon with the same directories."""
        self.stop()
        self.start()

    def tail(self, chars: int = 4000) -> str:
        """The end of containerd's log."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def ctr(
        self, *args: str, namespace: str = "k8s.io", check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """`ctr -a SOCKET -n NAMESPACE ARGS...`; CtrError with stderr if `check` and it fails."""
        cmd = ["ctr", "-a", str(self.socket), "-n", namespace, *args]
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, env=ENV
        )
        if check and done.returncode != 0:
            raise CtrError(f"{' '.join(cmd)} → {done.returncode}: {done.stderr.strip()}")
        return done

    def import_image(self, tar: Path) -> None:
        """`ctr images import` into the k8s.io namespace (where the CRI plugin looks)."""
        self.ctr("images", "import", str(tar))

    def cleanup(self) -> None:
        """Kill and delete whatever containers remain, stop the daemon, remove every trace."""
        netns: list[str] = []
        if self.proc is not None and self.proc.poll() is None:
            netns = self._delete_containers()
        self.stop()
        for path in netns:
            if not path.startswith(str(self.state)):  # under state: unmounted with it below
                subprocess.run(["umount", path], capture_output=True, check=False)
                Path(path).unlink(missing_ok=True)
        for mount in _mounts_under(self.base):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        shutil.rmtree(self.base, ignore_errors=True)

    def _delete_containers(self) -> list[str]:
        """Kill and delete every container of every namespace; their network netns paths."""
        netns: list[str] = []
        namespaces = self.ctr("namespaces", "list", "-q", check=False).stdout.split()
        for ns in namespaces:
            ids = self.ctr("containers", "list", "-q", namespace=ns, check=False).stdout.split()
            for cid in ids:
                info = self.ctr("containers", "info", cid, namespace=ns, check=False).stdout
                netns.extend(_network_netns(info))
                self.ctr("tasks", "kill", "-s", "SIGKILL", cid, namespace=ns, check=False)
                self.ctr("tasks", "delete", "-f", cid, namespace=ns, check=False)
                self.ctr("containers", "delete", cid, namespace=ns, check=False)
        return netns


def _network_netns(info: str) -> list[str]:
    """The network namespace path in a `ctr containers info` document, if it names one."""
    try:
        doc: Any = json.loads(info)
        namespaces = doc["Spec"]["linux"]["namespaces"]
    except (ValueError, KeyError, TypeError):
        return []
    return [str(ns["path"]) for ns in namespaces if ns.get("type") == "network" and ns.get("path")]


def _mounts_under(base: Path) -> list[str]:
    """Mount points at or below `base`, deepest first."""
    prefix = str(base) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


@pytest.fixture(scope="session")
def pause_image() -> PauseImage:
    """The locally built sandbox image (skips when containerd tests cannot run here)."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    return build_pause_image()


@pytest.fixture
def start_containerd(pause_image: PauseImage) -> Iterator[Any]:
    """start_containerd(netns_under_state_dir=False, netns=None) → a running Containerd with
    the pause image imported; every one is cleaned up at teardown."""
    started: list[Containerd] = []

    def start(*, netns_under_state_dir: bool = False, netns: str | None = None) -> Containerd:
        base = Path(tempfile.mkdtemp(prefix=f"vpctd{os.getpid()}-", dir="/tmp"))
        ctd = Containerd(
            base, pause_image.name, netns_under_state_dir=netns_under_state_dir, netns=netns
        )
        started.append(ctd)
        ctd.start()
        ctd.import_image(pause_image.tar)
        return ctd

    yield start
    for ctd in started:
        ctd.cleanup()
