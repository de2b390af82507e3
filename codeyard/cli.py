"""The `codeyard` command."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import re
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import nats.errors
import nats.js.errors
import typer
from rich.console import Console
from rich.markup import escape

from codeyard import __version__
from codeyard.bus import Bus, EmbeddedServerError
from codeyard.config import Settings
from codeyard.supervisor import BAD_CONFIGURATION
from codeyard.terminal_text import terminal_safe

if TYPE_CHECKING:
    from codeyard.progress.follower import RunFollower
    from codeyard.schemas import ControlReply, Envelope, RunState, SubmitRun, TaskSpec

app = typer.Typer(
    help="codeyard: autonomous coding agents as services over NATS JetStream.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
schemas_app = typer.Typer(help="Wire-message schemas, for agents written in any language.")
app.add_typer(schemas_app, name="schemas")
deploy_app = typer.Typer(help="Deployment artifacts: NATS users and permissions.")
app.add_typer(deploy_app, name="deploy")
bench_app = typer.Typer(help="Benchmarks against the running system and its LLM.")
app.add_typer(bench_app, name="bench")
console = Console(soft_wrap=True)  # never break lines that scripts may grep
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")
INTERRUPTED = 130  # a Ctrl-C, as shells report a process SIGINT ended: 128 + 2
JsonFlag = Annotated[
    bool,
    typer.Option(
        "--json", metavar="", help="print JSON (msgspec) for scripts, nothing else on stdout"
    ),
]

N = TypeVar("N", int, float)


def _at_most(limit: N) -> Callable[[N], N]:
    """An option's upper bound, checked by a callback: as `max=`, its range (16 digits) took
    the width of the help's options table and squeezed every option's description."""

    def checked(value: N) -> N:
        if value > limit:
            raise typer.BadParameter(f"{value} is not in the range x<={limit}.")  # (as click's)
        return value

    return checked


def _more_than_zero(value: float) -> float:
    if not value > 0:  # not `<= 0`, nor click's FloatRange: NaN passes those
        raise typer.BadParameter(f"{value} is not more than 0.")
    return value


def _print_version(asked: bool) -> None:
    if asked:
        console.print(__version__)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            metavar="",
            help="print the codeyard version",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    pass


@app.command()
def version() -> None:
    """Print the codeyard version.

    Example: [bold]codeyard version[/bold]
    """
    console.print(__version__)


@schemas_app.command("export")
def schemas_export(
    directory: Annotated[Path, typer.Argument(help="where to write the files (created)")],
) -> None:
    """Write a JSON Schema per message and an AsyncAPI 3 document of the subjects.

    Example: [bold]codeyard schemas export ./schemas[/bold]
    """
    from codeyard.schemas.export import export_schemas

    try:
        written = export_schemas(directory)
    except OSError as exc:
        _cannot_write(directory, exc)
    console.print(f"wrote {len(written)} files to {directory}", markup=False)


@deploy_app.command("nats-config")
def deploy_nats_config(
    # (str, not Path: Path("") is the current directory, and an empty value must be refused)
    out: Annotated[str, typer.Option(metavar="<dir>", help="directory to write (created)")],
    reviewer: Annotated[
        list[str] | None,
        typer.Option(
            metavar="<name>", help="a plugin reviewer review.NAME to give its own user (repeatable)"
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="address the server listens on (0.0.0.0: every interface)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="client port")] = 4222,
    store_dir: Annotated[
        str, typer.Option(metavar="<dir>", help="JetStream store, as the server sees it")
    ] = "/data/jetstream",
    accounts: Annotated[
        bool | None,
        typer.Option(
            "--accounts/--single-account",
            help="each worker in a NATS account of its own (the default for a new OUT), or "
            "every user in one account, as configurations written before accounts (kept for "
            "an OUT written so)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write a nats-server config with one user per role and an env file per role.

    OUT/nats-server.conf enables JetStream and holds every principal's user with only the
    subjects it needs (a coder cannot approve), each worker in an account of its own;
    OUT/credentials/ROLE.env holds CODEYARD_NATS_USER and CODEYARD_NATS_PASSWORD for that
    role's processes. Existing passwords in OUT are kept. Files are 0600; no secret is printed.

    A server's streams are stored per account: switching an OUT written with one account to
    --accounts needs its store moved (deploy/README.md, "Upgrading").

    Example: [bold]codeyard deploy nats-config --out ./nats --reviewer security[/bold]
    """
    from codeyard.bus.permissions import UnknownPrincipal
    from codeyard.bus.subjects import UnknownRole
    from codeyard.deploy.nats_config import ServerOptions, write_deployment
    from codeyard.odd_characters import first_odd_character

    # Empty, the files went to the current directory, the server listened on every interface,
    # or kept its streams wherever it was started.
    for option, value in (("--out", out), ("--store-dir", store_dir)):
        if not value.strip() or not value.isprintable():
            _error(f"{option} {value!r}: name a directory")
            raise typer.Exit(BAD_CONFIGURATION)
    if not host or first_odd_character(host, ascii_only=False) is not None:
        _error(f"--host {host!r}: name an address (0.0.0.0 for every interface)")
        raise typer.Exit(BAD_CONFIGURATION)
    directory = Path(out)
    options = ServerOptions(host=host, port=port, store_dir=Path(store_dir))
    try:
        deployment = write_deployment(
            directory, reviewers=tuple(reviewer or ()), options=options, accounts=accounts
        )
    except (UnknownRole, UnknownPrincipal) as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from None
    except OSError as exc:
        _cannot_write(directory, exc)
    console.print(f"wrote {deployment.config_file}", markup=False)
    for principal in deployment.principals:
        console.print(f"wrote {deployment.credentials_file(principal)}", markup=False)
    if not deployment.accounts:
        err.print(
            "warning: every user shares one NATS account, as this configuration had: a "
            "compromised worker can have the server rewrite runs. Move the store and rerun "
            'with --accounts (deploy/README.md, "Upgrading").',
            markup=False,
        )


