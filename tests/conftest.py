"""Shared fixtures (keep small; append, do not rewrite)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.node import Node
from agent.settings import Settings
from tests import fakes


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


Make = Callable[..., Node]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Builds in-process nodes (fakes.node's arguments) and stops every started one at
    teardown."""
    built: list[Node] = []

    def build(w: fakes.World, s: Settings, **kwargs: Any) -> Node:
        n = fakes.node(w, s, **kwargs)
        built.append(n)
        return n

    yield build
    for n in built:
        if n.ready and n.accepting:
            await n.stop()
