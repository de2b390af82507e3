"""How old the objects of the `cy_artifacts` store are, as retention counts it.

An object's age is that of its metadata message in the bucket's stream, as the server stamped
it: the time the object was last published, or last reused (`refresh` republishes the same
metadata when a publisher finds a content-addressed object already stored). The `mtime` inside
the metadata cannot serve: each client writes it differently (nats-py its own clock at upload,
the Go client nothing), and republishing the metadata keeps it.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.api import ObjectInfo
from nats.js.errors import NotFoundError, ObjectDeletedError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from codeyard.bus.object_reader import meta_subject, stream_name
from codeyard.schemas.messages import StoredArtifact

log = logging.getLogger(__name__)


async def modified_at(js: JetStreamContext, bucket: str, name: str) -> datetime | None:
    """When object `name` was last published or reused; None when it is not there."""
    try:
        msg = await js.get_last_msg(stream_name(bucket), meta_subject(bucket, name))
    except NotFoundError:
        return None
    if msg.time is None or not msg.data:
        return None
    if ObjectInfo.from_response(json.loads(msg.data)).deleted:
        return None
    return msg.time


async def list_artifacts(
    store: ObjectStore, js: JetStreamContext, bucket: str
) -> list[StoredArtifact]:
    """Every object in the store (deleted ones left out), with its size and age."""
    try:
        infos = await store.list(ignore_deletes=True)
    except NotFoundError:  # an empty bucket
        return []
    found = []
    for info in infos:
        if not info.name:
            continue
        stamped = await modified_at(js, bucket, info.name)
        if stamped is None:  # deleted since it was listed
            continue
        found.append(StoredArtifact(name=info.name, size=info.size or 0, modified_at=stamped))
    return found


async def refresh(store: ObjectStore, name: str) -> bool:
    """Restart `name`'s retention, as if published now; False when it is not stored."""
    try:
        info = await store.get_info(name)
        await store.update_meta(name, info.meta)
    except (ObjectNotFoundError, ObjectDeletedError):
        return False
    return True
