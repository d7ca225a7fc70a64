"""The `vpcni` CNI plugin: forwards each CNI command to the node agent over its Unix socket.

Runtimes exec this once per pod operation, so start-up time is the product: stdlib only
(`_socket`, the C half of `json`), nothing else of `agent`, HTTP/1.1 spoken by hand. The file is
also installed verbatim beside the standalone /opt/cni/bin/vpcni (`agent.cni.install`), which
runs on the node's own interpreter: keep it runnable on Python 3.8 (no `match`, no runtime `X | Y`).
Contract: docs/cni.md.
"""

from __future__ import annotations

import _socket
import os
import sys
import time

try:
    import _json
except ImportError:  # an interpreter without the C accelerator: `json` is only slower
    _json = None  # type: ignore[assignment]

SPEC_VERSION = "1.1.0"
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
DEFAULT_SOCKET = "/run/vpcni/agent.sock"

# CNI spec error codes used here.
INCOMPATIBLE_VERSION = 1
INVALID_ENV = 4
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50

CONNECT_TIMEOUT_S = 2.0
# ADD may wait for an in-flight EC2 allocation (VPCNI_ADD_WAIT_MS) plus wiring and an fsync.
REQUEST_TIMEOUT_S = {"ADD": 30.0, "DEL": 30.0, "CHECK": 30.0, "GC": 60.0, "STATUS": 5.0}
# The attachment commands and the CNI_* variables each one needs.
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
}
POD_ARGS = ("K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID")
LOG_LEVELS = {"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40}


# JSON through CPython's `_json` directly: `import json` pulls in `re` and `enum` and costs
# ~12 ms, as much as the interpreter's own start (docs/benchmarks.md).
class _ScanContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, object] = {}

    @staticmethod
    def parse_constant(name: str) -> object:
        raise ValueError(f"{name} is not valid JSON")


_WHITESPACE = " \t\n\r"


def json_loads(data: bytes) -> object:
    """Decode one JSON document (UTF-8); ValueError when it is not JSON."""
    text = data.decode("utf-8")
    if _json is None:
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _json.make_scanner(_ScanContext())(text, start)  # type: ignore[arg-type]
    except (StopIteration, SystemError):
        # Malformed input: the C scanner raises json.decoder's error only once that module is
        # loaded (else SystemError). Pay for the import on this path alone, for a good message.
        import json

        return json.loads(text)
    if text[end:].strip(_WHITESPACE):
        raise ValueError(f"extra data after the JSON value at offset {end}")
    return value


def json_dumps(value: object) -> str:
    """Encode `value` as compact ASCII JSON; objects it does not know become strings."""
    if _json is None:
        import json

        return json.dumps(value, default=str)
    encode = _json.make_encoder(
        None, str, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True
    )
    return "".join(encode(value, 0))


