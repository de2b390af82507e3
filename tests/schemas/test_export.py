"""`export_schemas`: valid, complete, self-consistent and byte-for-byte reproducible files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from codeyard.bus import subjects
from codeyard.schemas import encode, messages
from codeyard.schemas.envelope import Envelope
from codeyard.schemas.export import (
    ASYNCAPI_FILE,
    CONTROL_VERBS,
    FAMILIES,
    JSON_SCHEMA_DIALECT,
    MODEL_TYPES,
    SCHEMA_SUFFIX,
    export_schemas,
    family,
    family_of,
    message_classes,
    schema_id,
)
from tests.schemas.samples import sample_for, sample_messages, sample_run

MESSAGE_NAMES = [cls.__name__ for cls in message_classes()]
FAMILY_NAMES = [f.name for f in FAMILIES]
MODEL_NAMES = [cls.__name__ for cls in MODEL_TYPES]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("schemas")
    export_schemas(directory)
    return directory


def load(directory: Path, name: str) -> dict[str, Any]:
    document = json.loads((directory / name).read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def as_json(value: msgspec.Struct) -> dict[str, Any]:
    data = msgspec.json.decode(msgspec.json.encode(value))
    assert isinstance(data, dict)
    return data


def pointer(document: dict[str, Any], ref: str) -> Any:
    """Resolve a local JSON pointer (`#/a/b`, `#`) or fail the test."""
    assert ref.startswith("#"), f"not a local reference: {ref}"
    node: Any = document
    for raw_token in ref[1:].split("/")[1:]:
        token = raw_token.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict), f"{ref}: {token!r} inside a non-object"
        assert token in node, f"unresolved reference {ref}"
        node = node[token]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def tag_values(schema: dict[str, Any]) -> list[str]:
    """The allowed values of a Struct schema's `type` tag, whether as `const` or `enum`."""
    tag = schema["properties"]["type"]
    return [tag["const"]] if "const" in tag else list(tag["enum"])


# --- files ------------------------------------------------------------------------------------


def test_writes_exactly_the_expected_files(tmp_path: Path) -> None:
    paths = export_schemas(tmp_path / "new" / "dir")
    expected = [n + SCHEMA_SUFFIX for n in MESSAGE_NAMES + FAMILY_NAMES + MODEL_NAMES]
    assert [p.name for p in paths] == [*expected, ASYNCAPI_FILE]
    assert sorted(p.name for p in (tmp_path / "new" / "dir").iterdir()) == sorted(
        p.name for p in paths
    )


def test_every_file_is_valid_json(exported: Path) -> None:
    files = sorted(exported.iterdir())
    assert len(files) == len(MESSAGE_NAMES) + len(FAMILY_NAMES) + len(MODEL_NAMES) + 1
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert text.endswith("}\n")
        assert isinstance(json.loads(text), dict), path.name


def test_export_is_byte_identical(tmp_path: Path, exported: Path) -> None:
    again = export_schemas(tmp_path)
    for path in again:
        assert path.read_bytes() == (exported / path.name).read_bytes(), path.name
    mtimes = {path: path.stat().st_mtime_ns for path in again}
    assert export_schemas(tmp_path) == again
    assert {path: path.stat().st_mtime_ns for path in again} == mtimes


def test_export_is_identical_in_another_process(tmp_path: Path, exported: Path) -> None:
    """Another hash seed must not change a byte (no set or dict-order dependence)."""
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    code = "import sys; import codeyard.schemas.export as e; e.export_schemas(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=env)
    for path in exported.iterdir():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_export_overwrites_a_stale_file(tmp_path: Path, exported: Path) -> None:
    (tmp_path / "CodeRequest.schema.json").write_text("{}")
    export_schemas(tmp_path)
    assert (tmp_path / "CodeRequest.schema.json").read_bytes() == (
        exported / "CodeRequest.schema.json"
    ).read_bytes()


# --- JSON Schema ------------------------------------------------------------------------------


def check_header(schema: dict[str, Any], name: str) -> None:
    assert list(schema)[:3] == ["$schema", "$id", "title"]
    assert schema["$schema"] == JSON_SCHEMA_DIALECT
    assert schema["$id"] == schema_id(name)
    assert schema["$id"].endswith(f"/v1/{name}{SCHEMA_SUFFIX}")
    assert schema["title"] == name
    assert schema["description"]
    for ref in refs(schema):
        pointer(schema, ref)


