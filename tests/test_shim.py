"""The `vpcni` CNI shim, exec'd as a runtime would, against a fake agent on a Unix socket.

Every subprocess test runs twice: the standalone file that `agent.cni.install` generates (what
/opt/cni/bin/vpcni is) and `python -m agent.cni.shim`.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from agent.cni import install, shim

REPO = Path(__file__).resolve().parent.parent
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


@pytest.fixture(scope="session")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cni-bin") / "vpcni"
    install.install_shim(path, sys.executable)
    return path


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: bytes
    stderr: bytes

    def json(self) -> Any:
        return json.loads(self.stdout)


Shim = Callable[..., Outcome]


@pytest.fixture(params=["standalone", "module"])
def run_shim(request: pytest.FixtureRequest, standalone: Path) -> Shim:
    """Run the shim with `CNI_*` variables from keywords and `stdin` (bytes or a dict)."""
    argv = (
        [str(standalone)]
        if request.param == "standalone"
        else [sys.executable, "-m", "agent.cni.shim"]
    )

    def run(stdin: bytes | dict[str, Any] = b"", **cni: str) -> Outcome:
        data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
        env = {"PATH": os.environ["PATH"], **{f"CNI_{k.upper()}": v for k, v in cni.items()}}
        done = subprocess.run(argv, input=data, env=env, capture_output=True, cwd=REPO, timeout=30)
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
    run_shim: Shim, agent: FakeAgent
) -> None:
    config = net_config(agent.path, mtu=9001, vethPrefix="eni")
    out = run_shim(config, **attach_env("ADD"))
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
    run_shim: Shim, agent: FakeAgent, command: str
) -> None:
    # libcni hands a cached result back as prevResult, in the version the ADD used.
    prev = {"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.0.1.17/32"}]}
    config = net_config(agent.path, "0.3.1", prevResult=prev)
    out = run_shim(config, **attach_env(command))
    assert (out.code, out.stdout) == (0, b"")
    [request] = agent.requests
    assert request.path == f"/v1/cni/{command.lower()}"
    body = request.json()
    assert (body["command"], body["cniVersion"]) == (command, "0.3.1")
    assert body["config"]["prevResult"] == prev


def test_del_without_netns_is_forwarded(run_shim: Shim, agent: FakeAgent) -> None:
    # The spec lets DEL come after the netns is gone; the agent still has to release the IP.
    env = attach_env("DEL")
    del env["netns"]
    out = run_shim(net_config(agent.path), **env)
    assert out.code == 0
    assert agent.requests[0].json()["netns"] == ""


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_forwards_the_valid_attachments(run_shim: Shim, agent: FakeAgent, key: str) -> None:
    valid = [{"containerID": "0123abcd", "ifname": "eth0"}]
    config = net_config(agent.path) | {key: valid}
    out = run_shim(config, command="GC", path="/opt/cni/bin")
    assert (out.code, out.stdout) == (0, b"")
    [request] = agent.requests
    assert request.path == "/v1/cni/gc"
    body = request.json()
    assert body["validAttachments"] == valid
    assert (body["cniVersion"], body["config"]) == ("1.1.0", config)


def test_gc_without_a_list_is_refused_rather_than_releasing_everything(
    run_shim: Shim, agent: FakeAgent
) -> None:
    out = run_shim(net_config(agent.path), command="GC")
    assert (out.code, out.json()["code"]) == (1, shim.INVALID_CONFIG)
    assert agent.requests == []


def test_status_asks_the_agent(run_shim: Shim, agent: FakeAgent) -> None:
    out = run_shim(net_config(agent.path), command="STATUS")
    assert (out.code, out.stdout) == (0, b"")
    assert [(r.method, r.path) for r in agent.requests] == [("GET", "/v1/cni/status")]


def test_status_reports_the_agents_not_available(run_shim: Shim, agent: FakeAgent) -> None:
    agent.answers["/v1/cni/status"] = (503, b'{"code":50,"msg":"no IP can be had"}')
    out = run_shim(net_config(agent.path), command="STATUS")
    assert out.code == 1
    assert out.json() == {"cniVersion": "1.1.0", "code": 50, "msg": "no IP can be had"}


# --- errors -----------------------------------------------------------------------------------


def test_agent_errors_become_cni_errors_in_the_request_version(
    run_shim: Shim, agent: FakeAgent
) -> None:
    agent.answers["/v1/cni/add"] = (
        503,
        b'{"code":11,"msg":"no free IP yet","details":"waited 5000 ms"}',
    )
    config = net_config(agent.path, "0.4.0")
    out = run_shim(config, **attach_env("ADD"))
    assert out.code == 1
    assert out.json() == {
        "cniVersion": "0.4.0",
        "code": 11,
        "msg": "no free IP yet",
        "details": "waited 5000 ms",
    }


def test_a_non_json_agent_error_is_try_again(run_shim: Shim, agent: FakeAgent) -> None:
    agent.answers["/v1/cni/check"] = (502, b"<html>bad gateway</html>")
    out = run_shim(net_config(agent.path), **attach_env("CHECK"))
    assert out.code == 1
    error = out.json()
    assert (error["code"], error["msg"]) == (11, "agent answered HTTP 502")
    assert "bad gateway" in error["details"]


@pytest.mark.parametrize(
    ("command", "code"), [("ADD", 11), ("CHECK", 11), ("STATUS", 50), ("GC", 11)]
)
def test_unreachable_agent_is_an_error_except_for_del(
    run_shim: Shim, short_dir: Path, command: str, code: int
) -> None:
    config = net_config(str(short_dir / "absent.sock")) | {"cni.dev/valid-attachments": []}
    out = run_shim(config, **attach_env(command))
    assert out.code == 1
    error = out.json()
    assert (error["cniVersion"], error["code"]) == ("1.1.0", code)
    assert "absent.sock" in error["details"]


def test_unreachable_agent_del_succeeds(run_shim: Shim, short_dir: Path) -> None:
    # Refused as well as absent: a socket file left behind by a dead agent.
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(short_dir / "dead.sock"))
    dead.close()
    for name in ("absent.sock", "dead.sock"):
        out = run_shim(net_config(str(short_dir / name)), **attach_env("DEL"))
        assert (out.code, out.stdout) == (0, b"")


def test_version_is_answered_locally(run_shim: Shim) -> None:
    out = run_shim({"cniVersion": "0.4.0"}, command="VERSION")
    assert out.code == 0
    assert out.json() == {"cniVersion": "0.4.0", "supportedVersions": list(shim.SUPPORTED_VERSIONS)}
    out = run_shim(b"", command="VERSION")
    assert out.json()["cniVersion"] == shim.SPEC_VERSION


@pytest.mark.parametrize("stdin", [b"{not json", b'["a list"]', b"\xff\xfe"])
def test_undecodable_config_is_code_6(run_shim: Shim, stdin: bytes) -> None:
    out = run_shim(stdin, **attach_env("ADD"))
    assert out.code == 1
    assert out.json()["code"] == shim.DECODE_FAILURE


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
def test_bad_environment_is_code_4(run_shim: Shim, agent: FakeAgent, env: dict[str, str]) -> None:
    out = run_shim(net_config(agent.path), **(attach_env("ADD") | env))
    assert out.code == 1
    error = out.json()
    assert (error["cniVersion"], error["code"]) == ("1.1.0", shim.INVALID_ENV)
    assert agent.requests == []


@pytest.mark.parametrize("version", ["0.2.0", "1.2.0", "2.0"])
def test_unsupported_version_is_code_1(run_shim: Shim, agent: FakeAgent, version: str) -> None:
    config = net_config(agent.path, version)
    out = run_shim(config, **attach_env("ADD"))
    assert out.code == 1
    error = out.json()
    assert (error["cniVersion"], error["code"]) == (shim.SPEC_VERSION, shim.INCOMPATIBLE_VERSION)
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
    run_shim: Shim, agent: FakeAgent, bad: dict[str, Any]
) -> None:
    config = {k: v for k, v in {**net_config(agent.path), **bad}.items() if v is not None}
    out = run_shim(config, **attach_env("ADD"))
    assert out.code == 1
    assert out.json()["code"] == shim.INVALID_CONFIG
    assert agent.requests == []


# --- logging ----------------------------------------------------------------------------------


def test_plugin_log_file_gets_json_lines_and_stdout_stays_clean(
    run_shim: Shim, agent: FakeAgent, short_dir: Path
) -> None:
    log_file = short_dir / "logs" / "plugin.log"
    config = net_config(agent.path, pluginLogFile=str(log_file), pluginLogLevel="INFO")
    assert run_shim(config, **attach_env("ADD")).stdout == ADD_RESULT
    agent.answers["/v1/cni/del"] = (500, b'{"code":5,"msg":"checkpoint write failed"}')
    assert run_shim(config, **attach_env("DEL")).code == 1
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [(x["level"], x["command"], x["msg"]) for x in lines] == [
        ("info", "ADD", "done"),
        ("error", "DEL", "checkpoint write failed"),
    ]
    assert lines[0]["containerID"] == "0123abcd"
    assert lines[1]["code"] == 5


def test_debug_log_has_the_exchange(run_shim: Shim, agent: FakeAgent, short_dir: Path) -> None:
    log_file = short_dir / "plugin.log"
    config = net_config(agent.path, pluginLogFile=str(log_file), pluginLogLevel="debug")
    run_shim(config, **attach_env("ADD"))
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [x["msg"] for x in lines] == ["request", "response", "done"]
    assert json.loads(lines[0]["body"])["containerID"] == "0123abcd"
    assert lines[1]["body"] == ADD_RESULT.decode()


def test_unwritable_log_file_does_not_fail_the_add(run_shim: Shim, agent: FakeAgent) -> None:
    config = net_config(agent.path, pluginLogFile="/proc/vpcni/plugin.log")
    out = run_shim(config, **attach_env("ADD"))
    assert (out.code, out.stdout) == (0, ADD_RESULT)


# --- start-up cost ----------------------------------------------------------------------------


def test_shim_imports_nothing_heavy_and_nothing_else_of_the_project() -> None:
    code = "import sys, agent.cni.shim; print('\\n'.join(sorted(sys.modules)))"
    env = {"PYTHONPATH": str(REPO)}  # -I ignores it; -S keeps site (and the .pth) out
    modules = subprocess.run(
        [sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert {
        "http",
        "http.client",
        "aiohttp",
        "asyncio",
        "typing",
        "socket",
        "email",
        "json",
        "re",
    }.isdisjoint(modules)
    assert [m for m in modules if m.startswith("agent")] == ["agent", "agent.cni", "agent.cni.shim"]


def test_standalone_shim_runs_isolated_without_the_project(standalone: Path) -> None:
    first = standalone.read_text().splitlines()[0]
    assert first == f"#!{sys.executable} -IS"
    done = subprocess.run(
        [sys.executable, "-IS", "-X", "importtime", str(standalone)],
        input=b"{}",
        env={"CNI_COMMAND": "VERSION"},
        cwd="/",
        capture_output=True,
        check=True,
    )
    imported = {line.split("|")[-1].strip() for line in done.stderr.decode().splitlines()}
    # The C codec alone: `json` (with `re` and `enum`) would double the start-up time.
    assert "_json" in imported
    assert not {m for m in imported if m.startswith(("agent", "http", "site", "typing", "json"))}
    assert "re" not in imported


def test_shim_source_parses_as_python_3_8() -> None:
    # The plugin runs on the node's python3 (Amazon Linux 2023 ships 3.9).
    ast.parse((REPO / "agent" / "cni" / "shim.py").read_text(), feature_version=(3, 8))


OLD_PYTHONS = sorted(Path.home().glob(".pyenv/versions/3.8.*/bin/python3.8"))


@pytest.mark.skipif(not OLD_PYTHONS, reason="no Python 3.8 interpreter on this machine")
def test_standalone_shim_runs_on_python_3_8(agent: FakeAgent, short_dir: Path) -> None:
    plugin = short_dir / "vpcni"
    install.install_shim(plugin, str(OLD_PYTHONS[0]))
    env = {f"CNI_{k.upper()}": v for k, v in attach_env("ADD").items()}
    done = subprocess.run(
        [str(plugin)],
        input=json.dumps(net_config(agent.path)).encode(),
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, ADD_RESULT, b"")
    assert agent.requests[0].json()["containerID"] == "0123abcd"


# --- the hand-written HTTP client, in process -------------------------------------------------


def _serve_once(path: str, reply: Callable[[socket.socket], None]) -> threading.Thread:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            conn.recv(65536)
            reply(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_chunked_response_is_decoded(short_dir: Path) -> None:
    path = str(short_dir / "s.sock")
    raw = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n2;x=y\r\n1}\r\n'
    raw += b"0\r\n\r\n"
    _serve_once(path, lambda conn: conn.sendall(raw))
    assert shim.http_request(path, "POST", "/v1/cni/add", b"{}", timeout=5) == (200, b'{"a":1}')


def test_body_without_length_is_read_to_close(short_dir: Path) -> None:
    path = str(short_dir / "s.sock")
    _serve_once(path, lambda conn: conn.sendall(b"HTTP/1.0 404 Not Found\r\n\r\nnope"))
    assert shim.http_request(path, "GET", "/x", b"", timeout=5) == (404, b"nope")


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["truncated-body", "truncated-head", "not-http", "bad-length", "minus-length", "bad-chunk"],
)
def test_incomplete_or_garbled_responses_are_agent_unavailable(short_dir: Path, raw: bytes) -> None:
    path = str(short_dir / "s.sock")
    _serve_once(path, lambda conn: conn.sendall(raw))
    with pytest.raises(shim.AgentUnavailable):
        shim.http_request(path, "POST", "/v1/cni/add", b"{}", timeout=5)


def test_a_silent_agent_times_out(short_dir: Path) -> None:
    path = str(short_dir / "s.sock")
    release = threading.Event()

    def stall(conn: socket.socket) -> None:
        release.wait(5)

    thread = _serve_once(path, stall)
    started = time.monotonic()
    with pytest.raises(shim.AgentUnavailable, match="timed out"):
        shim.http_request(path, "POST", "/v1/cni/add", b"{}", timeout=0.3)
    assert time.monotonic() - started < 2
    release.set()
    thread.join()


# --- CNI_ARGS ---------------------------------------------------------------------------------


def test_cni_args_parse_like_libcni() -> None:
    assert shim.parse_cni_args(POD_ARGS + ";K8S_POD_IP=ignored;") == {
        "K8S_POD_NAMESPACE": "default",
        "K8S_POD_NAME": "web-0",
        "K8S_POD_INFRA_CONTAINER_ID": "abc123",
        "K8S_POD_UID": "5f0c",
    }
    assert shim.parse_cni_args("K8S_POD_NAME=a=b")["K8S_POD_NAME"] == "a=b"
    assert shim.parse_cni_args("")["K8S_POD_NAME"] == ""
    with pytest.raises(shim.CniError, match="unknown args"):
        shim.parse_cni_args("IgnoreUnknown=false;OTHER=1")
    with pytest.raises(shim.CniError, match="invalid pair"):
        shim.parse_cni_args("=x")
