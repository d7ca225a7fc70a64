"""The `vpcni` plugin binary (build/vpcni), exec'd as a runtime would, against a fake agent on a
Unix socket: what the runtime sees on stdout and exit status, what the agent receives. The Go
tests (plugin/*_test.go) cover the same code in process; these hold the built binary to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import socketserver
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.agent_harness import built_plugin

REPO = Path(__file__).resolve().parent.parent
SPEC_VERSION = "1.1.0"
SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
INCOMPATIBLE_VERSION, INVALID_ENV, DECODE_FAILURE, INVALID_CONFIG = 1, 4, 6, 7
ADD_RESULT = (
    b'{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/pod1"}],'
    b'"ips":[{"address":"10.0.1.17/32","gateway":"169.254.1.1","interface":0}]}'
)
POD_ARGS = (
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"
    "K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=5f0c"
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class FakeAgent(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Records each request and answers `(status, body)` from `answers`, keyed by path."""

    daemon_threads = True

    def __init__(self, path: str) -> None:
        self.path = path
        self.requests: list[Request] = []
        self.answers: dict[str, tuple[int, bytes]] = {
            "/v1/cni/add": (200, ADD_RESULT),
            # As the real agent answers; only ADD's body is a CNI result for stdout.
            "/v1/cni/del": (200, b"{}"),
            "/v1/cni/check": (200, b"{}"),
            "/v1/cni/gc": (200, b'{"released":[]}'),
            "/v1/cni/status": (200, b'{"cniVersion":"1.1.0","msg":"ok"}'),
        }
        super().__init__(path, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeAgent

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append(
            Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        status, answer = self.server.answers[self.path]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths must fit in 108 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="vpcni-", dir="/tmp"))
    yield path
    shutil.rmtree(path)


@pytest.fixture
def agent(short_dir: Path) -> Iterator[FakeAgent]:
    server = FakeAgent(str(short_dir / "agent.sock"))
    # A short poll interval: shutdown() waits for the next poll.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: bytes
    stderr: bytes

    def json(self) -> Any:
        return json.loads(self.stdout)


Plugin = Callable[..., Outcome]


@pytest.fixture
def run_plugin() -> Plugin:
    """Run the plugin with `CNI_*` variables from keywords and `stdin` (bytes or a dict)."""
    binary = built_plugin()

    def run(stdin: bytes | dict[str, Any] = b"", **cni: str) -> Outcome:
        data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
        env = {"PATH": os.environ["PATH"], **{f"CNI_{k.upper()}": v for k, v in cni.items()}}
        done = subprocess.run(
            [str(binary)], input=data, env=env, capture_output=True, cwd=REPO, timeout=30
        )
        return Outcome(done.returncode, done.stdout, done.stderr)

    return run


def net_config(socket_path: str, version: str = "1.1.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "vpcni", "type": "vpcni", "socket": socket_path, **extra}


def attach_env(command: str, **overrides: str) -> dict[str, str]:
    env = {
        "command": command,
        "containerid": "0123abcd",
        "netns": "/var/run/netns/cni-1234",
        "ifname": "eth0",
        "args": POD_ARGS,
        "path": "/opt/cni/bin",
    }
    env.update(overrides)
    return env


# --- forwarding -------------------------------------------------------------------------------


def test_add_forwards_the_invocation_and_prints_the_result_verbatim(
    run_plugin: Plugin, agent: FakeAgent
) -> None:
    config = net_config(agent.path, mtu=9001, vethPrefix="eni")
    out = run_plugin(config, **attach_env("ADD"))
    assert (out.code, out.stdout, out.stderr) == (0, ADD_RESULT, b"")
    [request] = agent.requests
    assert (request.method, request.path) == ("POST", "/v1/cni/add")
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "command": "ADD",
        "cniVersion": "1.1.0",
        "containerID": "0123abcd",
        "netns": "/var/run/netns/cni-1234",
        "ifName": "eth0",
        "args": {
            "K8S_POD_NAMESPACE": "default",
            "K8S_POD_NAME": "web-0",
            "K8S_POD_INFRA_CONTAINER_ID": "abc123",
            "K8S_POD_UID": "5f0c",
        },
        "path": "/opt/cni/bin",
        "config": config,
    }