class CniError(Exception):
    """A failure reported to the runtime as a CNI error object on stdout."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


class AgentUnavailable(Exception):
    """No HTTP answer from the agent: connect failed, the connection broke, or it timed out."""


class PluginLog:
    """Appends JSON lines to `pluginLogFile`; never raises, never touches stdout."""

    def __init__(self, path: str | None = None, level: str = "info", **fields: object) -> None:
        self.path = path
        self.threshold = LOG_LEVELS.get(level.lower(), LOG_LEVELS["info"])
        self.fields = fields

    def log(self, level: str, msg: str, **fields: object) -> None:
        """Write one line if `level` passes the threshold and a file is configured."""
        if self.path is None or LOG_LEVELS[level] < self.threshold:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
        line = {"ts": stamp, "level": level, "msg": msg, **self.fields, **fields}
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                # One write() per line: concurrent shims appending to one file do not interleave.
                os.write(fd, (json_dumps(line) + "\n").encode())
            finally:
                os.close(fd)
        except OSError:
            pass  # Losing a log line must never fail a pod's network set-up.


def parse_cni_args(raw: str) -> dict[str, str]:
    """Parse CNI_ARGS (`K=V;K=V`) into the pod identity, the way libcni's `LoadArgs` does.

    Unknown keys are an error unless `IgnoreUnknown` is true (kubelet always sets it).
    """
    pairs: dict[str, str] = {}
    for item in raw.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS: invalid pair {item!r}")
        pairs[key] = value
    ignore_unknown = pairs.pop("IgnoreUnknown", "false").lower() in ("1", "true")
    unknown = sorted(set(pairs) - set(POD_ARGS))
    if unknown and not ignore_unknown:
        raise CniError(INVALID_ENV, f"CNI_ARGS: unknown args {unknown}")
    return {key: pairs.get(key, "") for key in POD_ARGS}


def load_config(stdin: bytes) -> dict[str, object]:
    """Decode and check the network config; `cniVersion` must be one this shim speaks."""
    try:
        config = json_loads(stdin)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise CniError(DECODE_FAILURE, "network config on stdin is not JSON", str(exc)) from exc
    if not isinstance(config, dict):
        raise CniError(DECODE_FAILURE, "network config on stdin is not a JSON object")
    version = config.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_CONFIG, "network config has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"cniVersion {version} is not supported",
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    _check_plugin_keys(config)
    return config


def _check_plugin_keys(config: dict[str, object]) -> None:
    # Only the keys the shim itself uses; the agent validates mtu and vethPrefix (one rule set).
    socket_path = config.get("socket", DEFAULT_SOCKET)
    if not isinstance(socket_path, str) or not socket_path.startswith("/"):
        raise CniError(INVALID_CONFIG, "socket must be an absolute path")
    # sun_path holds 107 bytes; a longer path would otherwise look like an absent agent.
    if len(socket_path.encode()) > 107:
        raise CniError(INVALID_CONFIG, "socket path is longer than 107 bytes")
    log_file = config.get("pluginLogFile")
    if log_file is not None and not isinstance(log_file, str):
        raise CniError(INVALID_CONFIG, "pluginLogFile must be a string")
    level = config.get("pluginLogLevel")
    if level is not None and (not isinstance(level, str) or level.lower() not in LOG_LEVELS):
        raise CniError(INVALID_CONFIG, f"pluginLogLevel must be one of {sorted(LOG_LEVELS)}")


def build_request(
    command: str, env: dict[str, str], config: dict[str, object]
) -> tuple[str, str, bytes]:
    """Map one CNI invocation to the agent's API: (method, path, JSON body)."""
    version = config["cniVersion"]
    if command == "STATUS":
        return "GET", "/v1/cni/status", b""
    if command == "GC":
        # libcni sends both spellings (the spec renamed the key); neither means "no list given",
        # which must not be read as "nothing is valid" and release every pod.
        valid = config.get("cni.dev/valid-attachments", config.get("cni.dev/attachments"))
        if not isinstance(valid, list):
            raise CniError(INVALID_CONFIG, "GC needs cni.dev/valid-attachments (a list)")
        body: dict[str, object] = {
            "command": command,
            "cniVersion": version,
            "config": config,
            "validAttachments": valid,
        }
    else:
        missing = [name for name in REQUIRED_ENV[command] if not env.get(name)]
        if missing:
            raise CniError(INVALID_ENV, f"{command} needs {', '.join(missing)}")
        body = {
            "command": command,
            "cniVersion": version,
            "containerID": env["CNI_CONTAINERID"],
            "netns": env.get("CNI_NETNS", ""),
            "ifName": env["CNI_IFNAME"],
            "args": parse_cni_args(env.get("CNI_ARGS", "")),
            "path": env.get("CNI_PATH", ""),
            "config": config,
        }
    return "POST", f"/v1/cni/{command.lower()}", json_dumps(body).encode()


