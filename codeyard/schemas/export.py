"""The message registry, and the export of JSON Schema and AsyncAPI documents for other languages.

`export_schemas(DIR)` writes, deterministically (same input, byte-identical files):

- `<Message>.schema.json` for every concrete message class (`CodeRequest.schema.json`, ...),
- `<Family>.schema.json` for every subject family union (`WorkItem.schema.json`, ...),
- `Run.schema.json`, `Task.schema.json`, `TaskSpec.schema.json` for the task-graph model,
- `asyncapi.json`, an AsyncAPI 3.0.0 document of the subjects (JSON is valid YAML, so tools that
  want `asyncapi.yaml` can read this file as is).

Every JSON Schema is draft 2020-12, self-contained (nested types live in its own `$defs`).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

import codeyard
from codeyard.bus import subjects
from codeyard.schemas import messages
from codeyard.schemas.envelope import ID_PATTERN, SCHEMA_VERSION, Envelope
from codeyard.schemas.model import Run, Task, TaskSpec

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_BASE_URI = f"https://codeyard.dev/schemas/v{SCHEMA_VERSION}/"
ASYNCAPI_VERSION = "3.0.0"
ASYNCAPI_FILE = "asyncapi.json"
SCHEMA_SUFFIX = ".schema.json"
CONTENT_TYPE = "application/json"

JsonObject = dict[str, Any]


# --- registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """A tagged union of messages and the subjects it travels on."""

    name: str
    union: Any  # a `X | Y | ...` union of Envelope subclasses
    subject: str  # address template, e.g. `cy.work.{role}`
    description: str

    @property
    def members(self) -> tuple[type[Envelope], ...]:
        return typing.get_args(self.union)


def _template(subject_of: Callable[[str], str], sample: str, parameter: str) -> str:
    """`cy.work.{role}` from `work_subject`, so the addresses follow `codeyard.bus.subjects`."""
    subject = subject_of(sample)
    if not subject.endswith("." + sample):
        raise RuntimeError(f"cannot derive a subject template from {subject!r}")
    return subject.removesuffix(sample) + "{" + parameter + "}"


WORK_ADDRESS = _template(subjects.work_subject, "planner", "role")
RESULT_ADDRESS = _template(subjects.result_subject, "planner", "role")
EVENTS_ADDRESS = _template(subjects.events_subject, "run", "run_id")
CANCEL_ADDRESS = _template(subjects.cancel_subject, "run", "run_id")
CTL_ADDRESS = _template(subjects.ctl_subject, "submit", "verb")

FAMILIES: tuple[Family, ...] = (
    Family(
        "WorkItem",
        messages.WorkItem,
        WORK_ADDRESS,
        f"Work for a role, published by the coordinator on `{WORK_ADDRESS}`.",
    ),
    Family(
        "ResultMessage",
        messages.ResultMessage,
        RESULT_ADDRESS,
        f"A worker's result, or several in a `ResultBatch`, or work it could not decode "
        f"(`UndecodableWork`), published to the coordinator on `{RESULT_ADDRESS}`.",
    ),
    Family(
        "GateMessage",
        messages.GateMessage,
        subjects.GATE_CHECK,
        f"Safety-gate request/reply on `{subjects.GATE_CHECK}`: "
        "an `ActionCheck` asks, a `GateDecision` answers.",
    ),
    Family(
        "RunEvent",
        messages.RunEvent,
        EVENTS_ADDRESS,
        f"State changes, progress, usage and audit of a run, on `{EVENTS_ADDRESS}`.",
    ),
    Family(
        "Control",
        messages.Control,
        CTL_ADDRESS,
        f"A request to the coordinator on `{CTL_ADDRESS}`.",
    ),
    Family(
        "ControlReply",
        messages.ControlReply,
        CTL_ADDRESS,
        f"The coordinator's reply to a request on `{CTL_ADDRESS}`.",
    ),
)

MESSAGE_FAMILIES: Mapping[str, Any] = {family.name: family.union for family in FAMILIES}
"""Family name -> tagged union, e.g. `MESSAGE_FAMILIES["WorkItem"]` is `messages.WorkItem`."""

MODEL_TYPES: tuple[type[msgspec.Struct], ...] = (Run, Task, TaskSpec)

CONTROL_VERBS: Mapping[str, tuple[type[Envelope], tuple[type[Envelope], ...]]] = {
    "submit": (messages.SubmitRun, (messages.Accepted, messages.ControlError)),
    "cancel": (messages.CancelRun, (messages.Accepted, messages.ControlError)),
    "status": (messages.StatusQuery, (messages.RunStatus, messages.ControlError)),
    "approvals": (messages.ListApprovals, (messages.ApprovalList, messages.ControlError)),
    "approve": (messages.Approve, (messages.Accepted, messages.ControlError)),
    "deny": (messages.Deny, (messages.Accepted, messages.ControlError)),
    "gc": (messages.CollectArtifacts, (messages.ArtifactsCollected, messages.ControlError)),
}
"""`cy.ctl.<verb>` -> (request class, reply classes the coordinator may answer with)."""


def family(name: str) -> Family:
    for candidate in FAMILIES:
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def family_of(cls: type[Envelope]) -> Family:
    """The family whose union holds `cls`."""
    for candidate in FAMILIES:
        if cls in candidate.members:
            return candidate
    raise KeyError(cls.__name__)


def message_classes() -> list[type[Envelope]]:
    """Every concrete message class, in family order, each once."""
    return [cls for candidate in FAMILIES for cls in candidate.members]


# --- JSON Schema ------------------------------------------------------------------------------


def schema_id(name: str) -> str:
    return f"{SCHEMA_BASE_URI}{name}{SCHEMA_SUFFIX}"


def _description(cls: type[msgspec.Struct]) -> str:
    """The class docstring on one line; for an undocumented message, what its family is for."""
    doc = cls.__doc__
    if doc:
        return " ".join(doc.split())
    if issubclass(cls, Envelope):
        owner = family_of(cls)
        return f"One of the `{owner.name}` messages. {owner.description}"
    return ""


def _summary(cls: type[Envelope]) -> str:
    if cls.__doc__:
        return _description(cls).split(". ")[0].rstrip(".") + "."
    return family_of(cls).description


def _rewrite_refs(node: Any, old: str, new: str) -> Any:
    if isinstance(node, dict):
        return {
            key: (new if key == "$ref" and value == old else _rewrite_refs(value, old, new))
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(item, old, new) for item in node]
    return node


def json_schema(type_: Any, name: str, description: str) -> JsonObject:
    """A self-contained draft 2020-12 schema of `type_` (a Struct or a union of them)."""
    raw: JsonObject = msgspec.json.schema(type_)
    defs: JsonObject = raw.pop("$defs", {})
    if set(raw) == {"$ref"}:  # a Struct: make its definition the root, not a `$ref` to it
        ref: str = raw["$ref"]
        raw = defs.pop(ref.rsplit("/", 1)[-1])
        raw = _rewrite_refs(raw, ref, "#")
        defs = _rewrite_refs(defs, ref, "#")
    raw.pop("title", None)
    raw.pop("description", None)
    schema: JsonObject = {"$schema": JSON_SCHEMA_DIALECT, "$id": schema_id(name), "title": name}
    if description:
        schema["description"] = description
    schema.update(raw)
    if defs:
        schema["$defs"] = defs
    return schema


def message_schema(cls: type[msgspec.Struct]) -> JsonObject:
    """The schema of one message or model class."""
    return json_schema(cls, cls.__name__, _description(cls))


def family_schema(owner: Family) -> JsonObject:
    members = " | ".join(cls.__name__ for cls in owner.members)
    description = f"{owner.description} One of {members}, told apart by the `type` field."
    return json_schema(owner.union, owner.name, description)


# --- AsyncAPI ---------------------------------------------------------------------------------


def _message_refs(channel: str, classes: tuple[type[Envelope], ...]) -> list[JsonObject]:
    return [{"$ref": f"#/channels/{channel}/messages/{cls.__name__}"} for cls in classes]


def _channel_messages(classes: tuple[type[Envelope], ...]) -> JsonObject:
    return {cls.__name__: {"$ref": f"#/components/messages/{cls.__name__}"} for cls in classes}


def _id_parameter(what: str, examples: list[str]) -> JsonObject:
    return {"description": what, "examples": examples}


def _channels() -> JsonObject:
    work = family("WorkItem")
    result = family("ResultMessage")
    events = family("RunEvent")
    control = family("Control")
    reply = family("ControlReply")
    roles = [*subjects.BUILTIN_ROLES, "review.security"]
    role_parameter = _id_parameter(
        f"The worker role: one of {', '.join(subjects.BUILTIN_ROLES)}, or `review.<name>` for "
        "a plugin reviewer (lowercase letters, digits, `_` and `-`). planner gets `PlanRequest`, "
        "coder `CodeRequest`, tester `TestRequest`, review and review.<name> `ReviewRequest`.",
        roles,
    )
    return {
        "work": {
            "address": work.subject,
            "title": "Work queue",
            "description": (
                f"{work.description} JetStream stream `{subjects.WORK_STREAM}` with work-queue "
                "retention and one durable pull consumer per role (dots in the role become `-` "
                "in the consumer name). A worker acks only after publishing its result."
            ),
            "parameters": {"role": role_parameter},
            "messages": _channel_messages(work.members),
        },
        "result": {
            "address": result.subject,
            "title": "Results",
            "description": (
                f"{result.description} JetStream stream `{subjects.RESULT_STREAM}`, durable "
                f"consumer `{subjects.COORDINATOR_CONSUMER}`. Duplicate or stale results are "
                "ignored by (`task_id`, `attempt`)."
            ),
            "parameters": {"role": role_parameter},
            "messages": _channel_messages(result.members),
        },
        "events": {
            "address": events.subject,
            "title": "Run events",
            "description": (
                f"{events.description} JetStream stream `{subjects.EVENT_STREAM}` with limits "
                "retention, for the CLI, dashboards, audit and replay."
            ),
            "parameters": {
                "run_id": _id_parameter(
                    f"The run's id (pattern `{ID_PATTERN}`), or `{subjects.DEAD_LETTER_RUN}` "
                    "for events of no run, such as dead letters of undecodable messages.",
                    ["3f2a9c0d5b7e4e1f8a6b2c4d9e0f1a2b", subjects.DEAD_LETTER_RUN],
                )
            },
            "messages": _channel_messages(events.members),
        },
        "cancel": {
            "address": CANCEL_ADDRESS,
            "title": "Work cancellation",
            "description": (
                "Core NATS, not stored: the coordinator tells workers to stop and drop the work "
                "of a cancelled or failed run. The same message is recorded on the run's events."
            ),
            "parameters": {
                "run_id": _id_parameter(
                    f"The run's id (pattern `{ID_PATTERN}`).", ["3f2a9c0d5b7e4e1f8a6b2c4d9e0f1a2b"]
                )
            },
            "messages": _channel_messages((messages.WorkCancelled,)),
        },
        "gateCheck": {
            "address": subjects.GATE_CHECK,
            "title": "Safety gate",
            "description": (
                "May this action run? Core NATS request/reply, served by the queue group "
                f"`{subjects.GATE_QUEUE}`."
            ),
            "messages": _channel_messages((messages.ActionCheck,)),
        },
        "gateCheckReply": {
            "address": None,
            "title": "Safety gate reply",
            "description": "The gate's answer, sent to the requester's NATS reply inbox.",
            "messages": _channel_messages((messages.GateDecision,)),
        },
        "control": {
            "address": control.subject,
            "title": "Control",
            "description": (
                f"{control.description} Core NATS request/reply to the leading coordinator. "
                + " ".join(
                    f"`{subjects.ctl_subject(verb)}` takes `{request.__name__}`."
                    for verb, (request, _) in CONTROL_VERBS.items()
                )
            ),
            "parameters": {
                "verb": {
                    "description": "What to ask the coordinator.",
                    "enum": list(CONTROL_VERBS),
                }
            },
            "messages": _channel_messages(control.members),
        },
        "controlReply": {
            "address": None,
            "title": "Control reply",
            "description": (
                f"{reply.description} Sent to the requester's NATS reply inbox; "
                "`ControlError` names the offending `field` when a request was refused."
            ),
            "messages": _channel_messages(reply.members),
        },
    }


def _operation(
    action: str,
    channel: str,
    classes: tuple[type[Envelope], ...],
    summary: str,
    *,
    reply: tuple[str, tuple[type[Envelope], ...]] | None = None,
    extra: JsonObject | None = None,
) -> JsonObject:
    operation: JsonObject = {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
        "messages": _message_refs(channel, classes),
    }
    if reply is not None:
        reply_channel, reply_classes = reply
        operation["reply"] = {
            "channel": {"$ref": f"#/channels/{reply_channel}"},
            "messages": _message_refs(reply_channel, reply_classes),
        }
    if extra:
        operation.update(extra)
    return operation


def _operations() -> JsonObject:
    work = family("WorkItem").members
    results = family("ResultMessage").members
    events = family("RunEvent").members
    check = (messages.ActionCheck,)
    decision = ("gateCheckReply", (messages.GateDecision,))
    operations: JsonObject = {
        "publishWork": _operation("send", "work", work, "The coordinator hands out work."),
        "consumeWork": _operation(
            "receive", "work", work, "A worker pulls work from its role's durable consumer."
        ),
        "publishResult": _operation(
            "send", "result", results, "A worker reports the result of a work item."
        ),
        "consumeResults": _operation(
            "receive", "result", results, "The coordinator collects results."
        ),
        "publishEvent": _operation(
            "send", "events", events, "Coordinator, workers and gate record what happens."
        ),
        "followEvents": _operation(
            "receive", "events", events, "The CLI or a dashboard follows a run."
        ),
        "cancelWork": _operation(
            "send", "cancel", (messages.WorkCancelled,), "The coordinator withdraws work."
        ),
        "dropWork": _operation(
            "receive",
            "cancel",
            (messages.WorkCancelled,),
            "Workers stop and drop withdrawn work, running or still to come.",
        ),
        "checkAction": _operation(
            "send",
            "gateCheck",
            check,
            "Any role asks the safety gate before a side effect.",
            reply=decision,
        ),
        "decideAction": _operation(
            "receive",
            "gateCheck",
            check,
            "The safety gate answers a check.",
            reply=decision,
            extra={"bindings": {"nats": {"queue": subjects.GATE_QUEUE, "bindingVersion": "0.1.0"}}},
        ),
    }
    for verb, (request, replies) in CONTROL_VERBS.items():
        subject = subjects.ctl_subject(verb)
        suffix = verb[0].upper() + verb[1:]
        for action, prefix, who in (
            ("send", "request", "A client (CLI, dashboard) asks"),
            ("receive", "serve", "The coordinator answers"),
        ):
            operations[f"{prefix}{suffix}"] = _operation(
                action,
                "control",
                (request,),
                f"{who} on `{subject}`.",
                reply=("controlReply", replies),
                extra={"x-codeyard-subject": subject},
            )
    return operations


def _components() -> JsonObject:
    structs: list[type[msgspec.Struct]] = [*message_classes(), *MODEL_TYPES]
    _, schemas = msgspec.json.schema_components(structs, ref_template="#/components/schemas/{name}")
    component_messages: JsonObject = {}
    for cls in message_classes():
        name = cls.__name__
        component_messages[name] = {
            "name": name,
            "title": name,
            "summary": _summary(cls),
            "description": _description(cls),
            "contentType": CONTENT_TYPE,
            "payload": {"$ref": f"#/components/schemas/{name}"},
            "tags": [{"name": family_of(cls).name}],
        }
    return {"schemas": schemas, "messages": component_messages}


def asyncapi_document() -> JsonObject:
    """An AsyncAPI 3.0.0 document of every subject, with every message's payload schema."""
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": f"{SCHEMA_BASE_URI}{ASYNCAPI_FILE}",
        "info": {
            "title": "codeyard bus",
            "version": codeyard.__version__,
            "description": (
                "Typed messages between the codeyard coordinator, its workers (planner, coder, "
                "tester, reviewers), the safety gate and clients, over NATS JetStream. Payloads "
                f"are JSON; every message carries the envelope fields and `schema_version` "
                f"{SCHEMA_VERSION}, and its `type` field names its class. Operations are listed "
                "for every participant; each one's summary says who performs it. Unknown fields "
                "are ignored, so newer senders may add optional fields."
            ),
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "local": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "The embedded nats-server that `codeyard up` starts, or NATS_URL.",
            }
        },
        "channels": _channels(),
        "operations": _operations(),
        "components": _components(),
    }


