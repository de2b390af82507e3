"""Patches that travel inline when small and through the object store when large.

A coder sends its patch inline in its result, whatever its size (up to what one message
carries): coders may read `cy_artifacts` but not write it. From there the patch would ride in
the task's record and in the tester's and reviewers' work items; past `INLINE_PATCH_CHARS` it
would bloat every one of them (and the `cy_runs` entries are rewritten at each transition), so
the coordinator stores it once in `cy_artifacts` under the sha256 of its text before applying
the result, and the records and messages carry only that name. Results of coders older than
that carry the name already, and are taken as they are.
"""

from __future__ import annotations

import hashlib

from nats.js.errors import ObjectNotFoundError
from nats.js.object_store import ObjectStore

from codeyard.bus.object_reader import ObjectReader, UnreadableObject
from codeyard.schemas.model import Patch
from codeyard.workspace.artifact_ages import refresh

INLINE_PATCH_CHARS = 64 * 1024
PATCH_PREFIX = "patch/sha256-"


class PatchMissing(LookupError):
    pass


async def offload(store: ObjectStore, patch: Patch) -> Patch:
    """`patch` as it should travel: unchanged when small, else a reference to its text."""
    if len(patch.text) <= INLINE_PATCH_CHARS:
        return patch
    data = patch.text.encode()
    digest = hashlib.sha256(data).hexdigest()
    name = f"{PATCH_PREFIX}{digest}"
    # The same text stored before (by an earlier delivery of the same result, say) is not
    # uploaded again, but its retention restarts: garbage collection must not take it from under
    # the reference about to be recorded.
    if not await refresh(store, name):
        await store.put(name, data)
    return Patch(object_name=name, sha256=digest)


def by_reference(patch: Patch) -> bool:
    """Whether `patch` carries only the name of its text in the object store."""
    return bool(patch.object_name) and not patch.text


async def inline(store: ObjectStore | None, patch: Patch) -> Patch:
    """`patch` with its text, fetched (and checked against its sha256) when it is a reference."""
    if not by_reference(patch):
        return patch
    if store is None:
        raise PatchMissing(f"patch {patch.object_name} is in the object store, which is not open")
    try:
        data = await ObjectReader.of(store).read(patch.object_name)
    except ObjectNotFoundError:
        raise PatchMissing(f"patch {patch.object_name} is not in the object store") from None
    except UnreadableObject as exc:  # damaged stays damaged: no retry brings it back
        raise PatchMissing(f"patch {patch.object_name} cannot be read: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != patch.sha256:
        raise PatchMissing(f"patch {patch.object_name} does not match its sha256")
    return Patch(text=data.decode(), object_name=patch.object_name, sha256=patch.sha256)
