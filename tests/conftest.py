"""Shared fixtures (keep small; append, do not rewrite)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for AF_UNIX sockets: tmp_path can exceed the 108-byte sun_path."""
    path = Path(tempfile.mkdtemp(prefix="vp", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# The agent-as-a-subprocess fixtures (`plugin`, `start_agent`) for every e2e module.
pytest_plugins = ["tests.agent_harness"]

# A real containerd in temp dirs and the locally built pause image (`start_containerd`).
pytest_plugins += ["tests.containerd_runtime"]
