"""API fuzzing from docs/openapi.yaml against a real agent on its Unix socket: requests generated
from the schemas (hypothesis) get the answers the document promises, and anything else a caller
might send (arbitrary JSON, mutated bodies, arbitrary bytes) gets a CNI error, never a 500 and
never a dead agent."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi

from tests.agent_harness import REPO, Agent
from tests.reliability.churn import count_tracebacks
from tests.unix_http import call

SPEC: dict[str, Any] = yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text())
EXAMPLES = 1000 if os.environ.get("VPCNI_RELIABILITY") == "full" else 40
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
POSTS = ["/v1/cni/add", "/v1/cni/del", "/v1/cni/check", "/v1/cni/gc"]


def schema(ref: dict[str, Any]) -> dict[str, Any]:
    """A schema of the document, resolvable on its own (its $refs point into `components`)."""
    return {**ref, "components": SPEC["components"]}


def from_schema(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for `node`, for the JSON Schema subset docs/openapi.yaml uses ($ref into
    components, allOf, object/array/string/integer/boolean, enum, const, pattern, bounds)."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return from_schema(SPEC["components"]["schemas"][name])
    if "allOf" in node:
        merged: dict[str, Any] = {}
        for part in node["allOf"]:
            while "$ref" in part:
                part = SPEC["components"]["schemas"][part["$ref"].rsplit("/", 1)[-1]]
            merged = {
                **merged,
                **part,
                "required": [*merged.get("required", []), *part.get("required", [])],
                "properties": {**merged.get("properties", {}), **part.get("properties", {})},
            }
        return from_schema(merged)
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "object":
        properties = node.get("properties", {})
        required = set(node.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v) for k, v in properties.items() if k in required},
            optional={k: from_schema(v) for k, v in properties.items() if k not in required},
        )
    if kind == "array":
        items = from_schema(node.get("items", {"type": "string"}))
        return st.lists(items, min_size=node.get("minItems", 0), max_size=5)
    if kind == "integer":
        return st.integers(node.get("minimum"), node.get("maximum"))
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        if "pattern" in node:
            return st.from_regex(node["pattern"], fullmatch=True)
        return st.text(max_size=node.get("maxLength", 64))
    raise ValueError(f"schema not covered by the fuzzer: {node}")


def request_schema(path: str) -> dict[str, Any]:
    body = SPEC["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return schema(body)


def check_answer(path: str, method: str, status: int, body: Any) -> None:
    """The status is one the document lists for the operation, the body matches its schema."""
    responses = SPEC["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} answered {status}: {body}"
    response = responses[str(status)]
    if "$ref" in response:
        response = SPEC["components"]["responses"][response["$ref"].rsplit("/", 1)[-1]]
    jsonschema.validate(body, schema(response["content"]["application/json"]["schema"]))


@pytest.fixture
def agent(start_agent: Callable[..., Agent]) -> Iterator[Agent]:
    a = start_agent(VPCNI_ADD_WAIT_MS="0")  # an empty pool answers 11 at once
    yield a
    assert a.proc is not None and a.proc.poll() is None, "the agent died"
    assert call(a.socket, "GET", "/healthz")[0] == 200
    assert count_tracebacks(a.log) == 0


def test_the_document_is_valid_openapi() -> None:
    validate_openapi(SPEC)


@pytest.mark.parametrize("path", POSTS)
def test_schema_valid_requests_get_documented_answers(agent: Agent, path: str) -> None:
    @FUZZ
    @given(body=from_schema(request_schema(path)))
    def run(body: dict[str, Any]) -> None:
        status, answer = call(agent.socket, "POST", path, body)
        check_answer(path, "post", status, answer)
        if status >= 400:  # valid input: only the node's state may say no
            assert answer["code"] in (3, 11, 100) or netns_refused(path, answer), answer

    run()


def netns_refused(path: str, answer: dict[str, Any]) -> bool:
    """An ADD whose netns is the node's own, not a namespace or unreadable: a path the schema
    allows, refused with code 4 for what is at it on this node."""
    return path == "/v1/cni/add" and answer["code"] == 4 and "netns" in answer["msg"].lower()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=50,
)


@pytest.mark.parametrize("path", POSTS)
def test_any_json_gets_a_cni_error_or_a_documented_answer(agent: Agent, path: str) -> None:
    # Mutations of valid bodies reach deeper than random JSON: drop, retype or add members.
    valid = from_schema(request_schema(path))

    @st.composite
    def mutated(draw: st.DrawFn) -> Any:
        body = dict(draw(valid))
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.sampled_from([*body, "extra"]) if body else st.just("extra"))
            if draw(st.booleans()):
                body.pop(key, None)
            else:
                body[key] = draw(JSON)
        return body

    @FUZZ
    @given(body=JSON | mutated())
    def run(body: Any) -> None:
        status, answer = call(agent.socket, "POST", path, body)
        check_answer(path, "post", status, answer)

    run()


def raw_exchange(path: Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_any_bytes_get_an_http_error_never_a_500(agent: Agent) -> None:
    heads = st.sampled_from(
        [
            b"",
            b"POST /v1/cni/add HTTP/1.1\r\nHost: v\r\n",
            b"POST /v1/cni/add HTTP/1.1\r\nHost: v\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /v1/cni/status HTTP/1.1\r\n",
        ]
    )

    @FUZZ
    @given(head=heads, tail=st.binary(max_size=2048))
    def run(head: bytes, tail: bytes) -> None:
        answer = raw_exchange(agent.socket, head + tail)
        if answer:  # a connection closed without an answer is fine; a 5xx is not
            status_line = answer.split(b"\r\n", 1)[0]
            assert not status_line.startswith(b"HTTP/1.1 5"), status_line
            if b"\r\n\r\n" in answer and answer.startswith(b"HTTP/1.1 4"):
                body = answer.split(b"\r\n\r\n", 1)[1]
                if body.startswith(b"{"):
                    assert "code" in json.loads(body)

    run()