class _Reader:
    """Buffered reads from a socket against one deadline."""

    def __init__(self, sock: _socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = b""
        self.eof = False

    def _fill(self) -> None:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for the agent")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            self.eof = True
        self.buffer += chunk

    def until(self, delimiter: bytes) -> bytes:
        """Bytes up to and without `delimiter`, which is consumed."""
        while delimiter not in self.buffer:
            if self.eof:
                raise ConnectionError("agent closed the connection mid-response")
            self._fill()
        data, _, self.buffer = self.buffer.partition(delimiter)
        return data

    def exactly(self, size: int) -> bytes:
        """The next `size` bytes."""
        while len(self.buffer) < size:
            if self.eof:
                raise ConnectionError("agent closed the connection mid-body")
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def rest(self) -> bytes:
        """Everything until the peer closes (a body without length or chunking)."""
        while not self.eof:
            self._fill()
        data, self.buffer = self.buffer, b""
        return data


def _read_response(reader: _Reader) -> tuple[int, bytes]:
    head = reader.until(b"\r\n\r\n").decode("latin-1")
    status_line, *header_lines = head.split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ConnectionError(f"agent sent a malformed status line {status_line[:80]!r}")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int(reader.until(b"\r\n").split(b";")[0], 16)
            if size == 0:
                break
            body += reader.exactly(size)
            reader.exactly(2)  # CRLF after each chunk
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if length < 0:
            raise ValueError(f"negative Content-Length {length}")
        body = reader.exactly(length)
    else:
        body = reader.rest()
    return int(parts[1]), body


def http_request(
    socket_path: str, method: str, target: str, body: bytes, *, timeout: float
) -> tuple[int, bytes]:
    """One HTTP/1.1 exchange over a fresh Unix-socket connection: (status, body).

    Raises AgentUnavailable for anything short of a complete response.
    """
    deadline = time.monotonic() + timeout
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(min(CONNECT_TIMEOUT_S, timeout))
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: vpcni\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        try:
            sock.connect(socket_path)
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(head.encode("latin-1") + body)
            return _read_response(_Reader(sock, deadline))
        except (OSError, ValueError) as exc:  # ValueError: a bad length or chunk size
            raise AgentUnavailable(f"{method} {target} via {socket_path}: {exc}") from exc
    finally:
        sock.close()


def _agent_error(status: int, body: bytes) -> CniError:
    """The agent's `{"code","msg","details"}`, or a try-again error if it sent something else."""
    try:
        answer = json_loads(body)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and type(answer.get("code")) is int:
        return CniError(answer["code"], str(answer.get("msg", "")), str(answer.get("details", "")))
    return CniError(
        TRY_AGAIN_LATER, f"agent answered HTTP {status}", body[:512].decode(errors="replace")
    )


def _error_output(version: str, error: CniError) -> bytes:
    doc = {"cniVersion": version, "code": error.code, "msg": error.msg}
    if error.details:
        doc["details"] = error.details
    return json_dumps(doc).encode() + b"\n"


def _version_output(stdin: bytes) -> bytes:
    # The spec echoes the caller's cniVersion; libcni sends one on stdin for VERSION.
    try:
        doc = json_loads(stdin)
    except ValueError:
        doc = None
    asked = doc.get("cniVersion") if isinstance(doc, dict) else None
    version = asked if asked in SUPPORTED_VERSIONS else SPEC_VERSION
    return json_dumps(
        {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}
    ).encode()


def _plugin_log(config: dict[str, object], **fields: object) -> PluginLog:
    path = config.get("pluginLogFile")
    level = config.get("pluginLogLevel")
    return PluginLog(
        path if isinstance(path, str) and path else None,
        level if isinstance(level, str) else "info",
        **fields,
    )


def run(env: dict[str, str], stdin: bytes) -> tuple[int, bytes]:
    """Execute one CNI invocation: (exit code, bytes for stdout). The testable core of `main`."""
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":
        return 0, _version_output(stdin)
    reply_version = SPEC_VERSION
    log = PluginLog()
    started = time.monotonic()
    try:
        if command not in REQUEST_TIMEOUT_S:
            raise CniError(INVALID_ENV, f"CNI_COMMAND {command!r} is not a CNI command")
        config = load_config(stdin)
        reply_version = str(config["cniVersion"])
        log = _plugin_log(config, command=command, containerID=env.get("CNI_CONTAINERID", ""))
        method, target, body = build_request(command, env, config)
        log.log("debug", "request", path=target, body=body.decode())
        socket_path = str(config.get("socket", DEFAULT_SOCKET))
        try:
            status, answer = http_request(
                socket_path, method, target, body, timeout=REQUEST_TIMEOUT_S[command]
            )
        except AgentUnavailable as exc:
            if command != "DEL":
                code = NOT_AVAILABLE if command == "STATUS" else TRY_AGAIN_LATER
                raise CniError(code, "vpcni agent is not reachable", str(exc)) from exc
            # Best effort: the agent releases leftovers when it reconciles (and on GC).
            log.log("warn", "agent unavailable, DEL reported as done", error=str(exc))
            return 0, b""
        log.log("debug", "response", status=status, body=answer.decode(errors="replace"))
        if not 200 <= status < 300:
            raise _agent_error(status, answer)
        log.log("info", "done", ms=round((time.monotonic() - started) * 1000, 1))
        # Only ADD has a result; the spec wants nothing on stdout for the others' success.
        return 0, answer if command == "ADD" else b""
    except CniError as error:
        log.log("error", error.msg, code=error.code, details=error.details)
        return 1, _error_output(reply_version, error)


def main() -> int:
    """Entry point: CNI environment and stdin in, result or error on stdout, exit status out."""
    code, output = run(dict(os.environ), sys.stdin.buffer.read())
    sys.stdout.buffer.write(output)
    sys.stdout.buffer.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