@app.command()
def up(
    coders: Annotated[int, typer.Option(min=1, max=256, help="coder processes to run")] = 2,
    agents: Annotated[
        bool,
        typer.Option(
            metavar="",
            help="run the agent roles (--no-agents: NATS, coordinator and safety gate only)",
        ),
    ] = True,
    reviewer: Annotated[
        list[str] | None,
        typer.Option(
            metavar="<name>",
            help="also run this reviewer plugin (an entry point name such as `static`, or "
            "its role review.static), with its own NATS user; repeatable",
        ),
    ] = None,
    reviewer_user: Annotated[
        list[str] | None,
        typer.Option(
            metavar="<name>",
            help="give a reviewer you run yourself (in another language, say) its NATS user "
            "on the embedded server, for role review.NAME; its credentials are printed; "
            "repeatable",
        ),
    ] = None,
    dashboard: Annotated[bool, typer.Option(metavar="", help="run the web dashboard too")] = True,
    policy: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="the safety gate's policy TOML (default: the built-in one)",
        ),
    ] = None,
    max_in_flight: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=1_000_000,
            help="tasks of all runs in flight at once, shared out among the runs (the "
            "coordinator's --max-in-flight); unset: no cap but each run's 8",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Start codeyard on this machine.

    With NATS_URL unset, starts an embedded nats-server (JetStream, loopback only, store under the
    user's data dir; port CODEYARD_NATS_PORT, default 4222) with one NATS user per role, whose
    credentials are generated once under the data dir; each child gets only its own, and
    `codeyard run` on this machine finds the ctl user's. With NATS_URL set, uses that server
    (with the users in CODEYARD_NATS_CREDENTIALS_DIR, if set).
    Either way the streams, consumers and buckets are created or updated; then the coordinator,
    the safety gate, a planner, --coders coders, a tester and a reviewer run as child processes,
    each restarted if it crashes. The agents need an LLM (OPENAI_BASE_URL / OPENAI_API_KEY or
    CODEYARD_LLM_*). The web dashboard runs too (--no-dashboard: not); its URL, with the token,
    is printed. Settings a child would refuse (no sandbox here, no LLM, a dashboard token too
    short) are checked first: exit 2, nothing started; a dashboard whose address cannot be
    listened on (its port taken) is left out, saying so. A child that exits with 2 (bad
    configuration) is not restarted: `up` stops everything and exits 2, with that child's last
    error lines. Ctrl-C, SIGTERM
    or SIGHUP stops everything: the services (they finish their work in flight; a second Ctrl-C
    kills them at once), then NATS; they also get SIGTERM if `up` is killed.

    Example: [bold]codeyard up[/bold]
    """
    from codeyard.agents.policy import PolicyError, load_policy
    from codeyard.dashboard.service import CannotServe, dashboard_token, public_origins
    from codeyard.launch import (
        IN_USE,
        AlreadyRunning,
        BadConfiguration,
        LocalModelNotServing,
        NatsUnreachable,
        ServiceRefused,
        bind_problem,
        prepare_data_dir,
        run_up,
    )
    from codeyard.llm import NOT_CONFIGURED, LLMSettings
    from codeyard.llm.local import NOTICE, local_server_available
    from codeyard.reviewers.loading import PluginError, plugin_role, plugin_spec
    from codeyard.sandbox import SandboxUnavailable, default_sandbox

    # (`run --reviewer` takes roles: the same spelling is taken here)
    reviewer = [name.removeprefix("review.") for name in reviewer or ()]
    users = [name.removeprefix("review.") for name in reviewer_user or ()]
    try:  # a plugin `up` cannot find would only be restarted over and over
        for name in reviewer:
            plugin_role(name)
            plugin_spec(name)
        for name in users:
            plugin_role(name)
    except PluginError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from None
    if policy is not None:
        try:  # checked here: the gate would refuse it only once `up` said it was running
            load_policy(policy)
        except PolicyError as exc:
            _error(str(exc))
            raise typer.Exit(BAD_CONFIGURATION) from None
    if both := sorted(set(reviewer) & set(users)):  # (two reviewers would share its work)
        _error(f"review.{both[0]} is given both --reviewer and --reviewer-user: choose one")
        raise typer.Exit(BAD_CONFIGURATION)
    settings = Settings()
    if users and settings.nats_url:  # (the users are those of NATS_URL's server)
        _error(
            "--reviewer-user gives a user on up's own server; with NATS_URL, give it one "
            "there: codeyard deploy nats-config --reviewer NAME"
        )
        raise typer.Exit(BAD_CONFIGURATION)
    if dashboard:
        try:  # checked here, as the child it runs in would fail for ever
            dashboard_token(settings)
            public_origins(settings)
        except CannotServe as exc:
            err.print(f"error: {exc}", markup=False)
            raise typer.Exit(BAD_CONFIGURATION) from None
        host, port = settings.dashboard_host, settings.dashboard_port
        problem = bind_problem(port, host)
        if problem and problem != IN_USE:  # (in use: up says so, and serves without it)
            _error(f"CODEYARD_DASHBOARD_HOST: cannot listen on {host}:{port}: {problem}")
            raise typer.Exit(BAD_CONFIGURATION)
    llm = LLMSettings()
    local_llm = agents and not llm.is_configured()
    if local_llm and not (settings.local_llm and local_server_available()):
        turned_off = not settings.local_llm and local_server_available()
        err.print(
            f"error: the agents need an LLM. {NOT_CONFIGURED}"
            + (
                "\nThe local model is installed here: CODEYARD_LOCAL_LLM=0 turns it off."
                * turned_off
            ),
            markup=False,
        )
        raise typer.Exit(2)
    if local_llm:
        console.print(NOTICE, markup=False)
    elif agents:
        from codeyard.llm.reachability import endpoint_unreachable

        unreachable = endpoint_unreachable(llm)
        if unreachable is not None:  # it may come up later: a warning, not a refusal
            _warn(
                f"the LLM endpoint {llm.endpoint()} does not answer ({unreachable}): "
                "the agents' work will fail once their retries run out; check "
                "OPENAI_BASE_URL (or CODEYARD_LLM_BASE_URL)"
            )
    try:  # the coordinator and tester would refuse to start, after `up` said it was running
        default_sandbox(settings)
    except SandboxUnavailable as exc:
        _error(str(exc))
        raise typer.Exit(BAD_CONFIGURATION) from None
    try:  # (made only once every setting was read: a bad one stops `up` with nothing written)
        prepare_data_dir(settings)
    except BadConfiguration as exc:
        _error(str(exc))
        raise typer.Exit(BAD_CONFIGURATION) from None
    if settings.log_format == "json":
        # `up`'s own warnings (a service restarted, stuck, killed) in the format of its
        # services' lines, which share its stderr; in text they stay its bare messages.
        from codeyard.observability.log_format import configure_logging, set_process_name

        set_process_name("up")
        configure_logging("json", logging.WARNING)
    try:
        up_ = run_up(
            settings,
            console,
            coders=coders,
            agents=agents,
            local_llm=local_llm,
            reviewers=tuple(reviewer),
            reviewer_users=tuple(users),
            dashboard=dashboard,
            policy=policy,
            max_in_flight=max_in_flight,
        )
        asyncio.run(up_)
    except (AlreadyRunning, ServiceRefused) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(BAD_CONFIGURATION) from None
    except (EmbeddedServerError, NatsUnreachable) as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    except LocalModelNotServing as exc:
        err.print(f"error: the local model did not start: {exc}", markup=False)
        raise typer.Exit(1) from None
    except OSError as exc:  # e.g. the data dir cannot be written
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None


@app.command()
def down(
    timeout: Annotated[
        float,
        typer.Option(help="seconds to wait for it to stop", callback=_more_than_zero),
    ] = 120.0,
) -> None:
    """Stop the `codeyard up` of this machine's data dir, as Ctrl-C in its terminal does.

    Its services finish or hand back the work they hold, then its NATS server stops; runs go
    on at the next `codeyard up`. It is the `up` that runs the embedded server of
    CODEYARD_DATA_DIR (give the same one); one started with NATS_URL is stopped where it runs.
    Exits 0 once it has stopped, or when none runs; 1 when it is still stopping after
    --timeout.

    Example: [bold]codeyard down[/bold]
    """
    from codeyard.launch import stop_up

    directory = Settings().embedded_dir()
    try:
        pid = asyncio.run(stop_up(directory, timeout))
    except TimeoutError:
        _error(f"codeyard up is still stopping after {timeout:g}s")
        raise typer.Exit(1) from None
    if pid is None:
        console.print(f"no codeyard up runs with the data dir {directory.parent}", markup=False)
    else:
        console.print(f"stopped codeyard up (pid {pid})", markup=False)


@app.command("dashboard")
def dashboard_command(
    show_token_link: Annotated[
        bool,
        typer.Option(
            "--show-token-link",
            hidden=True,  # for `codeyard up`, which made the token it sets for this dashboard
            help="print the sign-in link with CODEYARD_DASHBOARD_TOKEN in it",
        ),
    ] = False,
) -> None:
    """Serve the web dashboard: runs, each run's live task graph, task details (diff, test
    output, review) and pending approvals with Approve/Deny buttons.

    Listens on CODEYARD_DASHBOARD_HOST:CODEYARD_DASHBOARD_PORT (default 127.0.0.1:8700) and
    connects to NATS as the ctl user. Every page needs the token CODEYARD_DASHBOARD_TOKEN
    (unset: a new one at each start); open the printed URL, which carries it, once. Behind a
    reverse proxy, name the addresses browsers use in CODEYARD_DASHBOARD_PUBLIC_ORIGINS.
    `codeyard up` runs the dashboard for you.

    Example: [bold]CODEYARD_DASHBOARD_PORT=8800 codeyard dashboard[/bold]
    """
    from codeyard.dashboard.service import CannotServe, run_dashboard

    _serve(run_dashboard(Settings(), console, show_token_link), bad_configuration=(CannotServe,))


@app.command()
def gate(
    policy: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="policy TOML (default: the built-in one)"),
    ] = None,
) -> None:
    """Run the safety gate: answers cy.gate.check with allow, deny or needs_approval.

    Every decision is appended to the run's events before it is answered.

    Example: [bold]NATS_URL=nats://127.0.0.1:4222 codeyard gate --policy ./policy.toml[/bold]
    (against the server of `codeyard up`, also CODEYARD_NATS_CREDENTIALS_DIR set to the
    credentials directory it prints)
    """
    from codeyard.agents.policy import PolicyError
    from codeyard.launch import run_gate

    _serve(run_gate(Settings(), policy), bad_configuration=(PolicyError,))


@app.command()
def worker(
    role: Annotated[str, typer.Argument(help="planner, coder, tester or review")],
    concurrency: Annotated[
        # (a role's consumer lets at most 10,000 items out at once)
        int, typer.Option(min=1, max=10_000, help="work items handled at once")
    ] = 1,
    plugin: Annotated[
        str | None,
        typer.Option(
            metavar="<module:Class>",
            help="review only: a reviewer plugin class, module:Class (needs --name)",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            metavar="<name>",
            help="review only: serve role review.NAME; without --plugin, NAME is looked up in "
            "the codeyard.reviewers entry points",
        ),
    ] = None,
) -> None:
    """Run one agent role's worker; run more of them to scale the role.

    Pulls from the role's durable consumer, publishes each result before acking, heartbeats
    while the model thinks, and on SIGTERM finishes (or hands back) what it is doing.

    With --name (and optionally --plugin), `review` runs a reviewer plugin instead of the
    built-in LLM reviewer, as role review.NAME on cy.work.review.NAME; it needs no LLM.

    Examples: [bold]NATS_URL=nats://127.0.0.1:4222 codeyard worker coder --concurrency 2[/bold]
    [bold]codeyard worker review --name static[/bold]
    [bold]codeyard worker review --plugin mypkg.review:NoTodos --name notodos[/bold]
    """
    from codeyard.launch import BadConfiguration
    from codeyard.llm import LLMNotConfigured
    from codeyard.sandbox import SandboxUnavailable

    bad = (LLMNotConfigured, SandboxUnavailable, BadConfiguration)
    if plugin is None and name is None:
        from codeyard.launch import run_worker

        problem = _not_a_builtin_role(role)
        if problem is not None:  # before the LLM, which no role that does not exist needs
            err.print(f"error: {problem}", markup=False)
            raise typer.Exit(BAD_CONFIGURATION)

        _serve(run_worker(Settings(), role, concurrency), bad_configuration=bad)
        return
    from codeyard.launch import run_plugin_reviewer
    from codeyard.reviewers.loading import PluginError, load_plugin, plugin_role, plugin_spec

    try:
        if role != "review":
            raise PluginError("--plugin and --name are for reviewers: codeyard worker review ...")
        if name is None:
            raise PluginError("--plugin needs --name NAME: the plugin serves role review.NAME")
        plugin_role_name = plugin_role(name)
        loaded = load_plugin(plugin or plugin_spec(name))
    except PluginError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from None
    settings = Settings()
    problem = _no_user_on_ups_server(settings, plugin_role_name)
    if problem is not None:
        _error(problem)
        raise typer.Exit(BAD_CONFIGURATION)
    _serve(
        run_plugin_reviewer(settings, plugin_role_name, loaded, concurrency),
        bad_configuration=bad,
    )


@app.command()
def run(
    goal: Annotated[str, typer.Argument(help="what to build, in plain words")],
    repo: Annotated[
        Path, typer.Option(exists=True, file_okay=False, help="the git repository to work on")
    ] = Path("."),
    plan: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help='a JSON list of tasks, skipping the planner: [{"id": "a", "title": "...", '
            '"description": "...", "acceptance": ["..."], "files": ["..."], "deps": ["b"], '
            '"reviewers": ["review"], "effort": 2}], only id and title required',
        ),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(
            metavar="<id>",
            help="choose the run id; the same goal again follows that run (resubmitting is "
            "safe), an id taken by another goal is refused",
        ),
    ] = None,
    # (no --no-approve-*: they are the defaults, and their column squeezed every option's help)
    approve_plan: Annotated[
        bool,
        typer.Option("--approve-plan", metavar="", help="wait for a person to approve the plan"),
    ] = False,
    approve_merge: Annotated[
        bool,
        typer.Option(
            "--approve-merge", metavar="", help="wait for a person to approve each task's merge"
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(help="seconds to wait for the run, from its submission, before giving up"),
    ] = 3600.0,
    max_attempts: Annotated[
        int,
        typer.Option(
            min=1,
            max=100,
            help="coding attempts per task (failed tests, review or merge send it back) before "
            "it fails, and the run with it; work a worker gives up on (a denied action, a "
            "poison message) fails its task at once",
        ),
    ] = 3,
    max_tokens: Annotated[
        int,
        typer.Option(
            min=0,
            callback=_at_most(2**53),
            help="LLM tokens the whole run may use before it waits for a person to approve "
            "more (approving lifts the limit); 0: no limit; at most 2^53",
        ),
    ] = 0,
    max_cost: Annotated[
        float,
        typer.Option(
            min=0,
            callback=_at_most(1e12),
            help="USD the run may spend (priced by CODEYARD_LLM_*_PRICE*) before it waits "
            "for a person, as --max-tokens; 0: no limit; at most 1e12",
        ),
    ] = 0.0,
    reviewer: Annotated[
        list[str] | None,
        typer.Option(
            metavar="<name>",
            help="a reviewer every task needs: review (the LLM) or review.NAME (a plugin, "
            "NAME alone too); repeat for several (default: review)",
        ),
    ] = None,
    test_command: Annotated[
        str | None,
        typer.Option(
            help="the shell line that runs the repository's tests, e.g. 'make test' or 'go "
            "test ./...': the tester and the suite after each merge run it in the sandbox with "
            "/bin/sh -c, checked by the safety gate like any command (the default policy asks "
            "a person about one it does not know); default: detected (python -m pytest or npm "
            "test)"
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", metavar="", help="approve everything the run waits for")
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Submit a goal and follow the run until it ends.

    On a terminal it shows the task graph live (state, attempt and running time of each task,
    tasks merged, tokens and cost) and asks at a prompt when the run waits for an approval;
    --yes approves instead. Piped, it prints one line per change and how to answer approvals.
    --json prints only the final run, as JSON.

    Exits 0 when every task is merged, 1 when the run failed or was cancelled, 2 on bad input
    (a plan with no tasks, a cycle or an unknown dependency, a repository the coordinator
    cannot clone, a --run-id taken by another submission).
    Ctrl-C (exit 130) or --timeout (exit 1) stops following, not the run: it goes on, and
    `codeyard logs -f ID` follows it again, `codeyard cancel ID` stops it.

    Example: [bold]codeyard run "add a /health endpoint" --repo ./service[/bold]

    [bold]--reviewer review --reviewer review.static[/bold] adds the static reviewer;
    [bold]--test-command "go test ./..."[/bold] tests a project codeyard cannot detect.
    """
    import msgspec

    from codeyard.follow import CoordinatorBusy, RunIdTaken, RunRefused, SubmissionRefused
    from codeyard.progress.follower import FollowOptions, RunFollower
    from codeyard.schemas import (
        Budget,
        MessageError,
        RepoRef,
        RunState,
        SubmitRun,
        TaskState,
        decode,
        decode_plan,
        new_id,
    )

    reviewers = list(dict.fromkeys(_reviewer_role(name) for name in reviewer or ["review"]))
    problem = _bad_run_input(goal, timeout, run_id, reviewers, test_command)
    if problem is not None:
        _error(problem)
        raise typer.Exit(2)
    repo = repo.resolve()
    problem = _not_a_work_tree(repo)
    if problem is not None:
        _error(problem)
        raise typer.Exit(2)
    left_out = _uncommitted_changes(repo)
    if left_out is not None:
        _warn(left_out)
    tasks = None
    if plan is not None:
        try:
            # a typed decode stops at a wrong first token: `{oops` would read as "not a list"
            decode(raw := plan.read_bytes(), msgspec.Raw)
            tasks = decode_plan(raw)
        except MessageError as exc:
            _error(f"{plan} is not a list of tasks: {_in_words(str(exc))}")
            raise typer.Exit(2) from None
        problem = _invalid_plan(tasks)
        if problem is not None:  # as the coordinator would refuse it, but before submitting
            _error(problem)
            raise typer.Exit(2)
    submit = SubmitRun(
        run_id=run_id or new_id()[:16],
        goal=goal,
        repo=RepoRef(path=str(repo)),
        plan=tasks,
        approve_plan=approve_plan,
        approve_merge=approve_merge,
        budget=Budget(
            max_tokens=max_tokens, max_cost_usd=max_cost, max_attempts_per_task=max_attempts
        ),
        reviewers=reviewers,  # checked above: constructing a Struct does not validate it
        test_command=(test_command or "").strip(),  # checked above too; "": detected
    )
    from codeyard.bus.permissions import CTL

    settings = Settings()
    url = settings.server_url()
    options = FollowOptions(
        live=console.is_terminal and not json_output,
        quiet=json_output,
        prompt=sys.stdin.isatty(),
        yes=yes,
        by=_user(),
    )

    submitting = False  # from then on, giving up following leaves the run going
    follower = RunFollower(console, err, options)

    async def follow() -> RunState:
        nonlocal submitting
        bus = await Bus.connect(
            url,
            name="codeyard-run",
            credentials=settings.credentials(CTL),
            connect_attempts=4,
            quiet=True,  # NATS unreachable: one line says so, not one per attempt
        )
        try:
            too_big = _too_big_to_submit(bus, submit)
            if too_big is not None:  # bad input, that nats-py would refuse to send
                _error(too_big)
                raise typer.Exit(2)
            if run_id is not None:  # chosen, so it may name a run there is already
                await _check_chosen_run_id(bus, submit)
            submitting = True
            if not json_output:
                console.print(f"run {submit.run_id}: {goal}", markup=False, highlight=False)
            unserved = asyncio.create_task(_warn_of_unserved_roles(bus, submit, follower))
            try:
                final = await follower.follow(bus, submit, timeout)
            finally:
                unserved.cancel()
        finally:
            await bus.close()
        if json_output:
            _print_json(final)
            return final.state
        merged = sum(task.state is TaskState.MERGED for task in final.tasks.values())
        console.print(
            f"run {final.run_id} {final.state}: {merged}/{len(final.tasks)} tasks merged",
            markup=False,
        )
        if final.state is RunState.DONE:
            console.print(f"result: branch codeyard/{final.run_id} in {repo}", markup=False)
        elif merged and final.repo.snapshot:  # delivered nowhere: only in the run's clone
            console.print(
                f"its merged tasks are only in its integration clone, removed "
                f"CODEYARD_ARTIFACT_RETENTION_DAYS after the run ended; to keep them: "
                f"git -C {shlex.quote(str(repo))} fetch {shlex.quote(final.repo.snapshot)} "
                f"HEAD:refs/heads/salvage/{final.run_id}",
                markup=False,
                highlight=False,
            )
        if final.error:
            console.print(f"reason: {terminal_safe(final.error, lines=True)}", markup=False)
        return final.state

    try:
        state = asyncio.run(follow())
    except KeyboardInterrupt:
        if submitting and follower.heard_from_run:
            _still_running(submit.run_id)
        elif submitting:  # asked, not answered: the run may or may not exist
            err.print(
                f"run {submit.run_id} was submitted, but no coordinator answered yet: "
                f"`codeyard status {submit.run_id}` tells whether it exists",
                markup=False,
                highlight=False,
            )
        raise typer.Exit(INTERRUPTED) from None
    except RunIdTaken as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    except SubmissionRefused as exc:  # its plan, repository or run id: bad input
        _error(_in_words(str(exc)))
        raise typer.Exit(2) from None
    except CoordinatorBusy as exc:  # the submission may still be taken: not to be sent twice
        _error(_in_words(str(exc)))
        err.print(
            f"run {submit.run_id} may still start: `codeyard status {submit.run_id}` tells, "
            f"`codeyard logs -f {submit.run_id}` follows it",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(1) from None
    except RunRefused as exc:
        _error(_in_words(str(exc)))
        raise typer.Exit(1) from None
    except nats.errors.TimeoutError as exc:  # a TimeoutError too, but not --timeout's
        if not submitting:
            _unreachable(url, exc)
        _nats_too_slow(exc)
        _still_running(submit.run_id)
        raise typer.Exit(1) from None
    except TimeoutError as exc:
        if not submitting:  # connecting timed out: NATS is not there
            _unreachable(url, exc)
        _error(f"the run did not finish within {timeout:g}s")
        _still_running(submit.run_id)
        raise typer.Exit(1) from None
    except nats.errors.MaxPayloadError:  # a nats.errors.Error, but NATS was reached
        # in case the check above let one through: a server's limit lowered since (another
        # server of its cluster reconnected to)
        _error(_too_big(submit, "the max_payload of the NATS server"))
        raise typer.Exit(2) from None
    except (OSError, nats.errors.Error) as exc:
        _unreachable(url, exc)
    raise typer.Exit(_outcome_exit_code(state))


def _too_big_to_submit(bus: Bus, submit: SubmitRun) -> str | None:
    """Why `submit` is too big to send, if it is: over the connected server's max_payload,
    nats-py would refuse to publish it; over `MAX_MESSAGE_BYTES`, the coordinator to decode
    it. The plan's checks bound each task and the plan file, not goal, plan and test command
    together."""
    from codeyard.schemas import MAX_MESSAGE_BYTES, encode

    max_payload = bus.nc.max_payload
    if max_payload and max_payload < MAX_MESSAGE_BYTES:
        limit, over = max_payload, f"the {max_payload}-byte max_payload of the NATS server"
    else:
        limit, over = MAX_MESSAGE_BYTES, f"the {MAX_MESSAGE_BYTES}-byte limit of a codeyard message"
    return _too_big(submit, over) if len(encode(submit)) > limit else None


def _too_big(submit: SubmitRun, over: str) -> str:
    from codeyard.schemas import encode

    return (
        f"the run is {len(encode(submit))} bytes to submit (goal, plan and test command), over "
        f"{over}: shorten them, or leave detail to files in the repository"
    )


def _outcome_exit_code(state: RunState) -> int:
    """How `run` and `logs --follow` exit for a run that ended in `state`."""
    from codeyard.schemas import RunState

    return 0 if state == RunState.DONE else 1


async def _check_chosen_run_id(bus: Bus, submit: SubmitRun) -> None:
    """`RunIdTaken` when the run id names a run with another goal or other settings, before
    anything of that run is shown (the coordinator would refuse the submission only after the
    run's history had been replayed). One with the same is this submission again, which is
    safe: it is followed, and that is said."""
    from codeyard.follow import RunIdTaken, existing_run

    run_id = submit.run_id
    existing = await existing_run(bus, run_id)
    if existing is None:
        return
    if differences := submit.differences(existing):
        raise RunIdTaken(
            f"--run-id {run_id!r} is taken: run {run_id} exists already ({existing.state}) with "
            f"another {', '.join(differences)}; see `codeyard status {run_id}`, or choose "
            "another --run-id"
        )
    err.print(
        f"run {run_id} exists already ({existing.state}) with this goal: following it, "
        "not starting another",
        markup=False,
        highlight=False,
    )


@bench_app.command("humaneval")
def bench_humaneval_command(
    limit: Annotated[
        int | None, typer.Option(min=1, help="the first N problems (default: all 164)")
    ] = None,
    problems: Annotated[
        str | None, typer.Option(help="comma-separated problem ids, e.g. HumanEval/0,3")
    ] = None,
    run_id: Annotated[
        str,
        typer.Option(
            help="prefix of the run ids: one run PREFIX-N per problem, none of which may exist "
            "already (default: a new he-XXXXXXXX each time)"
        ),
    ] = "",
    concurrency: Annotated[
        int,
        typer.Option(min=1, max=256, help="single-shot calls at once (the pipeline: the coders)"),
    ] = 2,
    max_attempts: Annotated[
        int, typer.Option(min=1, max=100, help="attempts per task in the pipeline")
    ] = 3,
    workdir: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            resolve_path=True,  # the runs name the repositories, and the services clone them
            help="keep the problem repositories here (new directory)",
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="seconds to wait for each run", callback=_more_than_zero)
    ] = 3600.0,
    json_output: JsonFlag = False,
) -> None:
    """HumanEval through the pipeline (one run per problem: coder, tester, reviewer; the
    hidden tests only run in the sandbox on what was delivered) and the same model single-shot.

    Needs `codeyard up` running and the LLM in this environment too (OPENAI_BASE_URL, ... as
    for `up`; with `up` serving the local model, the URL it prints). Reports pass@1 of both
    and their ratio, tokens, cost and wall time. Each invocation measures new runs: a --run-id
    whose runs exist already (used before) is refused (exit 2).

    Example: [bold]codeyard bench humaneval --limit 5[/bold]
    """

    from codeyard.bench.humaneval import BenchError, bench_humaneval, load_problems, render
    from codeyard.llm import LLMNotConfigured, LLMSettings
    from codeyard.sandbox import SandboxUnavailable, default_sandbox
    from codeyard.schemas import new_id
    from codeyard.schemas.envelope import ID_PATTERN

    # the longest run id it makes, PREFIX-163, must be one: else each run would be refused
    if run_id and re.fullmatch(ID_PATTERN, f"{run_id}-163") is None:
        _error(
            f"--run-id {run_id!r}: the runs are named PREFIX-N, so PREFIX is 1 to 60 letters, "
            "digits, _ and -, starting with a letter or digit"
        )
        raise typer.Exit(2)
    try:
        chosen = load_problems([p for p in (problems or "").split(",") if p.strip()], limit)
        sandbox = default_sandbox(Settings())
        settings = LLMSettings()
        settings.endpoint()
    except (BenchError, SandboxUnavailable, LLMNotConfigured) as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from None
    if workdir is not None and workdir.exists():
        err.print(f"error: {workdir} exists; name a new directory", markup=False)
        raise typer.Exit(2)

    def say(line: str) -> None:
        if not json_output:
            console.print(line, markup=False, highlight=False)

    report = _on_bus(
        "bench",
        lambda bus: bench_humaneval(
            bus,
            chosen,
            sandbox,
            settings,
            run_prefix=run_id or f"he-{new_id()[:8]}",
            workdir=workdir,
            concurrency=concurrency,
            max_attempts=max_attempts,
            timeout=timeout,
            say=say,
        ),
    )
    if json_output:
        _print_json(report)
    else:
        typer.echo(render(report), nl=False)


