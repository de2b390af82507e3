"""`codeyard up`: NATS (embedded unless NATS_URL is set) and every service as a child process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from rich.console import Console

from codeyard.bus import Bus, EmbeddedNats
from codeyard.config import Settings
from codeyard.supervisor import ChildSpec, Supervisor


def service_children(url: str, *, coders: int, agents: bool) -> list[ChildSpec]:
    """The services `up` keeps running: the coordinator and, with `agents`, every role."""
    env = os.environ | {"NATS_URL": url}
    codeyard = [sys.executable, "-m", "codeyard"]
    children = [ChildSpec("coordinator", [*codeyard, "coordinator", "--name", "coordinator"], env)]
    if agents:
        children += [
            ChildSpec("planner", [*codeyard, "worker", "planner"], env),
            *(ChildSpec(f"coder-{n}", [*codeyard, "worker", "coder"], env) for n in range(coders)),
            ChildSpec("tester", [*codeyard, "worker", "tester", "--concurrency", "2"], env),
            ChildSpec("review", [*codeyard, "worker", "review", "--concurrency", "2"], env),
        ]
    return children


async def run_worker(settings: Settings, role: str, concurrency: int) -> None:
    """One role's worker process: serve until SIGTERM, then finish or hand back in-flight work."""
    from codeyard.agents.roles import role_handler
    from codeyard.bus import PullWorker
    from codeyard.llm import LLMSettings, OpenAIClient

    llm = OpenAIClient(LLMSettings())
    handler = role_handler(role, llm)
    url = settings.nats_url or f"nats://127.0.0.1:{settings.nats_port}"
    bus = await Bus.connect(url, name=f"worker-{role}", topology=settings.topology())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await PullWorker(bus, role, handler, concurrency=concurrency).run(stop)
    finally:
        await bus.close()
        await llm.close()


async def run_up(settings: Settings, console: Console, *, coders: int, agents: bool) -> None:
    server: EmbeddedNats | None = None
    url = settings.nats_url
    if not url:
        server = EmbeddedNats(settings.data_dir / "nats", port=settings.nats_port)
        await asyncio.to_thread(server.start)
        url = server.url
        console.print(f"embedded nats-server with JetStream at [bold]{url}[/bold]")
        console.print(f"store: {server.store_dir}")
    try:
        bus = await Bus.connect(url, name="codeyard-up", topology=settings.topology())
        await bus.setup()
        await bus.close()
        children = service_children(url, coders=coders, agents=agents)
        console.print(f"running: {', '.join(child.name for child in children)}; Ctrl-C stops")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await Supervisor(children).run(stop)
    finally:
        if server:
            await asyncio.to_thread(server.stop)
            console.print("embedded nats-server stopped")