@pytest.mark.parametrize("command", ["CHECK", "DEL"])
def test_check_and_del_forward_prev_result_in_the_callers_version(
    run_plugin: Plugin, agent: FakeAgent, command: str
) -> None:
    # libcni hands a cached result back as prevResult, in the version the ADD used.
    prev = {"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.0.1.17/32"}]}
    config = net_config(agent.path, "0.3.1", prevResult=prev)
    out = run_plugin(config, **attach_env(command))
    assert (out.code, out.stdout) == (0, b"")
    [request] = agent.requests
    assert request.path == f"/v1/cni/{command.lower()}"
    body = request.json()
    assert (body["command"], body["cniVersion"]) == (command, "0.3.1")
    assert body["config"]["prevResult"] == prev


def test_del_without_netns_is_forwarded(run_plugin: Plugin, agent: FakeAgent) -> None:
    # The spec lets DEL come after the netns is gone; the agent still has to release the IP.
    env = attach_env("DEL")
    del env["netns"]
    out = run_plugin(net_config(agent.path), **env)
    assert out.code == 0
    assert agent.requests[0].json()["netns"] == ""


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_forwards_the_valid_attachments(run_plugin: Plugin, agent: FakeAgent, key: str) -> None:
    valid = [{"containerID": "0123abcd", "ifname": "eth0"}]
    config = net_config(agent.path) | {key: valid}
    out = run_plugin(config, command="GC", path="/opt/cni/bin")
    assert (out.code, out.stdout) == (0, b"")
    [request] = agent.requests
    assert request.path == "/v1/cni/gc"
    body = request.json()
    assert body["validAttachments"] == valid
    assert (body["cniVersion"], body["config"]) == ("1.1.0", config)


def test_gc_without_a_list_is_refused_rather_than_releasing_everything(
    run_plugin: Plugin, agent: FakeAgent
) -> None:
    out = run_plugin(net_config(agent.path), command="GC")
    assert (out.code, out.json()["code"]) == (1, INVALID_CONFIG)
    assert agent.requests == []


def test_status_asks_the_agent(run_plugin: Plugin, agent: FakeAgent) -> None:
    out = run_plugin(net_config(agent.path), command="STATUS")
    assert (out.code, out.stdout) == (0, b"")
    assert [(r.method, r.path) for r in agent.requests] == [("GET", "/v1/cni/status")]


def test_status_reports_the_agents_not_available(run_plugin: Plugin, agent: FakeAgent) -> None:
    agent.answers["/v1/cni/status"] = (503, b'{"code":50,"msg":"no IP can be had"}')
    out = run_plugin(net_config(agent.path), command="STATUS")
    assert out.code == 1
    assert out.json() == {"cniVersion": "1.1.0", "code": 50, "msg": "no IP can be had"}


# --- errors -----------------------------------------------------------------------------------


def test_agent_errors_become_cni_errors_in_the_request_version(
    run_plugin: Plugin, agent: FakeAgent
) -> None:
    agent.answers["/v1/cni/add"] = (
        503,
        b'{"code":11,"msg":"no free IP yet","details":"waited 5000 ms"}',
    )
    config = net_config(agent.path, "0.4.0")
    out = run_plugin(config, **attach_env("ADD"))
    assert out.code == 1
    assert out.json() == {
        "cniVersion": "0.4.0",
        "code": 11,
        "msg": "no free IP yet",
        "details": "waited 5000 ms",
    }


def test_a_non_json_agent_error_is_try_again(run_plugin: Plugin, agent: FakeAgent) -> None:
    agent.answers["/v1/cni/check"] = (502, b"<html>bad gateway</html>")
    out = run_plugin(net_config(agent.path), **attach_env("CHECK"))
    assert out.code == 1
    error = out.json()
    assert (error["code"], error["msg"]) == (11, "agent answered HTTP 502")
    assert "bad gateway" in error["details"]


