"""Plugin fuzzing: the `vpcni` CNI plugin the harness installs, run as a runtime runs it but with
hostile environments and stdin (deep JSON, NUL bytes, huge or closed stdin, odd CNI_* values),
against a live agent. Whatever comes in, the plugin exits 0 or 1 with CNI JSON on stdout, and
never prints a traceback."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.agent_harness import Agent

FULL = os.environ.get("VPCNI_RELIABILITY") == "full"
FUZZ = settings(
    max_examples=500 if FULL else 25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # Each example is a process; shrink only in the full run.
    phases=list(Phase) if FULL else [Phase.explicit, Phase.reuse, Phase.generate],
)

COMMANDS = st.sampled_from(["ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS", "", "add", "X" * 300])
TEXT = st.text(max_size=200) | st.sampled_from(["", "eth0", "../../etc", "a" * 5000, "é\u202e"])
ENV_TEXT = TEXT.map(lambda t: t.replace("\x00", ""))  # execve cannot carry NUL in env


def deep(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def stdins(sock: Path) -> st.SearchStrategy[bytes | None]:
    good = {"cniVersion": "1.1.0", "name": "vpcni", "type": "vpcni", "socket": str(sock)}

    def config_with(key: str, value: Any) -> bytes:
        return json.dumps({**good, key: value}).encode()

    return st.one_of(
        st.none(),  # stdin closed
        st.just(b""),
        st.just(deep(100_000)),
        st.just(b"[" * 50_000),
        st.just(b"x" * (2 << 20)),
        st.binary(max_size=4096),
        st.builds(
            config_with, st.sampled_from(["pluginLogFile", "cniVersion", "name", "mtu"]), TEXT
        ),
        st.builds(config_with, st.just("pluginLogFile"), st.just("/tmp/a\x00b")),
        st.builds(config_with, st.just("prevResult"), st.recursive(st.integers(), st.lists)),
    )


def run_plugin(
    plugin: Path, env: dict[str, str], stdin: bytes | None
) -> subprocess.CompletedProcess[bytes]:
    if stdin is None:
        return subprocess.run(
            [str(plugin)],
            env=env,
            stdin=None,
            capture_output=True,
            timeout=60,
            check=False,
            preexec_fn=lambda: os.close(0),
        )
    return subprocess.run(
        [str(plugin)], env=env, input=stdin, capture_output=True, timeout=60, check=False
    )


@pytest.fixture
def agent(start_agent: Callable[..., Agent]) -> Agent:
    return start_agent(VPCNI_ADD_WAIT_MS="0")


def test_hostile_env_and_stdin_get_cni_json_never_a_traceback(agent: Agent, plugin: Path) -> None:
    @FUZZ
    @given(
        command=COMMANDS,
        container_id=ENV_TEXT,
        netns=ENV_TEXT,
        ifname=ENV_TEXT,
        args=ENV_TEXT,
        stdin=stdins(agent.socket),
    )
    def run(
        command: str, container_id: str, netns: str, ifname: str, args: str, stdin: bytes | None
    ) -> None:
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_ARGS": args,
            "CNI_PATH": "/opt/cni/bin",
            "PATH": "/usr/bin:/bin",
        }
        done = run_plugin(plugin, env, stdin)
        assert b"Traceback" not in done.stdout + done.stderr, done.stderr[-2000:]
        assert done.returncode in (0, 1), (done.returncode, done.stderr[-2000:])
        out = json.loads(done.stdout) if done.stdout.strip() else None
        if done.returncode == 1:
            assert isinstance(out, dict), done.stdout[:500]
            assert isinstance(out.get("code"), int) and isinstance(out.get("msg"), str), out

    run()
    assert agent.proc is not None and agent.proc.poll() is None