@pytest.mark.parametrize("cls", message_classes(), ids=lambda cls: cls.__name__)
def test_message_schema_structure(exported: Path, cls: type[Envelope]) -> None:
    name = cls.__name__
    schema = load(exported, name + SCHEMA_SUFFIX)
    check_header(schema, name)
    if cls.__doc__:
        assert schema["description"] == " ".join(cls.__doc__.split())
    else:
        assert family_of(cls).name in schema["description"]
    assert schema["type"] == "object"
    assert tag_values(schema) == [name]
    fields = msgspec.structs.fields(cls)
    assert set(schema["properties"]) == {"type"} | {f.encode_name for f in fields}
    assert set(schema["required"]) == {"type"} | {f.encode_name for f in fields if f.required}
    assert name not in schema.get("$defs", {}), "the root must not also be a $def"

    sample = as_json(sample_for(cls))
    assert set(schema["required"]) <= set(sample)
    assert set(sample) <= set(schema["properties"])


@pytest.mark.parametrize("owner", FAMILIES, ids=lambda owner: owner.name)
def test_family_schema_structure(exported: Path, owner: Any) -> None:
    schema = load(exported, owner.name + SCHEMA_SUFFIX)
    check_header(schema, owner.name)
    members = [cls.__name__ for cls in owner.members]
    assert [pointer(schema, branch["$ref"])["title"] for branch in schema["anyOf"]] == members
    for member in members:
        assert tag_values(schema["$defs"][member]) == [member]


@pytest.mark.parametrize("cls", MODEL_TYPES, ids=lambda cls: cls.__name__)
def test_model_schema_structure(exported: Path, cls: type[msgspec.Struct]) -> None:
    schema = load(exported, cls.__name__ + SCHEMA_SUFFIX)
    check_header(schema, cls.__name__)
    required = {f.encode_name for f in msgspec.structs.fields(cls) if f.required}
    assert set(schema["required"]) == required


def _validator(schema: dict[str, Any]) -> Any:
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_samples_validate_against_their_schemas(exported: Path) -> None:
    """What other languages' validators would check: the exported schemas accept our messages."""
    for message in sample_messages():
        name = type(message).__name__
        sample = as_json(message)
        own = _validator(load(exported, name + SCHEMA_SUFFIX))
        assert not list(own.iter_errors(sample)), name
        union = _validator(load(exported, family_of(type(message)).name + SCHEMA_SUFFIX))
        assert not list(union.iter_errors(sample)), name
        work = _validator(load(exported, "WorkItem" + SCHEMA_SUFFIX))
        assert work.is_valid(sample) == (family_of(type(message)).name == "WorkItem"), name
    run = _validator(load(exported, "Run" + SCHEMA_SUFFIX))
    assert not list(run.iter_errors(as_json(sample_run())))


def test_schemas_reject_what_decode_rejects(exported: Path) -> None:
    """The exported patterns and limits are the ones the decoder enforces."""
    validator = _validator(load(exported, "CodeRequest" + SCHEMA_SUFFIX))
    good = as_json(sample_for(messages.CodeRequest))
    for key, bad in [("run_id", "a.b"), ("msg_id", "*"), ("attempt", -1), ("goal", 5)]:
        assert not validator.is_valid({**good, key: bad}), key
    assert not validator.is_valid({**good, "type": "PlanRequest"})


# --- AsyncAPI ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asyncapi(exported: Path) -> dict[str, Any]:
    return load(exported, ASYNCAPI_FILE)


