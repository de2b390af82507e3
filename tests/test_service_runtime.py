"""Services run on the event loop the configuration names, with their GC thresholds raised."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
import uvloop

from codeyard.config import Settings
from codeyard.service_runtime import YOUNG_THRESHOLD, run_service, tune_gc_for_service


async def running_loop() -> type[asyncio.AbstractEventLoop]:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


def test_services_run_on_uvloop_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CODEYARD_EVENT_LOOP", raising=False)
    assert run_service(running_loop(), Settings().event_loop) is uvloop.Loop

    monkeypatch.setenv("CODEYARD_EVENT_LOOP", "asyncio")
    loop = run_service(running_loop(), Settings().event_loop)
    assert loop is not uvloop.Loop
    assert issubclass(loop, asyncio.BaseEventLoop)


def test_an_unknown_event_loop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODEYARD_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="event_loop"):
        Settings()


@pytest.fixture
def gc_state() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("gc_state")
def test_a_service_collects_young_objects_less_often() -> None:
    _, middle, old = gc.get_threshold()

    tune_gc_for_service()

    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, old)
    assert gc.get_freeze_count() > 0  # what was imported is left out of collections
