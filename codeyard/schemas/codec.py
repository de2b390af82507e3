"""Encoding and decoding of wire messages, with one error type for everything that can go wrong."""

from __future__ import annotations

from collections.abc import Hashable
from functools import cache
from typing import Any, TypeVar, cast, overload

import msgspec

from codeyard.schemas.envelope import SCHEMA_VERSION, Envelope
from codeyard.schemas.model import clip

T = TypeVar("T")

# NATS' default max_payload is 1 MiB; bigger payloads belong in the object store.
MAX_MESSAGE_BYTES = 1024 * 1024
# msgspec copies offending values into its messages (a bad tag whole, up to MAX_MESSAGE_BYTES):
# an error is logged and sent on (dead letters), so its text stays well within a LongText.
MAX_REASON_CHARS = 2000
MAX_FIELD_CHARS = 500

_encoder = msgspec.json.Encoder()


class MessageError(ValueError):
    """A message could not be decoded. `field` is the JSON path at fault (`$.attempt`), if known.
    Both are cut to a bounded length, however much of the message they quote."""

    def __init__(self, reason: str, field: str = "") -> None:
        self.reason = clip(reason, MAX_REASON_CHARS)
        self.field = clip(field, MAX_FIELD_CHARS)
        super().__init__(f"{self.reason} (at {self.field})" if self.field else self.reason)


@cache
def _decoder(type_: Hashable) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(type_)


# Decoders by the identity of their type, which is one object per call site: looked up by
# equality, a union (`WorkItem`) is hashed anew at every decode, which took a third of the
# time of decoding a small work item. Each entry keeps its type alive, so no other object takes
# its id; a caller that builds a new union per call is served by `_decoder` once this is full.
_BY_IDENTITY_LIMIT = 256
_by_identity: dict[int, tuple[Hashable, msgspec.json.Decoder[Any]]] = {}


def _decoder_of(type_: Hashable) -> msgspec.json.Decoder[Any]:
    entry = _by_identity.get(id(type_))
    if entry is not None and entry[0] is type_:
        return entry[1]
    decoder = _decoder(type_)
    if len(_by_identity) < _BY_IDENTITY_LIMIT:
        _by_identity[id(type_)] = (type_, decoder)
    return decoder


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


Data = bytes | bytearray | memoryview | str


@overload
def decode(data: Data, type_: type[T]) -> T: ...
@overload
def decode(data: Data, type_: Any) -> Any: ...


def decode(data: Data, type_: Any) -> Any:
    """Decode `data` as `type_` (a message class or a union of them), or raise `MessageError`:
    nothing in `data` makes it raise anything else."""
    if isinstance(data, str):
        try:
            data = data.encode()
        except UnicodeEncodeError as exc:  # lone surrogates: no JSON text can carry them
            raise MessageError(f"not valid Unicode text: {exc}", "$") from None
    size = len(data)
    if size > MAX_MESSAGE_BYTES:
        raise MessageError(f"message is {size} bytes, over the {MAX_MESSAGE_BYTES} limit", "$")
    try:
        message: Any = _decoder_of(cast(Hashable, type_)).decode(data)
    except msgspec.ValidationError as exc:
        reason, _, path = str(exc).rpartition(" - at ")
        if not reason:
            reason, path = str(exc), "$"
        path = path.strip("`")
        if reason.startswith(("Object missing required field", "Object contains unknown field")):
            path = f"{path}.{reason.split('`')[1]}"
        elif reason.startswith("Invalid value") and path.endswith(".type"):
            reason = f"unknown message type {reason.removeprefix('Invalid value ')}"
        raise MessageError(reason, path) from None
    except msgspec.DecodeError as exc:
        # (msgspec 0.23 finds invalid UTF-8 itself, and says only that)
        raise MessageError(_not_utf8(data) or f"malformed JSON: {exc}", "$") from None
    except UnicodeDecodeError as exc:  # msgspec < 0.23 checks UTF-8 only in strings it keeps
        raise MessageError(f"not valid UTF-8: {exc.reason} at byte {exc.start}", "$") from None
    except RecursionError:  # msgspec recurses per nesting level, skipped values included
        raise MessageError("nested too deeply to decode", "$") from None
    except msgspec.MsgspecError as exc:  # none known on decoding; a newer msgspec may add some
        raise MessageError(f"undecodable: {exc}", "$") from None
    if isinstance(message, Envelope) and message.schema_version > SCHEMA_VERSION:
        raise MessageError(
            f"schema_version {message.schema_version} is newer than this codeyard "
            f"understands ({SCHEMA_VERSION}); upgrade codeyard",
            "$.schema_version",
        )
    return message


def _not_utf8(data: bytes | bytearray | memoryview) -> str:
    """Where `data` is not UTF-8, or "" if it is."""
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8: {exc.reason} at byte {exc.start}"
    return ""
