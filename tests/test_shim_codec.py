"""The shim's `_json`-only codec agrees with the `json` package."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.cni import shim

documents = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)


@given(documents)
def test_round_trip_matches_json(doc: object) -> None:
    encoded = shim.json_dumps(doc)
    assert json.loads(encoded) == doc
    assert shim.json_loads(encoded.encode()) == doc
    assert shim.json_loads(json.dumps(doc, indent=2).encode()) == doc


@pytest.mark.parametrize(
    "text", [b"", b"   ", b"{not json", b"[1, 2", b'{"a": 1} trailing', b"NaN", b"\xff\xfe"]
)
def test_malformed_input_is_value_error(text: bytes) -> None:
    with pytest.raises(ValueError):
        shim.json_loads(text)


def test_unknown_objects_become_strings() -> None:
    assert json.loads(shim.json_dumps({"at": 1.5, "path": object.__name__})) == {
        "at": 1.5,
        "path": "object",
    }
    assert shim.json_dumps({"x": {1, 2}.__class__}) == json.dumps({"x": str(set)})