async def _coordinate(
    settings: Settings, name: str | None, capacity: int, max_in_flight: int | None
) -> None:
    from codeyard.bus.gate_client import BusGateClient
    from codeyard.bus.permissions import COORDINATOR
    from codeyard.coordinator.service import Coordinator
    from codeyard.sandbox import default_sandbox
    from codeyard.sandbox.scratch import sweep_abandoned
    from codeyard.workspace.integration import GitIntegrator
    from codeyard.workspace.regression import SUITE_SCRATCH, SandboxedSuite
    from codeyard.workspace.snapshots import artifact_store

    if not settings.nats_url:
        raise typer.BadParameter("set NATS_URL (codeyard up starts the coordinator for you)")
    from codeyard.launch import prepare_data_dir, service_key_of
    from codeyard.observability.startup import start_observability

    prepare_data_dir(settings)  # (the runs' clones)
    await sweep_abandoned(SUITE_SCRATCH)  # of coordinators killed on this machine

    start_observability(settings, name or "coordinator")
    sandbox = default_sandbox(settings)  # runs the suite after each merge; none: refuse to start
    credentials = settings.credentials(COORDINATOR)
    service_key = service_key_of(credentials)
    bus = await Bus.connect(
        settings.nats_url,
        name=name or "coordinator",
        credentials=credentials,
        topology=settings.topology(),
    )
    await bus.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        artifacts = await artifact_store(bus.js)
        integrator = GitIntegrator(
            settings.data_dir,
            SandboxedSuite(sandbox, BusGateClient(bus)),
            artifacts=artifacts,  # workers fetch the code from there
        )
        coordinator = Coordinator(
            bus,
            name=name,
            capacity=capacity,
            max_in_flight=max_in_flight,
            integrator=integrator,
            artifacts=artifacts,
            approval_timeout=settings.approval_timeout,
            artifact_retention=settings.artifact_retention(),
            integration_clones=integrator.root,
            service_key=service_key,
        )
        await coordinator.run(stop)
    finally:
        await bus.close()


