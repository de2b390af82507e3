"""The envelope every wire message carries, and the identifier types it uses."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Annotated

import msgspec

SCHEMA_VERSION = 1

# Ids end up inside NATS subjects (`cy.events.<run_id>`) and KV keys, so they must never contain
# `.`, `*`, `>` or whitespace: a hostile id could otherwise address someone else's subject.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# msgspec matches patterns with Python's `re`, whose `$` also matches before a final newline
# ("run\n" would pass, then break the subject it is put in); the lookahead refuses that, and
# reads the same in the exported JSON Schema (ECMA-262 regular expressions).
AT_THE_END = r"(?!\n)"
Id = Annotated[
    str, msgspec.Meta(pattern=ID_PATTERN + AT_THE_END, description="letters, digits, _ and -")
]
OptionalId = Annotated[
    str,
    msgspec.Meta(
        pattern=rf"^${AT_THE_END}|{ID_PATTERN}{AT_THE_END}", description="an Id, or empty for none"
    ),
]
Attempt = Annotated[int, msgspec.Meta(ge=0, le=1000)]
# Naive timestamps cannot be compared with aware ones; refuse them at the edge.
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]


def new_id() -> str:
    """128 random bits as 32 hex digits (every message gets two: not a UUID object's cost)."""
    return os.urandom(16).hex()


def utc_now() -> datetime:
    return datetime.now(UTC)


class Envelope(msgspec.Struct, kw_only=True, frozen=True, tag_field="type", tag=True):
    """Fields common to every message. `type` (the class name) tags the concrete message."""

    run_id: OptionalId = ""
    task_id: OptionalId = ""
    attempt: Attempt = 0
    msg_id: Id = msgspec.field(default_factory=new_id)
    trace_id: Id = msgspec.field(default_factory=new_id)
    sent_at: Timestamp = msgspec.field(default_factory=utc_now)
    schema_version: Annotated[int, msgspec.Meta(ge=1)] = SCHEMA_VERSION


# A work item's proof that the coordinator sent it to its role, which the answer copies
# (`codeyard.bus.service_key`); "" where the coordinators have no key to make one.
Proof = Annotated[
    str, msgspec.Meta(max_length=64, description="copied from the work item into its answer")
]


class Work(Envelope, kw_only=True, frozen=True):
    """What every work item has."""

    proof: Proof = ""


class Answer(Envelope, kw_only=True, frozen=True):
    """What every result has: the envelope of the work item it answers, copied. Its `trace_id`
    names the run's submission (the coordinator ignores an answer to the work of another
    submission of the same run id); "" when a sender leaves it out, which is taken as this
    submission's, as before the check existed (a random default would be taken for another's).
    Its `proof` is the work item's: a coordinator with a key takes no answer without it."""

    trace_id: OptionalId = ""
    proof: Proof = ""
