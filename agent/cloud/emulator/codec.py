"""The EC2 Query protocol, both ways, driven by botocore's own EC2 service model.

Requests are form fields serialised by botocore's EC2 serializer (`Ipv4Prefix.1`,
`Filter.1.Value.1`, `TagSpecification.1.Tag.1.Key`...); `decode_params` walks the operation's
input shape the same way and returns the parameters as boto3 callers wrote them. Responses are
built as boto3-shaped dicts (`{"NetworkInterfaces": [...]}`) and `encode_response` writes the
XML with the model's locationNames (`networkInterfaceSet`/`item`...). Deriving both from the
model keeps the emulator in step with what botocore parses, member by member.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree as ET

from botocore.loaders import Loader
from botocore.model import (
    ListShape,
    OperationModel,
    OperationNotFoundError,
    ServiceModel,
    Shape,
    StructureShape,
)

from agent.cloud.emulator.model import ApiError

XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"
API_VERSION = "2016-11-15"


@functools.cache
def service_model() -> ServiceModel:
    """botocore's EC2 model (loaded once, ~0.3 s)."""
    return ServiceModel(Loader().load_service_model("ec2", "service-2", API_VERSION), "ec2")


def operation(action: str) -> OperationModel:
    """The operation called `action`, or InvalidAction."""
    try:
        return service_model().operation_model(action)
    except OperationNotFoundError:
        raise ApiError(
            "InvalidAction", f"The action {action} is not valid for this web service."
        ) from None


@functools.cache
def members(shape_name: str) -> frozenset[str]:
    """Member names of a structure shape, e.g. to cut a view down to a slimmer shape."""
    shape = service_model().shape_for(shape_name)
    assert isinstance(shape, StructureShape)
    return frozenset(shape.members)


# -- requests ----------------------------------------------------------------------------------


def _query_name(shape: Shape, default: str) -> str:
    # botocore's EC2Serializer._get_serialized_name: queryName, else capitalised locationName.
    if "queryName" in shape.serialization:
        return str(shape.serialization["queryName"])
    name = shape.serialization.get("name")
    return str(name[0].upper() + name[1:]) if name else default


def decode_params(action: str, form: Mapping[str, str]) -> dict[str, Any]:
    """The input parameters of `action`, named and typed as in boto3; fields the operation does
    not define are ignored. InvalidParameterValue for values of the wrong type."""
    shape = operation(action).input_shape
    if shape is None:
        return {}
    present: set[str] = set()
    for key in form:
        parts = key.split(".")
        present.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    out = _decode(shape, "", form, present)
    return out if isinstance(out, dict) else {}


def _decode(shape: Shape, prefix: str, form: Mapping[str, str], present: set[str]) -> Any:
    if isinstance(shape, StructureShape):
        out: dict[str, Any] = {}
        for name, member in shape.members.items():
            key = _query_name(member, name)
            path = f"{prefix}.{key}" if prefix else key
            if path in present:
                out[name] = _decode(member, path, form, present)
        return out
    if isinstance(shape, ListShape):
        items: list[Any] = []
        while f"{prefix}.{len(items) + 1}" in present:
            items.append(_decode(shape.member, f"{prefix}.{len(items) + 1}", form, present))
        return items
    raw = form.get(prefix)
    if raw is None:
        # A scalar named only as the start of longer keys: treat as absent, not as a crash.
        raise ApiError("InvalidParameterValue", f"Value for parameter {prefix} is missing")
    kind = shape.type_name
    try:
        if kind in ("integer", "long"):
            return int(raw)
        if kind in ("float", "double"):
            return float(raw)
    except ValueError:
        raise ApiError(
            "InvalidParameterValue", f"Value ({raw}) for parameter {prefix} is invalid."
        ) from None
    if kind == "boolean":
        if raw.lower() not in ("true", "false"):
            raise ApiError(
                "InvalidParameterValue", f"Value ({raw}) for parameter {prefix} is invalid."
            )
        return raw.lower() == "true"
    return raw


# -- responses ---------------------------------------------------------------------------------


def timestamp(epoch: float) -> str:
    """EC2's timestamp format, e.g. 2026-11-26T12:00:00.000Z."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _encode(parent: ET.Element, tag: str, shape: Shape, value: Any) -> None:
    el = ET.SubElement(parent, tag)
    if isinstance(shape, StructureShape):
        _encode_members(el, shape, value)
    elif isinstance(shape, ListShape):
        item_tag = shape.member.serialization.get("name", "item")
        for item in value:
            _encode(el, item_tag, shape.member, item)
    elif shape.type_name == "boolean":
        el.text = "true" if value else "false"
    elif shape.type_name == "timestamp":
        el.text = timestamp(value)
    else:
        el.text = str(value)


def _encode_members(el: ET.Element, shape: StructureShape, value: Mapping[str, Any]) -> None:
    for name, member_value in value.items():
        if member_value is None:
            continue
        # A KeyError here is a bug in a handler: it named a member the model does not have.
        member = shape.members[name]
        _encode(el, member.serialization.get("name", name), member, member_value)


def encode_response(action: str, request_id: str, result: Mapping[str, Any]) -> bytes:
    """The XML document for a successful `action` whose output is `result`."""
    root = ET.Element(f"{action}Response", xmlns=XMLNS)
    ET.SubElement(root, "requestId").text = request_id
    shape = operation(action).output_shape
    if shape is not None:
        assert isinstance(shape, StructureShape)
        _encode_members(root, shape, result)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root)


def encode_error(code: str, message: str, request_id: str) -> bytes:
    """An EC2 error document, as botocore's EC2 parser reads it."""
    root = ET.Element("Response")
    error = ET.SubElement(ET.SubElement(root, "Errors"), "Error")
    ET.SubElement(error, "Code").text = code
    ET.SubElement(error, "Message").text = message
    ET.SubElement(root, "RequestID").text = request_id
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root)
