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


def service_children(url: str, coordinators: int = 1) -> list[ChildSpec]:
    """The services `up` keeps running. Roles join here as they are built."""
    env = os.environ | {"NATS_URL": url}
    codeyard = [sys.executable, "-m", "codeyard"]
    return [
        ChildSpec(f"coordinator-{n}", [*codeyard, "coordinator", "--name", f"coordinator-{n}"], env)
        for n in range(1, coordinators + 1)
    ]


async def run_up(settings: Settings, console: Console) -> None:
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
        children = service_children(url)
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
