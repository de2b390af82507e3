"""`codeyard dashboard`: the web dashboard as a process, connected as the `ctl` principal."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from urllib.parse import quote

from rich.console import Console

from codeyard.bus import Bus
from codeyard.bus.permissions import CTL
from codeyard.config import Settings
from codeyard.dashboard.auth import TokenCheck, new_token, normalised_origins
from codeyard.dashboard.server import Dashboard, serving
from codeyard.dashboard.sign_in import SIGN_IN
from codeyard.observability.startup import start_observability


class CannotServe(Exception):
    """Bad dashboard configuration: a short token, a public origin that is not an origin, or
    an address it cannot listen on."""


def dashboard_token(settings: Settings) -> str:
    """CODEYARD_DASHBOARD_TOKEN, else a new random one (printed in the URL at start);
    `CannotServe` if the one set is too short to be a secret."""
    token = settings.dashboard_token.get_secret_value() or new_token()
    try:
        TokenCheck(token)
    except ValueError as exc:
        raise CannotServe(f"CODEYARD_DASHBOARD_TOKEN: {exc}") from None
    return token


def public_origins(settings: Settings) -> tuple[str, ...]:
    """CODEYARD_DASHBOARD_PUBLIC_ORIGINS, separated by commas or spaces as a list in an
    environment variable usually is; `CannotServe` if one is not an origin (a URL with a path,
    say): no browser would send it, and every POST from there would fail."""
    origins = tuple(o for o in re.split(r"[,\s]+", settings.dashboard_public_origins) if o)
    try:
        normalised_origins(origins)
    except ValueError as exc:
        raise CannotServe(f"CODEYARD_DASHBOARD_PUBLIC_ORIGINS: {exc}") from None
    return origins


def sign_in_url(base: str, token: str) -> str:
    """The link that signs in, the token in its fragment, which no server sees (`sign_in`)."""
    return f"{base}{SIGN_IN}#token={quote(token, safe='')}"  # (a base64 token holds + and /)


def announcement(base: str, token: str, settings: Settings, show_link: bool = False) -> str:
    """Where the dashboard serves: with the sign-in link for a token made here (or made for
    it by `codeyard up`: `show_link`), which nobody else knows; without the token for one set,
    a secret this output (logs, in compose and Kubernetes) must not spread."""
    if settings.dashboard_token.get_secret_value() and not show_link:
        return f"dashboard: {base}/ (sign in with the token in CODEYARD_DASHBOARD_TOKEN)"
    return f"dashboard: {sign_in_url(base, token)}"


async def run_dashboard(settings: Settings, console: Console, show_link: bool = False) -> None:
    """Serve until SIGINT or SIGTERM. `show_link`: print the sign-in link even for the token
    set, which its parent (`codeyard up`) made rather than the user."""
    token = dashboard_token(settings)
    origins = public_origins(settings)
    start_observability(settings, "dashboard")
    bus = await Bus.connect(
        settings.server_url(),
        name="dashboard",
        credentials=settings.credentials(CTL),
        connect_attempts=4,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        dashboard = Dashboard(
            bus, token, public_origins=origins, user_header=settings.dashboard_user_header
        )
        host, port = settings.dashboard_host, settings.dashboard_port
        async with contextlib.AsyncExitStack() as stack:
            try:
                base = await stack.enter_async_context(serving(dashboard, host, port))
            except OSError as exc:
                raise CannotServe(f"cannot listen on {host}:{port}: {exc}") from None
            console.print(
                announcement(base, token, settings, show_link), markup=False, highlight=False
            )
            await stop.wait()
    finally:
        await bus.close()