@pytest.mark.parametrize(
    ("command", "code"), [("ADD", 11), ("CHECK", 11), ("STATUS", 50), ("GC", 11)]
)
def test_unreachable_agent_is_an_error_except_for_del(
    run_plugin: Plugin, short_dir: Path, command: str, code: int
) -> None:
    config = net_config(str(short_dir / "absent.sock")) | {"cni.dev/valid-attachments": []}
    out = run_plugin(config, **attach_env(command))
    assert out.code == 1
    error = out.json()
    assert (error["cniVersion"], error["code"]) == ("1.1.0", code)
    assert "absent.sock" in error["details"]


def test_unreachable_agent_del_is_spooled_and_succeeds(run_plugin: Plugin, short_dir: Path) -> None:
    # Refused as well as absent: a socket file left behind by a dead agent.
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(short_dir / "dead.sock"))
    dead.close()
    spooled: list[Path] = []
    for name in ("absent.sock", "dead.sock"):
        env = attach_env("DEL", containerid=name.split(".")[0])
        out = run_plugin(net_config(str(short_dir / name)), **env)
        assert (out.code, out.stdout) == (0, b"")
        [path] = set((short_dir / "del-spool").iterdir()) - set(spooled)
        spooled.append(path)
        doc = json.loads(path.read_text())
        assert doc["version"] == 1
        assert doc["request"]["containerID"] == env["containerid"]
        assert doc["request"]["config"] == net_config(str(short_dir / name))
    assert stat.S_IMODE((short_dir / "del-spool").stat().st_mode) == 0o700


def test_del_retries_a_full_backlog_until_the_agent_accepts(
    run_plugin: Plugin, agent: FakeAgent, short_dir: Path
) -> None:
    # A listener that does not accept yet, its backlog full: connect() says EAGAIN.
    path = str(short_dir / "busy.sock")
    busy = socket.socket(socket.AF_UNIX)
    busy.bind(path)
    busy.listen(0)
    waiting = []
    with contextlib.suppress(BlockingIOError):
        for _ in range(8):
            client = socket.socket(socket.AF_UNIX)
            client.setblocking(False)
            waiting.append(client)
            client.connect(path)
    accepted: list[bytes] = []

    def accept_later() -> None:
        time.sleep(0.5)
        for client in waiting:  # the queued ones then read as closed
            client.close()
        busy.settimeout(10)
        for _ in range(len(waiting) + 1):
            conn, _ = busy.accept()
            with conn:
                data = conn.recv(65536)
                if data.startswith(b"POST"):
                    accepted.append(data)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                    return

    thread = threading.Thread(target=accept_later, daemon=True)
    thread.start()
    out = run_plugin(net_config(path), **attach_env("DEL"))
    thread.join(10)
    assert (out.code, out.stdout) == (0, b"")
    assert len(accepted) == 1 and b"/v1/cni/del" in accepted[0]
    assert not (short_dir / "del-spool").exists()
    busy.close()


def test_version_is_answered_locally(run_plugin: Plugin) -> None:
    out = run_plugin({"cniVersion": "0.4.0"}, command="VERSION")
    assert out.code == 0
    assert out.json() == {"cniVersion": "0.4.0", "supportedVersions": list(SUPPORTED_VERSIONS)}
    out = run_plugin(b"", command="VERSION")
    assert out.json()["cniVersion"] == SPEC_VERSION


@pytest.mark.parametrize("stdin", [b"{not json", b'["a list"]', b"\xff\xfe"])
def test_undecodable_config_is_code_6(run_plugin: Plugin, stdin: bytes) -> None:
    out = run_plugin(stdin, **attach_env("ADD"))
    assert out.code == 1
    assert out.json()["code"] == DECODE_FAILURE