@app.command()
def coordinator(
    name: Annotated[str | None, typer.Option(help="name in logs and in the leader lease")] = None,
    capacity: Annotated[
        int,
        typer.Option(
            min=1, max=100_000, help="tasks of one run in flight at once (about the coders)"
        ),
    ] = 8,
    max_in_flight: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=1_000_000,
            help="tasks of all runs in flight at once, shared out among the runs (a new run "
            "gets its share at once, not after the queue of the others); unset: no cap but "
            "each run's --capacity",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a coordinator: leads when it holds the lease, stands by otherwise.

    Run two for a standby that takes over within seconds of the leader's death. It merges each
    approved task into the run's integration clone and runs the repository's whole test suite in
    the sandbox after each merge (a failing suite reverts the merge and sends the task back), so
    it needs a working sandbox like the tester does.

    Example: [bold]NATS_URL=nats://127.0.0.1:4222 codeyard coordinator --name coord-a[/bold]
    (against the server of `codeyard up`, also CODEYARD_NATS_CREDENTIALS_DIR set to the
    credentials directory it prints)
    """
    from codeyard.launch import BadConfiguration
    from codeyard.sandbox import SandboxUnavailable

    refused = (SandboxUnavailable, BadConfiguration)
    _serve(_coordinate(Settings(), name, capacity, max_in_flight), bad_configuration=refused)


@app.command()
def approvals(
    run_id: Annotated[
        str | None, typer.Option("--run", metavar="<id>", help="only those of this run")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """List what waits for a person: plans, budget overruns, gated commands and merges,
    oldest first.

    Answer each with [bold]codeyard approve ID[/bold] or [bold]codeyard deny ID[/bold]; what
    nobody answers within CODEYARD_APPROVAL_TIMEOUT seconds is denied. Exits 2 when --run is
    not a run id.

    Example: [bold]codeyard approvals --run 3f2a9c0d1e4b5a69 --json[/bold]
    """
    from codeyard.progress.render import approvals_table
    from codeyard.schemas import ApprovalList, ListApprovals

    if run_id is not None:  # (an empty one would list every run's)
        _check_id(run_id)
    reply = _ask("approvals", ListApprovals(run_id=run_id or ""))
    if json_output:
        _print_reply(reply)
        return
    if not isinstance(reply, ApprovalList):
        _refused(reply)
    if not reply.approvals:
        console.print("nothing waits for approval")
        return
    console.print(approvals_table(reply.approvals))
    if reply.omitted:  # a reply must fit in one message: the newest wait for the next listing
        console.print(
            f"and {reply.omitted} newer left out to fit the reply: answer these first, or "
            "list one run's with --run RUN",
            markup=False,
            highlight=False,
        )


@app.command()
def approve(
    approval_id: Annotated[str, typer.Argument(help="from `codeyard approvals`")],
    comment: Annotated[str, typer.Option(help="why, kept with the answer")] = "",
    by: Annotated[
        str,
        typer.Option(
            metavar="<name>",
            help="who approves (default: $USER, else $LOGNAME, else the account name)",
        ),
    ] = "",
    json_output: JsonFlag = False,
) -> None:
    """Approve what waits: the parked task (or run) goes on.

    Exits 1 when the coordinator refuses (no such approval, answered already), 2 when ID is
    not an approval id or --comment or --by is too long, checked before sending.

    Example: [bold]codeyard approve 3f2a9c0d1e4b5a69 --comment "pip install requests is fine"[/bold]
    """
    from codeyard.schemas import Approve

    _check_id(approval_id, "approval id")
    _answer(
        Approve(approval_id=approval_id, by=by or _user(), comment=comment), "approve", json_output
    )


@app.command()
def deny(
    approval_id: Annotated[str, typer.Argument(help="from `codeyard approvals`")],
    reason: Annotated[str, typer.Option(help="why, shown with the failed task")] = "",
    by: Annotated[
        str,
        typer.Option(
            metavar="<name>",
            help="who denies (default: $USER, else $LOGNAME, else the account name)",
        ),
    ] = "",
    json_output: JsonFlag = False,
) -> None:
    """Deny what waits: a parked task fails, a plan is rejected, an over-budget run is cancelled.

    Exits 1 when the coordinator refuses (no such approval, answered already), 2 when ID is
    not an approval id or --reason or --by is too long, checked before sending.

    Example: [bold]codeyard deny 3f2a9c0d1e4b5a69 --reason "no deploys from tests"[/bold]
    """
    from codeyard.schemas import Deny

    _check_id(approval_id, "approval id")
    _answer(Deny(approval_id=approval_id, by=by or _user(), reason=reason), "deny", json_output)


@app.command()
def status(
    run_id: Annotated[
        str | None, typer.Argument(help="the run (default: every run the coordinator knows)")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Where runs stand: with RUN, its state, usage and a table of its tasks (state, attempt,
    running time, feedback received); without, a table of every run.

    Exits 1 when there is no such run, 2 when RUN is not a run id.

    Example: [bold]codeyard status r1[/bold]   or   [bold]codeyard status --json[/bold]
    """
    from codeyard.follow import run_status
    from codeyard.progress.render import run_summary, runs_table, task_table
    from codeyard.schemas import RunStatus, StatusQuery
    from codeyard.schemas.envelope import utc_now

    if run_id is not None:  # every task, read in pages if the run is too big for one reply
        _check_id(run_id)
        reply = _on_bus("status", lambda bus: run_status(bus, run_id, patience=10))
    else:
        reply = _ask("status", StatusQuery())
    if json_output:
        _print_reply(reply)
        return
    if not isinstance(reply, RunStatus):
        _refused(reply)
    if run_id is not None:
        [one] = reply.runs
        console.print(run_summary(one))
        if one.tasks:
            console.print(task_table(one, utc_now()))
        return
    if reply.runs:
        console.print(runs_table(reply.runs, console.width))
    elif not reply.omitted:
        console.print("no runs")
    if reply.omitted:  # a reply of every run must fit in one message: the oldest ended go
        console.print(
            f"and {reply.omitted} older ended run{'' if reply.omitted == 1 else 's'} left out "
            "to fit the reply: `codeyard status RUN` shows any one",
            markup=False,
            highlight=False,
        )


@app.command()
def cancel(
    run_id: Annotated[str, typer.Argument(help="the run to stop")],
    reason: Annotated[str, typer.Option(help="why, recorded with the run")] = "cancelled by user",
    json_output: JsonFlag = False,
) -> None:
    """Cancel a run: work in flight is withdrawn from the workers, nothing more is merged.

    A cancelled run delivers no branch (no codeyard/RUN): the tasks it merged are only in its
    integration clone on the coordinator's disk, removed CODEYARD_ARTIFACT_RETENTION_DAYS after
    the run ended. To keep them, run this in your repository (see the README, "Storage and
    retention"):
    git fetch CODEYARD_DATA_DIR/runs/RUN/integration HEAD:refs/heads/salvage/RUN

    Exits 1 when the run is unknown or over (0 when it was cancelled already), 2 when RUN is
    not a run id or the reason is blank.

    Example: [bold]codeyard cancel r1 --reason "wrong goal"[/bold]
    """
    from codeyard.schemas import Accepted, CancelRun
    from codeyard.schemas.messages import ALREADY_CANCELLED

    _check_id(run_id)
    if not reason.strip():
        _error("--reason is blank: say why the run is cancelled, or leave --reason out")
        raise typer.Exit(2)
    reply = _ask("cancel", CancelRun(run_id=run_id, reason=reason))
    if json_output:
        _print_reply(reply)
        return
    if not isinstance(reply, Accepted):
        _refused(reply)
    done = f"{run_id} was {reply.detail}" if reply.detail == ALREADY_CANCELLED else None
    console.print(done or f"cancelled {run_id}: {reason}", markup=False, highlight=False)


@app.command("gc")
def gc_command(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", metavar="", help="only list what would be deleted")
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Delete old snapshot bundles and stored patches from the artifacts store, and the
    integration clones of ended runs from the coordinator's disk, now.

    The leading coordinator deletes what no open run uses and nobody published or reused
    within CODEYARD_ARTIFACT_RETENTION_DAYS (default: CODEYARD_EVENT_RETENTION_DAYS), and the
    clone of each run that ended (or no longer exists) longer ago than that; it also does so
    every hour on its own. Prints what was (with --dry-run: would be) deleted.

    Example: [bold]codeyard gc --dry-run[/bold]
    """
    from rich.table import Table
    from rich.text import Text

    from codeyard.follow import ask_coordinator
    from codeyard.schemas import ArtifactsCollected, CollectArtifacts
    from codeyard.schemas.envelope import utc_now

    # a large store takes a while to list and delete: one answer may take minutes
    reply = _on_bus(
        "gc",
        lambda bus: ask_coordinator(
            bus, "gc", CollectArtifacts(dry_run=dry_run), patience=10, timeout=600
        ),
    )
    if json_output:
        _print_reply(reply)
        return
    if not isinstance(reply, ArtifactsCollected):
        _refused(reply)
    verb = "would delete" if reply.dry_run else "deleted"
    now = utc_now()
    if reply.deleted:
        table = Table("object", "bytes", "unused for (days)")
        for found in reply.deleted:
            days = (now - found.modified_at).total_seconds() / 86400
            table.add_row(Text(found.name), str(found.size), f"{days:.1f}")
        console.print(table)
    retention = f"{reply.retention_seconds / 86400:g} days"
    console.print(
        f"{verb} {len(reply.deleted)} objects "
        f"({sum(found.size for found in reply.deleted)} bytes); kept {reply.referenced} that "
        f"open runs use and {reply.recent} used within {retention}",
        markup=False,
        highlight=False,
    )
    if reply.clones:
        table = Table("integration clone", "run", "bytes", "unused for (days)")
        for clone in reply.clones:
            run = f"{clone.run_id} ({clone.run_state or 'no such run'})"
            days = (now - clone.unused_since).total_seconds() / 86400
            table.add_row(Text(clone.path), run, str(clone.size), f"{days:.1f}")
        console.print(table)
    console.print(
        f"{verb} {len(reply.clones)} integration clones "
        f"({sum(clone.size for clone in reply.clones)} bytes); kept {reply.open_clones} of open "
        f"runs and {reply.recent_clones} of runs that ended within {retention}",
        markup=False,
        highlight=False,
    )


@app.command()
def logs(
    run_id: Annotated[str, typer.Argument(help="the run whose events to show")],
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", metavar="", help="keep streaming until the run ends (or Ctrl-C)"
        ),
    ] = False,
    json_output: Annotated[
        bool,
        typer.Option("--json", metavar="", help="one JSON event per line (msgspec), nothing else"),
    ] = False,
) -> None:
    """The run's events from its start, one readable line each: run and task transitions,
    progress, usage, gate decisions, withdrawn work, dead letters.

    --follow stops when the run ends, at once for a run that has ended; if its events that
    remain (they are kept CODEYARD_EVENT_RETENTION_DAYS) no longer reach its end, the last line
    is how it ended, from the run's record. It then exits as `codeyard run` does: 0 when every
    task is merged, 1 when the run failed or was cancelled. Without --follow it exits 0 once
    the events are shown. Exits 1 when there is no such run (--follow: also when the run is
    gone meanwhile, its submission refused), 2 when RUN is not a run id.

    Example: [bold]codeyard logs r1 --follow[/bold]
    """
    import msgspec

    from codeyard.follow import follow_events, is_run_end, log_lines
    from codeyard.report.source import fetch_run, read_run_events
    from codeyard.schemas import RunEvent

    _check_id(run_id)
    ended: list[RunState] = []  # how the run ended, once its end is shown

    def show(event: RunEvent) -> None:
        if is_run_end(event):
            ended.append(event.state)
        if json_output:
            sys.stdout.write(msgspec.json.encode(event).decode() + "\n")
            sys.stdout.flush()
            return
        for line in log_lines(event):
            console.print(line, markup=False, highlight=False)

    async def stream(bus: Bus) -> int:
        run = await fetch_run(bus, run_id)  # an unknown run exits 1 rather than waiting forever
        if follow:
            # an ended run is not waited for, even when its end event has expired
            if await follow_events(bus, run, show):
                err.print(
                    f"the stored events of run {run_id} no longer reach its end (events are "
                    "kept for CODEYARD_EVENT_RETENTION_DAYS, runs for ever): how it ended is "
                    "from the run's record",
                    markup=False,
                    highlight=False,
                )
            return _outcome_exit_code(ended[-1])
        for event in await read_run_events(bus, run_id):
            show(event)
        return 0

    raise typer.Exit(_on_bus("logs", stream))


@app.command()
def workers(
    wait: Annotated[
        float | None,
        # (bounded: `inf` listened for ever)
        typer.Option(
            help="seconds to listen (default: two announcement periods)", min=0.1, max=3600
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Who is connected: every worker that announced itself lately, by role, busy or idle.

    Workers announce themselves every few seconds on cy.presence.ROLE; this listens for --wait
    seconds. One that has not been heard from for three periods is gone and not shown.

    Example: [bold]codeyard workers --wait 10[/bold]
    """
    from codeyard.bus.presence import PRESENCE_PERIOD, listen_for_workers
    from codeyard.progress.render import workers_table
    from codeyard.schemas.envelope import utc_now

    window = wait if wait is not None else 2 * PRESENCE_PERIOD
    found = _on_bus("workers", lambda bus: listen_for_workers(bus, window))
    if window <= PRESENCE_PERIOD:  # (listed, it looked like all there were)
        _warn(
            f"listened {window:g}s, less than the {PRESENCE_PERIOD:g}s between two "
            "announcements of a worker: some may be left out"
        )
    if json_output:
        _print_json(found)
        return
    if not found:
        console.print(f"no workers heard from in {window:g}s")
        return
    console.print(workers_table(found, utc_now()))
    roles: dict[str, list[int]] = {}
    for presence in found:
        roles.setdefault(presence.role, []).append(presence.in_flight)
    console.print(
        "; ".join(
            f"{role}: {len(loads)} ({sum(load > 0 for load in loads)} busy)"
            for role, loads in roles.items()
        ),
        markup=False,
        highlight=False,
    )


@app.command("report")
def report_command(
    run_id: Annotated[str, typer.Argument(help="the run's id, as `codeyard run` printed it")],
    html: Annotated[
        Path | None, typer.Option(dir_okay=False, help="write a self-contained HTML report here")
    ] = None,
    markdown: Annotated[
        Path | None, typer.Option(dir_okay=False, help="write the Markdown report here")
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Report a run: goal, plan as a graph, each task's attempts, feedback, last test output and
    gate decisions, tokens, cost and timings.

    Prints Markdown unless --html or --markdown names a file to write (or --json: the report's
    data).

    Example: [bold]codeyard report r1 --html r1.html[/bold]
    """
    from codeyard.report import build_report, render_html, render_markdown
    from codeyard.report.source import fetch_run, read_run_events
    from codeyard.schemas import Run, RunEvent

    _check_id(run_id)
    # Before NATS is asked: --json printed the data and ignored the files, and one path for
    # both formats was written twice, the HTML lost.
    if json_output and (html or markdown):
        _error("--json prints the report's data: give it alone, or --html / --markdown alone")
        raise typer.Exit(2)
    if html is not None and markdown is not None and html.resolve() == markdown.resolve():
        _error(f"--html and --markdown name the same file, {html}: give each its own")
        raise typer.Exit(2)

    async def fetch(bus: Bus) -> tuple[Run, list[RunEvent]]:
        run = await fetch_run(bus, run_id)
        return run, await read_run_events(bus, run_id)

    report = build_report(*_on_bus("report", fetch))
    if json_output:
        _print_json(report)
        return
    if html is None and markdown is None:
        shown = render_markdown(report)  # (on a terminal, the agents' words show their escapes)
        typer.echo(terminal_safe(shown, lines=True) if sys.stdout.isatty() else shown, nl=False)
        return
    for path, text in ((html, render_html), (markdown, render_markdown)):
        if path is not None:
            try:
                path.write_text(text(report), encoding="utf-8")
            except OSError as exc:
                err.print(f"error: cannot write {path}: {exc}", markup=False)
                raise typer.Exit(1) from None
            console.print(f"wrote {path}", markup=False, highlight=False)


@app.command("rollback")
def rollback_command(
    run_id: Annotated[str, typer.Argument(help="the run whose result branch moves")],
    to: Annotated[
        str, typer.Option("--to", metavar="<task>", help="the task whose commit becomes the tip")
    ],
    repo: Annotated[
        Path | None,
        typer.Option(exists=True, file_okay=False, help="the repository (default: the run's)"),
    ] = None,
) -> None:
    """Reset the branch codeyard/RUN to the commit of task --to, dropping the later tasks.

    Only that branch moves: your current branch and working tree are never touched, and a
    checked-out codeyard/RUN is refused. Without --repo, the coordinator says where the run's
    repository is.

    Example: [bold]codeyard rollback r1 --to models[/bold]
    """
    from codeyard.report.source import fetch_run
    from codeyard.workspace.rollback import RollbackError, rollback

    _check_id(run_id)
    _check_id(to, "task id")  # (before NATS is asked)
    if repo is None:

        async def repository(bus: Bus) -> str:
            return (await fetch_run(bus, run_id)).repo.path

        path = _on_bus("rollback", repository)
        if not path:
            err.print(f"error: run {run_id} is a dry run: it has no repository", markup=False)
            raise typer.Exit(1)
        repo = Path(path)
    try:
        moved = rollback(repo.resolve(), run_id, to)
    except RollbackError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None

    def say(line: str) -> None:  # (commit subjects are the planner's task titles)
        console.print(terminal_safe(line), markup=False, highlight=False)

    if not moved.moved:
        say(f"{moved.branch} already ends at {to} ({moved.new.short}): nothing to drop")
        return
    say(f"{moved.branch}: {moved.old.short} -> {moved.new.short} ({to}: {moved.new.subject})")
    say(f"dropped {len(moved.dropped)} commit{'' if len(moved.dropped) == 1 else 's'}:")
    for commit in moved.dropped:
        say(f"  {commit.short} {commit.subject}")


def _answer(request: Envelope, verb: str, json_output: bool = False) -> None:
    from codeyard.schemas import Accepted

    reply = _ask(verb, request)
    if json_output:
        _print_reply(reply)
        return
    if not isinstance(reply, Accepted):
        _refused(reply)
    approved = verb == "approve"
    answered = f"{'approved' if approved else 'denied'} {getattr(request, 'approval_id', '')}"
    run = f" (run {reply.run_id})" if reply.run_id else ""
    outcome = _answer_outcome(reply.detail, approved)
    console.print(f"{answered}{run}: {outcome}", markup=False, highlight=False)


# What an answer did, by the event the coordinator applied: its reply names the event's class.
ANSWER_OUTCOMES = {
    "PlanApproved": "the plan is approved, the run goes on",
    "PlanRejected": "the plan is rejected, the run is cancelled",
    "ResumeRun": "the budget's limits are lifted, the run goes on",
    "Cancel": "the run is cancelled (over budget)",
}


def _answer_outcome(detail: str, approved: bool) -> str:
    if detail == "ResumeTask":
        return "the task goes on" if approved else "the task fails"
    return ANSWER_OUTCOMES.get(detail, detail)


def _ask(verb: str, request: Envelope) -> ControlReply:
    """One control request to the running coordinator; exits 1 when none answers, 2 (before
    connecting) when the coordinator would refuse it as malformed: a --comment too long, say."""
    from codeyard.follow import ask_coordinator
    from codeyard.schemas import MessageError, decode, encode

    try:
        decode(encode(request), type(request))
    except MessageError as exc:
        _error(f"not sent: {_in_words(str(exc))}")
        raise typer.Exit(2) from None
    return _on_bus(verb, lambda bus: ask_coordinator(bus, verb, request, patience=10))


def _on_bus(name: str, work: Callable[[Bus], Awaitable[T]]) -> T:
    """`work` on a connection to the running system; exits 1 when it is not there or the run
    is unknown, 2 when a run id chosen is taken."""
    from codeyard.bus.permissions import CTL
    from codeyard.follow import RunIdTaken, RunRefused
    from codeyard.report.source import UnknownRun

    settings = Settings()
    url = settings.server_url()

    async def connected() -> T:
        bus = await Bus.connect(
            url,
            name=f"codeyard-{name}",
            credentials=settings.credentials(CTL),
            connect_attempts=4,
            quiet=True,  # NATS unreachable: one line says so, not one per attempt
        )
        try:
            return await work(bus)
        finally:
            await bus.close()

    try:
        return asyncio.run(connected())
    except RunIdTaken as exc:  # bad input, as in `codeyard run`
        _error(str(exc))
        raise typer.Exit(2) from None
    except (RunRefused, UnknownRun) as exc:
        err.print(f"error: {_in_words(str(exc))}", markup=False)
        raise typer.Exit(1) from None
    except nats.errors.TimeoutError as exc:  # an OSError too, but NATS was reached
        _nats_too_slow(exc)
        raise typer.Exit(1) from None
    except (OSError, nats.errors.Error) as exc:
        _unreachable(url, exc)


async def _warn_of_unserved_roles(bus: Bus, submit: SubmitRun, follower: RunFollower) -> None:
    """Warn of the roles the run needs that no worker serves: its tasks would wait for one,
    with nothing said, until `--timeout` (a reviewer whose plugin worker was never started).
    Only for a run there is (the follower heard of it): a refused submission has no work to
    wait."""
    from codeyard.bus.presence import PRESENCE_PERIOD, unheard_roles
    from codeyard.coordinator.engine import reviewers_of

    if submit.plan is None:  # (the planner's tasks may name others: those show once planned)
        roles = {"planner", "coder", "tester", *submit.reviewers}
    else:
        roles = {"coder", "tester"}
        for task in submit.plan:
            roles.update(reviewers_of(task, submit.reviewers))
    window = PRESENCE_PERIOD + 1.0
    with contextlib.suppress(nats.errors.Error, OSError):  # (following reports those)
        unheard = await unheard_roles(bus, roles, window)
        if unheard and follower.heard_from_run:
            roles_named = ", ".join(unheard)
            follower.warn(
                f"no worker of {roles_named} announced itself in {window:g}s (`codeyard "
                'workers`): unless one serves it without announcing (see the README, "From '
                "another language\"), the run's work for it waits until one starts (a reviewer "
                "plugin: `codeyard worker review --name NAME`, or `codeyard up --reviewer NAME`)"
            )


def _reviewer_role(name: str) -> str:
    """A `--reviewer` of `codeyard run` as the role it names: a plugin's name alone (`static`,
    as `up --reviewer` takes it) is its role (`review.static`)."""
    from codeyard.schemas.model import ReviewerName

    role = f"review.{name}"
    plugin = name != "review" and not name.startswith("review.")
    return role if plugin and re.fullmatch(_pattern_of(ReviewerName), role) else name


def _not_a_work_tree(repo: Path) -> str | None:
    """Why `repo` cannot be a run's repository (the top of a git work tree with a commit),
    saying what to give instead; None when it can."""
    from codeyard.workspace.git import GitError, git

    if (repo / ".git").exists():
        try:
            git(repo, "rev-parse", "--is-inside-work-tree")
        except GitError:  # (a repository of another user's, say): the coordinator's git decides
            return None
        try:
            git(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
        except GitError:  # (submitted, it failed at the coordinator, leaving a run directory)
            return f"{repo} has no commit yet: a run starts from the last commit; commit first"
        return None
    try:
        if git(repo, "rev-parse", "--is-bare-repository").strip() == "true":
            return f"{repo} is a bare repository: give a clone of it (with a working tree)"
        if git(repo, "rev-parse", "--is-inside-git-dir").strip() == "true":
            metadata = Path(git(repo, "rev-parse", "--path-format=absolute", "--git-dir").strip())
            # (a git dir kept apart from its work tree does not say where that is)
            given = f", --repo {metadata.parent}" if metadata.name == ".git" else ""
            return f"{repo} is inside a repository's git directory: give its work tree{given}"
        top = git(repo, "rev-parse", "--show-toplevel").strip()
    except (GitError, OSError):
        return f"{repo} is not a git repository (no .git)"
    return f"{repo} is inside the git repository {top}: give --repo {top}"


SHOWN_CHANGES = 5  # uncommitted paths named in the warning; the rest are counted


def _uncommitted_changes(repo: Path) -> str | None:
    """What a run of `repo` leaves out, if anything: the coordinator clones the repository, so
    the run starts from its last commit and changes not committed (untracked files included)
    never reach it. None when there are none, or git cannot tell (no commit yet: submitting
    then says what is wrong)."""
    from codeyard.workspace.git import GitError, git

    try:
        # porcelain: `XY path`, paths relative to the repository's top
        changed = [line[3:] for line in git(repo, "status", "--porcelain").splitlines() if line]
        if not changed:
            return None
        head = git(repo, "rev-parse", "--short", "HEAD").strip()
    except GitError:
        return None
    named = ", ".join(changed[:SHOWN_CHANGES])
    more = len(changed) - SHOWN_CHANGES
    rest = f" and {more} more" if more > 0 else ""
    return (
        f"uncommitted changes in {repo} are not part of the run, which starts from the last "
        f"commit ({head}): {named}{rest}; commit them to include them"
    )


def _invalid_plan(tasks: list[TaskSpec]) -> str | None:
    """Why the coordinator would refuse the plan `tasks` (no tasks, a duplicate id, a dependency
    on itself or on no task of the plan, a cycle), in the words of its refusal; None if it
    would not. The same check as the coordinator's, made before anything is submitted."""
    from codeyard.coordinator.graph import InvalidPlan, TaskGraph
    from codeyard.follow import refusal
    from codeyard.schemas import ControlError

    try:
        TaskGraph(tasks)
    except InvalidPlan as exc:
        return refusal(ControlError(error=str(exc), field="$.plan"))
    return None


def _no_user_on_ups_server(settings: Settings, role: str) -> str | None:
    """Why a reviewer plugin's worker cannot log in to `codeyard up`'s server, if so: up made
    no user for `role` (only `--reviewer NAME` and `--reviewer-user NAME` do)."""
    from codeyard.bus.credentials import credentials_file
    from codeyard.bus.permissions import principal_of_role

    directory = settings.credentials_dir()
    if settings.nats_url or settings.nats_user or directory is None or not directory.is_dir():
        return None  # not up's server, or no up ran here: connecting says what is wrong
    if credentials_file(directory, principal_of_role(role)).exists():
        return None
    name = role.removeprefix("review.")
    return (
        f"codeyard up's server has no NATS user for {role} (none in {directory}): restart "
        f"`codeyard up` with --reviewer-user {name} to run this worker yourself, or with "
        f"--reviewer {name} to have up run it"
    )


def _not_a_builtin_role(role: str) -> str | None:
    """Why `codeyard worker ROLE` (without --plugin or --name) cannot serve `role`, if so."""
    from codeyard.bus.subjects import BUILTIN_ROLES, UnknownRole, check_role

    if role in BUILTIN_ROLES:
        return None
    try:
        check_role(role)
    except UnknownRole:
        return (
            f"unknown role {role!r}: expected {', '.join(BUILTIN_ROLES[:-1])} or "
            f"{BUILTIN_ROLES[-1]} (a reviewer plugin: codeyard worker review --name NAME)"
        )
    plugin_name = role.removeprefix("review.")
    return f"{role} is a reviewer plugin's role: codeyard worker review --name {plugin_name}"


def _check_id(value: str, what: str = "run id") -> None:
    """Exits 2 unless `value` is an id: an empty run id would ask for the status of every
    run (and read the first); others the coordinator would refuse as not found."""

    from codeyard.schemas.envelope import ID_PATTERN

    if re.fullmatch(ID_PATTERN, value) is None:
        article = "an" if what[0] in "aeiou" else "a"
        _error(f"{value!r} is not {article} {what}: {article} {what} is {ID_IN_WORDS}")
        raise typer.Exit(2)


def _bad_run_input(
    goal: str, timeout: float, run_id: str | None, reviewers: list[str], test_command: str | None
) -> str | None:
    """What is wrong with `codeyard run`'s arguments, if anything: checked before connecting,
    where a bad run id would come back as a refusal or as NATS being unreachable."""

    from codeyard.schemas.envelope import ID_PATTERN
    from codeyard.schemas.model import LONG_TEXT_CHARS, TEST_COMMAND_CHARS, ReviewerName

    if not goal.strip():
        return 'the goal is empty: say what to build, e.g. codeyard run "add a /health endpoint"'
    if len(goal) > LONG_TEXT_CHARS:
        return f"the goal is {len(goal):,} characters long; at most {LONG_TEXT_CHARS:,}"
    if not timeout > 0:  # not `<= 0`: NaN passes that
        return f"--timeout must be more than 0 seconds, not {timeout:g}"
    if run_id is not None and re.fullmatch(ID_PATTERN, run_id) is None:
        return f"--run-id {run_id!r}: a run id is {ID_IN_WORDS}"
    for name in reviewers:
        if re.fullmatch(_pattern_of(ReviewerName), name) is None:
            return f"--reviewer {name!r}: a reviewer is {REVIEWER_IN_WORDS}"
    line = None if test_command is None else test_command.strip()
    # Empty would run nothing and pass every test; leaving the option out detects one.
    if line == "":
        return (
            "--test-command is empty: give the shell line that runs the tests, e.g. "
            "--test-command 'make test', or leave it out to detect one"
        )
    if line is not None and len(line) > TEST_COMMAND_CHARS:
        return f"--test-command is {len(line):,} characters long; at most {TEST_COMMAND_CHARS:,}"
    return None


# What the patterns of the wire schema accept, in words: msgspec's errors quote the regex.
ID_IN_WORDS = "1 to 64 letters, digits, _ and -, starting with a letter or digit"
REVIEWER_IN_WORDS = (
    "`review` (the LLM reviewer) or `review.NAME` (a plugin), NAME being 1 to 32 lowercase "
    "letters, digits, _ and -, starting with a letter or digit"
)


def _pattern_of(constrained: object) -> str:
    """The regex of an `Annotated[str, msgspec.Meta(pattern=...)]` schema type."""
    import typing

    import msgspec

    [pattern] = [
        meta.pattern for meta in typing.get_args(constrained)[1:] if isinstance(meta, msgspec.Meta)
    ]
    assert pattern is not None
    return pattern


def _in_words(message: str) -> str:
    """`message` (a decoding error: ours, or one the coordinator sent back) with each regex of
    the wire schema it quotes said in words instead."""
    from codeyard.schemas.envelope import Id, OptionalId
    from codeyard.schemas.model import ReviewerName

    in_words = (
        (Id, f"an id of {ID_IN_WORDS}"),
        (OptionalId, f"an id of {ID_IN_WORDS}, or nothing"),
        (ReviewerName, f"a reviewer: {REVIEWER_IN_WORDS}"),
    )
    for constrained, words in in_words:
        # msgspec quotes a pattern as Python's repr of it: Expected `str` matching regex '^...'
        quoted = f"Expected `str` matching regex {_pattern_of(constrained)!r}"
        message = message.replace(quoted, f"Expected {words}")
    return message


def _cannot_write(directory: Path, exc: OSError) -> NoReturn:
    """A directory a command was to create and fill could not be: exits 1, like a report that
    cannot be written. Names the file at fault when it is not `directory` itself."""
    at_fault = f" ({exc.filename})" if exc.filename and Path(exc.filename) != directory else ""
    if isinstance(exc, FileExistsError) and not at_fault:
        reason = "it exists and is not a directory"
    else:
        reason = exc.strerror or str(exc)
    _error(f"cannot write to {directory}: {reason}{at_fault}")
    raise typer.Exit(1)


def _unreachable(url: str, exc: BaseException) -> NoReturn:
    from codeyard.bus.connection import LOGIN_HINT, LoginRefused
    from codeyard.bus.credentials import shown_url
    from codeyard.launch import nats_error_text

    if isinstance(exc, BrokenPipeError):  # our own output's reader left (`| head`): NATS is fine
        # what Python's docs advise: the interpreter's last flush of stdout would fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(1) from None
    if isinstance(exc, LoginRefused):  # there, but not for us: a configuration error
        _error(f"{exc}. {LOGIN_HINT}")
        raise typer.Exit(2) from None
    hint = "is `codeyard up` running?"
    settings = Settings()
    if not settings.nats_url:  # a terminal other than up's, without its settings, say
        hint += (
            f" Without NATS_URL, codeyard looks for up's server on port CODEYARD_NATS_PORT "
            f"({settings.nats_port}): set it as up has it"
        )
    _error(f"cannot reach NATS at {shown_url(url)}: {nats_error_text(exc)} ({hint})")
    raise typer.Exit(1) from None


def _nats_too_slow(exc: nats.errors.TimeoutError) -> None:
    """A request to NATS (JetStream: reading events, subscribing) that got no answer in time,
    once connected: the server is there, busy or restarting."""
    _error(f"NATS did not answer in time ({exc!r}): it may be busy or restarting; try again")


def _still_running(run_id: str) -> None:
    """What to do about a run `codeyard run` stopped following: it goes on without it."""
    err.print(
        f"run {run_id} keeps going: follow it with `codeyard logs -f {run_id}`, "
        f"stop it with `codeyard cancel {run_id}`",
        markup=False,
        highlight=False,
    )


def _error(message: str) -> None:
    """`message` on stderr after a red `error:`, as written: brackets in a path or an
    exception's text (a pattern such as [a-z0-9]) are not taken for markup."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)


def _warn(message: str) -> None:
    """`message` on stderr after a yellow `warning:`, as written (see `_error`)."""
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)


def _refused(reply: ControlReply) -> NoReturn:
    from codeyard.follow import refusal
    from codeyard.schemas import ControlError

    error = refusal(reply) if isinstance(reply, ControlError) else f"unexpected reply {reply!r}"
    err.print(f"error: {_in_words(error)}", markup=False)
    raise typer.Exit(1)


def _print_json(value: object) -> None:
    """`value` as one line of JSON on stdout, without rich's markup or wrapping."""
    import msgspec

    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
    sys.stdout.flush()


def _print_reply(reply: ControlReply) -> None:
    """--json: the coordinator's reply as it came; a refusal still exits 1."""
    from codeyard.schemas import ControlError

    _print_json(reply)
    if isinstance(reply, ControlError):
        raise typer.Exit(1)


def _user() -> str:
    """Who answers: $USER, else $LOGNAME, else the account's name (a container often sets
    neither), else "someone"."""
    import pwd

    named = os.environ.get("USER") or os.environ.get("LOGNAME")
    if named:
        return named
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid with no account (a container run as --user 12345)
        return "someone"


def _serve(
    service: Coroutine[Any, Any, None], bad_configuration: tuple[type[Exception], ...] = ()
) -> None:
    """Run a long-lived service with logs on stderr: bad configuration exits 2, an unreachable
    NATS exits 1. A NATS user name that cannot name an inbox (`UnknownPrincipal`, found as the
    service connects) is bad configuration for every service."""
    from codeyard.bus.connection import LoginRefused
    from codeyard.bus.credentials import shown_url
    from codeyard.bus.permissions import UnknownPrincipal
    from codeyard.launch import BadConfiguration

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from codeyard.observability.log_format import configure_logging
    from codeyard.service_runtime import run_service, tune_gc_for_service

    settings = Settings()
    configure_logging(settings.log_format)  # CODEYARD_LOG_FORMAT: text or json
    tune_gc_for_service()
    refused: tuple[type[Exception], ...] = (UnknownPrincipal, *bad_configuration)
    try:
        run_service(service, settings.event_loop, settings.heartbeat_file)
    except refused as exc:
        problems = exc.problems if isinstance(exc, BadConfiguration) else (str(exc),)
        for problem in problems:  # e.g. one line per variable refused, as every command says
            err.print(f"error: {problem}", markup=False, highlight=False)
        raise typer.Exit(BAD_CONFIGURATION) from None  # `up` then does not restart it
    except LoginRefused as exc:  # (as every command says it: not "cannot reach NATS")
        _unreachable(settings.server_url(), exc)
    except nats.js.errors.NotFoundError as exc:
        if isinstance(exc, nats.js.errors.KeyNotFoundError | nats.js.errors.ObjectNotFoundError):
            raise
        # NATS answered: what is missing is what the coordinator creates as it starts.
        _error(
            f"NATS at {shown_url(settings.server_url())} has no codeyard streams and buckets yet "
            f"({exc!r}): start the coordinator (or `codeyard up`) first, which creates them"
        )
        raise typer.Exit(1) from None
    except (OSError, nats.errors.Error) as exc:
        _unreachable(settings.server_url(), exc)


COMMAND_LINE = re.compile(r"(\[bold\])?(codeyard|git) ")


def _reflowed_paragraph(paragraph: str) -> str:
    """The paragraph's lines joined, but for command lines (examples, what to run): those stay
    lines of their own, to be copied whole."""
    lines: list[str] = []
    for line in (line.strip() for line in paragraph.splitlines()):
        if lines and not COMMAND_LINE.match(line) and not COMMAND_LINE.match(lines[-1]):
            lines[-1] += f" {line}"
        else:
            lines.append(line)
    return "\n".join(lines)


def _reflowed(typer_app: typer.Typer) -> typer.Typer:
    """`typer_app` with each command's help (its docstring) as paragraphs without line breaks:
    rich markup mode keeps a docstring's, and at 80 columns each line broke again part-way."""
    for command in typer_app.registered_commands:
        doc = command.help or inspect.getdoc(command.callback) or ""
        command.help = "\n\n".join(_reflowed_paragraph(p) for p in doc.split("\n\n"))
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _reflowed(group.typer_instance)
    return typer_app


def main() -> None:
    from pydantic import ValidationError

    from codeyard.bus.credentials import CredentialsUnreadable
    from codeyard.config import invalid_settings

    with contextlib.suppress(KeyboardInterrupt):
        try:
            _reflowed(app)()
        except ValidationError as exc:
            # Commands read their settings where they need them; a bad environment variable
            # surfaces here from any of them, as lines naming it rather than a traceback.
            problems = invalid_settings(exc)
            if problems is None:
                raise
            for problem in problems:
                err.print(f"error: {problem}", markup=False, highlight=False)
            raise SystemExit(BAD_CONFIGURATION) from None
        except CredentialsUnreadable as exc:
            err.print(f"error: {exc}", markup=False, highlight=False)
            raise SystemExit(BAD_CONFIGURATION) from None