def test_asyncapi_header(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    assert asyncapi["info"]["title"]
    assert asyncapi["info"]["version"]
    assert asyncapi["defaultContentType"] == "application/json"
    assert {server["protocol"] for server in asyncapi["servers"].values()} == {"nats"}


def test_every_reference_resolves(asyncapi: dict[str, Any]) -> None:
    found = list(refs(asyncapi))
    assert len(found) > 100
    for ref in found:
        pointer(asyncapi, ref)


def test_channel_messages_resolve_to_component_schemas(asyncapi: dict[str, Any]) -> None:
    seen: set[str] = set()
    for channel_id, channel in asyncapi["channels"].items():
        assert channel["messages"], channel_id
        for key, entry in channel["messages"].items():
            message = pointer(asyncapi, entry["$ref"])
            assert entry["$ref"] == f"#/components/messages/{key}"
            assert message["name"] == key
            assert message["contentType"] == "application/json"
            payload_ref = message["payload"]["$ref"]
            assert payload_ref == f"#/components/schemas/{key}"
            payload = pointer(asyncapi, payload_ref)
            assert payload["title"] == key
            assert tag_values(payload) == [key]
            seen.add(key)
    assert seen == set(MESSAGE_NAMES)
    for model in MODEL_NAMES:
        assert model in asyncapi["components"]["schemas"]


def test_channel_addresses_follow_bus_subjects(asyncapi: dict[str, Any]) -> None:
    channels = asyncapi["channels"]
    for channel in channels.values():
        address = channel["address"]
        names = re.findall(r"\{(\w+)\}", address or "")
        assert sorted(names) == sorted(channel.get("parameters", {}))
    for role in [*subjects.BUILTIN_ROLES, "review.security"]:
        assert channels["work"]["address"].format(role=role) == subjects.work_subject(role)
        assert channels["result"]["address"].format(role=role) == subjects.result_subject(role)
    for run_id in ("run-1", ""):
        expected = subjects.events_subject(run_id)
        shown = run_id or subjects.DEAD_LETTER_RUN
        assert channels["events"]["address"].format(run_id=shown) == expected
    assert channels["gateCheck"]["address"] == subjects.GATE_CHECK
    assert channels["control"]["parameters"]["verb"]["enum"] == list(CONTROL_VERBS)
    for verb in CONTROL_VERBS:
        assert channels["control"]["address"].format(verb=verb) == subjects.ctl_subject(verb)
    assert channels["gateCheckReply"]["address"] is None
    assert channels["controlReply"]["address"] is None
    assert set(channels["work"]["messages"]) == {c.__name__ for c in family("WorkItem").members}
    assert set(channels["events"]["messages"]) == {c.__name__ for c in family("RunEvent").members}


def test_operations_are_consistent(asyncapi: dict[str, Any]) -> None:
    channels = asyncapi["channels"]
    used: set[tuple[str, str]] = set()
    for op_id, operation in asyncapi["operations"].items():
        assert operation["action"] in ("send", "receive"), op_id
        channel_ref = operation["channel"]["$ref"]
        pointer(asyncapi, channel_ref)
        assert operation["messages"], op_id
        for message in operation["messages"]:
            # AsyncAPI 3: an operation's messages must be messages of its channel.
            assert message["$ref"].startswith(channel_ref + "/messages/"), op_id
            pointer(asyncapi, message["$ref"])
            used.add((channel_ref, message["$ref"].rsplit("/", 1)[-1]))
        if "reply" in operation:
            reply_ref = operation["reply"]["channel"]["$ref"]
            for message in operation["reply"]["messages"]:
                assert message["$ref"].startswith(reply_ref + "/messages/"), op_id
                pointer(asyncapi, message["$ref"])
                used.add((reply_ref, message["$ref"].rsplit("/", 1)[-1]))
    every = {(f"#/channels/{cid}", key) for cid, ch in channels.items() for key in ch["messages"]}
    assert used == every, "every channel message is sent and received by some operation"


def _reply_names(operation: dict[str, Any]) -> list[str]:
    return [m["$ref"].rsplit("/", 1)[-1] for m in operation["reply"]["messages"]]


def test_request_reply_operations(asyncapi: dict[str, Any]) -> None:
    operations = asyncapi["operations"]
    gate = [op for op in operations.values() if op["channel"]["$ref"] == "#/channels/gateCheck"]
    assert {op["action"] for op in gate} == {"send", "receive"}
    for op in gate:
        assert _reply_names(op) == ["GateDecision"]
    served = [op for op in gate if op["action"] == "receive"]
    assert served[0]["bindings"]["nats"]["queue"] == subjects.GATE_QUEUE

    control = [op for op in operations.values() if op["channel"]["$ref"] == "#/channels/control"]
    assert len(control) == 2 * len(CONTROL_VERBS)
    for op in control:
        verb = op["x-codeyard-subject"].removeprefix(subjects.CTL_PREFIX + ".")
        request, replies = CONTROL_VERBS[verb]
        assert [m["$ref"].rsplit("/", 1)[-1] for m in op["messages"]] == [request.__name__]
        assert _reply_names(op) == [cls.__name__ for cls in replies]


def test_asyncapi_schemas_match_the_wire(asyncapi: dict[str, Any]) -> None:
    """Each component schema lists the fields an encoded sample carries."""
    schemas = asyncapi["components"]["schemas"]
    for message in sample_messages():
        name = type(message).__name__
        wire = msgspec.json.decode(encode(message))
        assert set(wire) <= set(schemas[name]["properties"]), name
        assert set(schemas[name]["required"]) <= set(wire), name
