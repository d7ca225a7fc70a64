"""The containerd fixture itself: a daemon in its own directories, the local pause image, a
restart that keeps running sandboxes, and a teardown that leaves nothing behind (root)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.containerd_runtime import Containerd, PauseImage, build_pause_image, unavailable

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(unavailable() is not None, reason=unavailable() or ""),
]


def test_the_pause_image_is_built_once_and_imports(
    pause_image: PauseImage, start_containerd: Any
) -> None:
    assert build_pause_image() == pause_image  # cached: same name, same tar
    ctd = start_containerd()
    refs = ctd.ctr("images", "ls", "-q").stdout.split()
    assert pause_image.name in refs
    assert os.listdir(ctd.cni_bin_dir) == []  # a node whose CNI bin dir is empty
    assert ctd.socket.is_socket() and str(ctd.socket).startswith("/tmp/")


def test_a_container_outlives_a_restart_and_teardown_removes_everything(
    pause_image: PauseImage, sock_dir: Path
) -> None:
    base = sock_dir / "ctd"  # short: the socket path must fit in sun_path
    ctd = Containerd(base, pause_image.name)
    try:
        ctd.start()
        ctd.import_image(pause_image.tar)
        ctd.ctr("run", "-d", "--net-host", pause_image.name, "p1", "/pause")
        pid = int(ctd.ctr("tasks", "ls").stdout.split("\n")[1].split()[1])
        ctd.restart()
        tasks = ctd.ctr("tasks", "ls").stdout
        assert "p1" in tasks and "RUNNING" in tasks, tasks
        assert os.path.exists(f"/proc/{pid}")
    finally:
        ctd.cleanup()
    assert not base.exists()
    assert not os.path.exists(f"/proc/{pid}")
    with open("/proc/self/mountinfo") as f:
        assert str(base) not in f.read()