@pytest.mark.parametrize(
    "env",
    [
        {"command": ""},
        {"command": "SETUP"},
        {"containerid": ""},
        {"ifname": ""},
        {"netns": ""},
        {"args": "K8S_POD_NAME"},
        {"args": "K8S_POD_NAME=a;FOO=bar"},
    ],
    ids=[
        "no-command",
        "bad-command",
        "no-container",
        "no-ifname",
        "no-netns",
        "bad-args",
        "unknown-arg",
    ],
)
def test_bad_environment_is_code_4(
    run_plugin: Plugin, agent: FakeAgent, env: dict[str, str]
) -> None:
    out = run_plugin(net_config(agent.path), **(attach_env("ADD") | env))
    assert out.code == 1
    error = out.json()
    assert (error["cniVersion"], error["code"]) == ("1.1.0", INVALID_ENV)
    assert agent.requests == []


@pytest.mark.parametrize("version", ["0.2.0", "1.2.0", "2.0"])
def test_unsupported_version_is_code_1(run_plugin: Plugin, agent: FakeAgent, version: str) -> None:
    config = net_config(agent.path, version)
    out = run_plugin(config, **attach_env("ADD"))
    assert out.code == 1
    error = out.json()
    assert (error["cniVersion"], error["code"]) == (SPEC_VERSION, INCOMPATIBLE_VERSION)
    assert agent.requests == []


@pytest.mark.parametrize(
    "bad",
    [
        {"cniVersion": None},
        {"socket": "relative.sock"},
        {"socket": 7},
        {"socket": "/run/" + "x" * 103},
        {"pluginLogFile": 3},
        {"pluginLogLevel": "chatty"},
    ],
)
def test_invalid_plugin_config_is_code_7(
    run_plugin: Plugin, agent: FakeAgent, bad: dict[str, Any]
) -> None:
    config = {k: v for k, v in {**net_config(agent.path), **bad}.items() if v is not None}
    out = run_plugin(config, **attach_env("ADD"))
    assert out.code == 1
    assert out.json()["code"] == INVALID_CONFIG
    assert agent.requests == []


# --- logging ----------------------------------------------------------------------------------


def test_plugin_log_file_gets_json_lines_and_stdout_stays_clean(
    run_plugin: Plugin, agent: FakeAgent, short_dir: Path
) -> None:
    log_file = short_dir / "logs" / "plugin.log"
    config = net_config(agent.path, pluginLogFile=str(log_file), pluginLogLevel="INFO")
    assert run_plugin(config, **attach_env("ADD")).stdout == ADD_RESULT
    agent.answers["/v1/cni/del"] = (500, b'{"code":5,"msg":"checkpoint write failed"}')
    assert run_plugin(config, **attach_env("DEL")).code == 1
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [(x["level"], x["command"], x["msg"]) for x in lines] == [
        ("info", "ADD", "done"),
        ("error", "DEL", "checkpoint write failed"),
    ]
    assert lines[0]["containerID"] == "0123abcd"
    assert lines[1]["code"] == 5


def test_debug_log_has_the_exchange(run_plugin: Plugin, agent: FakeAgent, short_dir: Path) -> None:
    log_file = short_dir / "plugin.log"
    config = net_config(agent.path, pluginLogFile=str(log_file), pluginLogLevel="debug")
    run_plugin(config, **attach_env("ADD"))
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [x["msg"] for x in lines] == ["request", "response", "done"]
    assert json.loads(lines[0]["body"])["containerID"] == "0123abcd"
    assert lines[1]["body"] == ADD_RESULT.decode()


def test_unwritable_log_file_does_not_fail_the_add(run_plugin: Plugin, agent: FakeAgent) -> None:
    config = net_config(agent.path, pluginLogFile="/proc/vpcni/plugin.log")
    out = run_plugin(config, **attach_env("ADD"))
    assert (out.code, out.stdout) == (0, ADD_RESULT)


def test_log_to_stderr_keeps_stdout_for_the_result(run_plugin: Plugin, agent: FakeAgent) -> None:
    # aws-node's AWS_VPC_K8S_PLUGIN_LOG_FILE=stderr; FATAL logs nothing but must not fail.
    config = net_config(agent.path, pluginLogFile="stderr", pluginLogLevel="debug")
    out = run_plugin(config, **attach_env("ADD"))
    assert (out.code, out.stdout) == (0, ADD_RESULT)
    assert [json.loads(line)["msg"] for line in out.stderr.splitlines()] == [
        "request",
        "response",
        "done",
    ]
    quiet = run_plugin(net_config(agent.path, pluginLogFile="stderr", pluginLogLevel="FATAL"),
                       **attach_env("ADD"))  # fmt: skip
    assert (quiet.code, quiet.stdout, quiet.stderr) == (0, ADD_RESULT, b"")


