"""The `codeyard` command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Annotated

import nats.errors
import typer
from rich.console import Console

from codeyard import __version__
from codeyard.bus import Bus, EmbeddedServerError
from codeyard.config import Settings

app = typer.Typer(
    help="codeyard: autonomous coding agents as services over NATS JetStream.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
schemas_app = typer.Typer(help="Wire-message schemas, for agents written in any language.")
app.add_typer(schemas_app, name="schemas")
console = Console()
err = Console(stderr=True)


@app.command()
def version() -> None:
    """Print the codeyard version."""
    console.print(__version__)


@schemas_app.command("export")
def schemas_export(
    directory: Annotated[Path, typer.Argument(help="where to write the files (created)")],
) -> None:
    """Write a JSON Schema per message and an AsyncAPI 3 document of the subjects.

    Example: [bold]codeyard schemas export ./schemas[/bold]
    """
    from codeyard.schemas.export import export_schemas

    written = export_schemas(directory)
    console.print(f"wrote {len(written)} files to {directory}")


@app.command()
def up() -> None:
    """Start codeyard on this machine.

    With NATS_URL unset, starts an embedded nats-server (JetStream, loopback only, store under the
    user's data dir; port CODEYARD_NATS_PORT, default 4222). With NATS_URL set, uses that server.
    Either way the streams, consumers and buckets are created or updated, and then the
    coordinator runs as a child process, restarted if it crashes. Ctrl-C stops everything.

    Example: [bold]codeyard up[/bold]
    """
    from codeyard.launch import run_up

    settings = Settings()
    try:
        asyncio.run(run_up(settings, console))
    except EmbeddedServerError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except (OSError, nats.errors.Error) as exc:
        err.print(f"[red]error:[/red] cannot reach NATS at {settings.nats_url}: {exc!r}")
        raise typer.Exit(1) from None


async def _coordinate(settings: Settings, name: str | None, capacity: int) -> None:
    from codeyard.coordinator.service import Coordinator

    if not settings.nats_url:
        raise typer.BadParameter("set NATS_URL (codeyard up starts the coordinator for you)")
    bus = await Bus.connect(
        settings.nats_url, name=name or "coordinator", topology=settings.topology()
    )
    await bus.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await Coordinator(bus, name=name, capacity=capacity).run(stop)
    finally:
        await bus.close()


@app.command()
def coordinator(
    name: Annotated[str | None, typer.Option(help="name in logs and in the leader lease")] = None,
    capacity: Annotated[
        int, typer.Option(min=1, help="tasks of one run in flight at once (about the coders)")
    ] = 8,
) -> None:
    """Run a coordinator: leads when it holds the lease, stands by otherwise.

    Run two for a standby that takes over within seconds of the leader's death.

    Example: [bold]NATS_URL=nats://127.0.0.1:4222 codeyard coordinator --name coord-a[/bold]
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(_coordinate(Settings(), name, capacity))
    except (OSError, nats.errors.Error) as exc:
        err.print(f"[red]error:[/red] cannot reach NATS: {exc!r}")
        raise typer.Exit(1) from None


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        app()