# --- files ------------------------------------------------------------------------------------


def _sorted(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _sorted(node[key]) for key in sorted(node)}
    if isinstance(node, list):
        return [_sorted(item) for item in node]
    return node


def render(document: JsonObject) -> bytes:
    """Stable JSON: top-level keys as given (`$schema`, `$id`, `title` first), every nested
    object's keys sorted, two-space indent, UTF-8, trailing newline."""
    stable = {key: _sorted(value) for key, value in document.items()}
    return (json.dumps(stable, indent=2, ensure_ascii=False) + "\n").encode()


def documents() -> dict[str, JsonObject]:
    """File name -> document, in a stable order: messages, families, model, AsyncAPI."""
    out: dict[str, JsonObject] = {}
    for cls in message_classes():
        out[cls.__name__ + SCHEMA_SUFFIX] = message_schema(cls)
    for owner in FAMILIES:
        out[owner.name + SCHEMA_SUFFIX] = family_schema(owner)
    for model in MODEL_TYPES:
        out[model.__name__ + SCHEMA_SUFFIX] = message_schema(model)
    out[ASYNCAPI_FILE] = asyncapi_document()
    return out


def export_schemas(directory: Path | str) -> list[Path]:
    """Write every schema and the AsyncAPI document into `directory`; return the paths written.

    Files already holding the same bytes are left untouched, so re-exporting keeps mtimes.
    Other files in `directory` are left alone.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, document in documents().items():
        path = root / name
        data = render(document)
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
        written.append(path)
    return written