# --- hostile input: always a CNI error on stdout, exit 1, nothing on stderr -------------------


def _assert_cni_error(out: Outcome, code: int) -> None:
    assert out.code == 1, out
    assert out.json()["code"] == code
    assert out.stderr == b""


def test_deeply_nested_stdin_is_code_6(run_plugin: Plugin, agent: FakeAgent) -> None:
    deep = b'{"cniVersion":"1.0.0","x":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    _assert_cni_error(run_plugin(deep, **attach_env("ADD")), DECODE_FAILURE)
    assert agent.requests == []


def test_deeply_nested_agent_answer_is_try_again(run_plugin: Plugin, agent: FakeAgent) -> None:
    agent.answers["/v1/cni/add"] = (500, b'{"code":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    _assert_cni_error(run_plugin(net_config(agent.path), **attach_env("ADD")), 11)


def test_nul_in_plugin_log_file_is_code_7(run_plugin: Plugin, agent: FakeAgent) -> None:
    config = net_config(agent.path, pluginLogFile="/tmp/a\u0000b")
    _assert_cni_error(run_plugin(config, **attach_env("ADD")), INVALID_CONFIG)


def test_closed_stdin_is_code_6(agent: FakeAgent) -> None:
    env = {f"CNI_{k.upper()}": v for k, v in attach_env("ADD").items()}
    done = subprocess.run(
        [str(built_plugin())],
        env=env,
        capture_output=True,
        preexec_fn=lambda: os.close(0),
        timeout=30,
    )
    assert done.returncode == 1
    assert json.loads(done.stdout)["code"] == DECODE_FAILURE
    assert done.stderr == b""


COMMANDS = st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "", "add", "ADD "])
ENV_TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]))
CONFIG_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    command=COMMANDS,
    env=st.dictionaries(
        st.sampled_from(["containerid", "netns", "ifname", "args", "path"]), ENV_TEXT, max_size=5
    ),
    config=st.dictionaries(
        st.sampled_from(
            [
                "cniVersion",
                "name",
                "pluginLogLevel",
                "prevResult",
                "mtu",
                "cni.dev/valid-attachments",
                "delSpool",
            ]
        ),
        CONFIG_VALUES,
    ),
    garbage=st.one_of(st.none(), st.binary(max_size=64)),
)
def test_fuzzed_env_and_stdin_get_a_cni_answer(
    run_plugin: Plugin,
    agent: FakeAgent,
    command: str,
    env: dict[str, str],
    config: dict[str, Any],
    garbage: bytes | None,
) -> None:
    # The socket is the fake agent's (no retry waits); delSpool may be garbage too.
    stdin = (
        garbage if garbage is not None else json.dumps({**config, "socket": agent.path}).encode()
    )
    out = run_plugin(stdin, command=command, **env)
    assert out.stderr == b""
    assert out.code in (0, 1)
    if out.code == 1:
        error = out.json()
        assert isinstance(error["code"], int) and isinstance(error["msg"], str)
    elif out.stdout:
        assert isinstance(out.json(), dict)


def test_the_plugin_is_a_static_binary() -> None:
    # Runs on any node (Bottlerocket has no libc to speak of for us): no ELF interpreter, no
    # dynamic section. `net` would pull in libc through cgo, which CGO_ENABLED=0 keeps out.
    data = built_plugin().read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2  # ELF64
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    types = {
        int.from_bytes(data[phoff + i * phentsize : phoff + i * phentsize + 4], "little")
        for i in range(phnum)
    }
    pt_dynamic, pt_interp = 2, 3
    assert not types & {pt_dynamic, pt_interp}
    if shutil.which("file"):
        described = subprocess.run(["file", str(built_plugin())], capture_output=True, text=True)
        assert "statically linked" in described.stdout
