"""Every message survives encode/decode, as its own type and through its family union."""

from __future__ import annotations

import inspect
from collections import Counter

import msgspec
import pytest

from codeyard.schemas import (
    MAX_MESSAGE_BYTES,
    Control,
    ControlError,
    ControlReply,
    Envelope,
    StatusQuery,
    decode,
    encode,
    messages,
)
from codeyard.schemas.export import (
    CONTROL_VERBS,
    FAMILIES,
    MESSAGE_FAMILIES,
    family,
    family_of,
    message_classes,
)
from tests.schemas.samples import sample_for, sample_messages, sample_run

SAMPLES = sample_messages()


def _defined_message_classes() -> set[type[Envelope]]:
    """Every concrete Envelope subclass defined in codeyard.schemas.messages, found by looking."""
    return {
        obj
        for _, obj in inspect.getmembers(messages, inspect.isclass)
        if issubclass(obj, Envelope) and obj is not Envelope and obj.__module__ == messages.__name__
    }


def test_every_defined_message_belongs_to_exactly_one_family() -> None:
    counts = Counter(message_classes())
    assert set(counts) == _defined_message_classes()
    assert all(n == 1 for n in counts.values()), counts


def test_family_registry_matches_the_unions_in_messages() -> None:
    assert list(MESSAGE_FAMILIES) == [f.name for f in FAMILIES]
    for name, union in MESSAGE_FAMILIES.items():
        assert getattr(messages, name) == union
        assert family(name).union == union
    with pytest.raises(KeyError):
        family("NoSuchFamily")


def test_control_verbs_cover_the_control_family() -> None:
    requests = [request for request, _ in CONTROL_VERBS.values()]
    assert sorted(cls.__name__ for cls in requests) == sorted(
        cls.__name__ for cls in family("Control").members
    )
    for _, replies in CONTROL_VERBS.values():
        assert set(replies) <= set(family("ControlReply").members)
        assert ControlError in replies


def test_samples_cover_every_message_class_once() -> None:
    assert [type(message) for message in SAMPLES] == message_classes()
    assert len({message.msg_id for message in SAMPLES}) == len(SAMPLES)


def test_samples_are_deterministic() -> None:
    assert encode_all(sample_messages()) == encode_all(sample_messages())


def encode_all(batch: list[Envelope]) -> list[bytes]:
    return [encode(message) for message in batch]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda message: type(message).__name__)
def test_round_trip_as_own_type(message: Envelope) -> None:
    data = encode(message)
    assert len(data) < MAX_MESSAGE_BYTES
    decoded = decode(data, type(message))
    assert type(decoded) is type(message)
    assert decoded == message
    assert encode(decoded) == data


@pytest.mark.parametrize("message", SAMPLES, ids=lambda message: type(message).__name__)
def test_round_trip_through_family_union(message: Envelope) -> None:
    union = family_of(type(message)).union
    decoded: Envelope = decode(encode(message), union)
    assert type(decoded) is type(message)
    assert decoded == message


@pytest.mark.parametrize("message", SAMPLES, ids=lambda message: type(message).__name__)
def test_wire_form_is_tagged_json(message: Envelope) -> None:
    wire = msgspec.json.decode(encode(message))
    assert isinstance(wire, dict)
    assert wire["type"] == type(message).__name__
    for key in ("run_id", "task_id", "attempt", "msg_id", "trace_id", "sent_at", "schema_version"):
        assert key in wire
    assert wire["sent_at"] == "2025-03-14T09:26:53.589000Z"


def test_defaults_round_trip() -> None:
    """A message built with nothing but defaults gets fresh valid ids and decodes again."""
    query = StatusQuery()
    decoded: Envelope = decode(encode(query), Control)
    assert decoded == query
    assert query.msg_id != StatusQuery().msg_id


def test_run_round_trips_inside_run_status() -> None:
    status = sample_for(messages.RunStatus)
    assert isinstance(status, messages.RunStatus)
    assert status.runs == [sample_run()]
    decoded = decode(encode(status), ControlReply)
    assert isinstance(decoded, messages.RunStatus)
    assert decoded.runs[0].tasks == sample_run().tasks


def test_sample_for_unknown_class() -> None:
    with pytest.raises(KeyError):
        sample_for(Envelope)


def test_a_union_built_anew_for_each_decode_is_decoded_as_any_other() -> None:
    """Decoders are kept by the identity of their type (hashing a union per decode was a third
    of a small work item's decoding): a caller that builds its union at every call gets the
    right decoder each time, and fills the identity table no further than its limit."""
    from codeyard.schemas import codec

    error = ControlError(error="no such run")
    for _ in range(2 * codec._BY_IDENTITY_LIMIT):
        union = ControlError | StatusQuery  # a new object each time round
        assert decode(encode(error), union) == error
    assert len(codec._by_identity) <= codec._BY_IDENTITY_LIMIT
