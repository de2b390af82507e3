"""Least privilege on a real nats-server started with the generated configuration: every
principal can do its job and is refused the rest (a coder cannot approve)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import msgspec
import nats.errors
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from prometheus_client import REGISTRY

from codeyard.agents.policy import load_policy
from codeyard.agents.safety_gate import SafetyGate
from codeyard.bus import Bus, EmbeddedNats, PullWorker
from codeyard.bus.connection import LoginRefused
from codeyard.bus.embedded import find_nats_server, free_port
from codeyard.bus.permissions import consumer_create_subject, grants_for, through
from codeyard.bus.pipeline import PublishError
from codeyard.bus.run_ends import HEADER_GET, EndedRuns
from codeyard.bus.subjects import (
    APPROVALS_BUCKET,
    ARTIFACTS_BUCKET,
    DEAD_LETTER_RUN,
    GATE_CHECK,
    RESULT_STREAM,
    RUNS_BUCKET,
    WORK_STREAM,
    consumer_name,
    ctl_subject,
    events_subject,
    result_subject,
    work_subject,
)
from codeyard.bus.topology import ensure_role_consumer
from codeyard.coordinator.service import Coordinator
from codeyard.deploy.nats_config import (
    Deployment,
    ServerOptions,
    render_config,
    write_deployment,
)
from codeyard.observability.consumer_gauges import ConsumerGauges
from codeyard.schemas import (
    Accepted,
    ActionCheck,
    ApprovalList,
    Approve,
    CancelRun,
    CodeRequest,
    CodeResult,
    DeadLetter,
    GateDecision,
    ListApprovals,
    Patch,
    PendingApproval,
    Result,
    ReviewRequest,
    ReviewResult,
    RunState,
    RunStateChanged,
    SubmitRun,
    TaskSpec,
    TaskState,
    TestResult,
    WorkItem,
)
from codeyard.workspace.patch_store import INLINE_PATCH_CHARS, inline, offload
from codeyard.workspace.snapshots import artifact_store
from tests.bus.test_worker import serving, until
from tests.conftest import TEST_TOPOLOGY
from tests.coordinator.harness import ask, run_events, running_coordinator, status, wait_for_task

REFUSAL_LOGGER = "codeyard.bus.connection"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedNats, Deployment]]:
    """A nats-server of its own, loopback only, with the users `codeyard deploy` generates."""
    directory = tmp_path_factory.mktemp("secured")
    port = free_port()
    options = ServerOptions(port=port, store_dir=directory / "jetstream")
    deployment = write_deployment(directory, reviewers=("security",), options=options)
    with EmbeddedNats(directory, port=port, config_file=deployment.config_file) as server:
        yield server, deployment


@pytest.fixture
async def connect(
    secured: tuple[EmbeddedNats, Deployment], caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Callable[[str], Awaitable[Bus]]]:
    """Connects as a principal. Only the coder misbehaves in these tests: any other principal
    refused something means its grants miss what its job needs."""
    server, deployment = secured
    opened: list[Bus] = []

    async def as_principal(principal: str) -> Bus:
        bus = await Bus.connect(
            server.url,
            name=f"test-{principal}",
            credentials=deployment.credentials(principal),
            topology=TEST_TOPOLOGY,
        )
        opened.append(bus)
        return bus

    setup = await as_principal("coordinator")
    await setup.setup(roles=["planner", "coder", "tester", "review"])
    yield as_principal
    for bus in opened:
        await bus.close()
    refused = [r.getMessage() for r in caplog.records if "NATS refused" in r.getMessage()]
    assert all(message.startswith("NATS refused coder:") for message in refused), refused


@pytest.fixture
async def coordinator(connect: Callable[[str], Awaitable[Bus]]) -> AsyncIterator[Coordinator]:
    """The real coordinator, connected as the coordinator user."""
    coordinator = Coordinator(await connect("coordinator"), name="coord-secured", capacity=4)
    async with running_coordinator(coordinator):
        yield coordinator


async def refusal(caplog: pytest.LogCaptureFixture, subject: str, timeout: float = 5.0) -> str:
    """The server's permissions violation naming `subject`, as the client reported it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for record in caplog.records:
            message = record.getMessage().lower()  # nats-py lowercases the server's words
            if "permissions violation" in message and f'"{subject.lower()}"' in message:
                return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"no permissions violation for {subject} was reported")


async def test_a_coder_cannot_write_the_artifacts_store_and_readers_get_what_is_stored(
    connect: Callable[[str], Awaitable[Bus]], caplog: pytest.LogCaptureFixture
) -> None:
    """A writer of the store could wipe it with a `Nats-Rollup` header: the coordinator stores
    large patches, the coder sends them inline."""
    caplog.set_level(logging.ERROR, logger=REFUSAL_LOGGER)
    coordinator, coder = await connect("coordinator"), await connect("coder")
    big = Patch(text="+x\n" * (INLINE_PATCH_CHARS // 3 + 1))
    stored = await offload(await artifact_store(coordinator.js), big)
    assert stored.object_name  # it went by reference

    for subject in (
        f"$O.{ARTIFACTS_BUCKET}.M.rogue",
        through(f"$JS.API.STREAM.PURGE.OBJ_{ARTIFACTS_BUCKET}", coder.js_api),
    ):
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await coder.nc.request(subject, b"{}", timeout=1)
        await refusal(caplog, subject)
    for role in ("coder", "review"):  # the roles after the coder read it back whole
        reader = await connect(role)
        assert (await inline(await artifact_store(reader.js), stored)).text == big.text


def plan_approval_run(run_id: str) -> SubmitRun:
    return SubmitRun(run_id=run_id, goal="g", plan=[TaskSpec(id="a", title="a")], approve_plan=True)


async def test_a_coder_cannot_approve_and_ctl_can(
    connect: Callable[[str], Awaitable[Bus]],
    coordinator: Coordinator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger=REFUSAL_LOGGER)
    ctl, coder = await connect("ctl"), await connect("coder")
    submitted = await ask(ctl, "submit", plan_approval_run("perm-approve"))
    assert isinstance(submitted, Accepted), submitted
    listed = await ask(ctl, "approvals", ListApprovals())
    assert isinstance(listed, ApprovalList)
    [pending] = [a for a in listed.approvals if a.run_id == "perm-approve"]

    with pytest.raises(nats.errors.TimeoutError):  # the server drops it: no one ever answers
        await coder.request(
            ctl_subject("approve"), Approve(approval_id=pending.approval_id), Accepted, 1.0
        )
    message = await refusal(caplog, "cy.ctl.approve")
    assert "publish" in message.lower()
    assert (await status(ctl, "perm-approve")).state is RunState.PLAN_APPROVAL

    approved = await ask(ctl, "approve", Approve(approval_id=pending.approval_id, by="ana"))
    assert isinstance(approved, Accepted), approved
    assert (await status(ctl, "perm-approve")).state is RunState.EXECUTING


async def test_credentials_in_the_url_log_in_with_that_user_s_inbox(
    secured: tuple[EmbeddedNats, Deployment], coordinator: Coordinator
) -> None:
    """`NATS_URL=nats://ctl:PASSWORD@host`: nats-py logged in with them, but the inbox prefix
    was not the user's, so the server refused every reply (`status` waited 12 s for nothing,
    `run` submitted a run whose answer it never heard)."""
    server, deployment = secured
    login = deployment.credentials("ctl")
    url = server.url.replace("nats://", f"nats://{login.user}:{login.password}@")
    ctl = await Bus.connect(url, name="test-url-credentials", topology=TEST_TOPOLOGY)
    try:
        answered = await ask(ctl, "approvals", ListApprovals())
    finally:
        await ctl.close()
    assert isinstance(answered, ApprovalList), answered

    wrong = server.url.replace("nats://", "nats://ctl:not-the-password@")
    with pytest.raises(LoginRefused) as refused:
        await Bus.connect(wrong, connect_attempts=1, quiet=True)
    assert "not-the-password" not in str(refused.value)
    assert "nats://ctl:***@127.0.0.1" in str(refused.value)
    assert "refused the login as 'ctl'" in str(refused.value)


async def test_a_coder_does_its_job_through_the_real_coordinator(
    connect: Callable[[str], Awaitable[Bus]], coordinator: Coordinator
) -> None:
    """Pull from its consumer, heartbeat, publish its result (with a publish ack), ack."""
    ctl, coder = await connect("ctl"), await connect("coder")
    await ask(
        ctl, "submit", SubmitRun(run_id="perm-job", goal="g", plan=[TaskSpec(id="a", title="a")])
    )
    handled: list[WorkItem] = []

    async def answer(item: WorkItem) -> Result:
        handled.append(item)
        await asyncio.sleep(TEST_TOPOLOGY.ack_wait / 2)  # long enough for an in-progress ack
        return CodeResult(patch=Patch(text=""), summary="done")

    stop = asyncio.Event()
    worker = PullWorker(coder, "coder", answer)
    running = asyncio.create_task(worker.run(stop, grace=2))
    try:
        for _ in range(100):
            task = (await status(ctl, "perm-job")).tasks["a"]
            if task.state is TaskState.TESTING:
                break
            await asyncio.sleep(0.1)
        assert task.state is TaskState.TESTING, task.state  # the coordinator got the result
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
    assert ("perm-job", "a") in [(item.run_id, item.task_id) for item in handled]
    assert worker.stats.handled == len(handled)  # earlier tests' coding work too
    coordinator_bus = coordinator.bus
    work = await coordinator_bus.js.stream_info(WORK_STREAM, subjects_filter=work_subject("coder"))
    assert not (work.state.subjects or {}).get(work_subject("coder"))  # acked: gone


async def test_a_coder_cannot_publish_another_roles_result(
    connect: Callable[[str], Awaitable[Bus]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=REFUSAL_LOGGER)
    coder = await connect("coder")
    forged = TestResult(run_id="perm-forge", task_id="a", attempt=1, passed=True)
    with pytest.raises((TimeoutError, PublishError)):
        await coder.publish(result_subject("tester"), forged, timeout=1.0)
    await refusal(caplog, "cy.result.tester")
    ack = await coder.publish(result_subject("coder"), CodeResult(patch=Patch(text="")))
    assert ack.seq > 0  # its own subject is fine


async def test_a_coder_writes_no_events_and_the_coordinator_files_its_dead_letters(
    connect: Callable[[str], Awaitable[Bus]],
    coordinator: Coordinator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker that could write events would forge any run's: here its end, which `codeyard
    run` would believe. Work it cannot decode it hands to the coordinator instead, which files
    the dead letter under the coder's subject and consumer."""
    caplog.set_level(logging.ERROR, logger=REFUSAL_LOGGER)
    ctl, coder = await connect("ctl"), await connect("coder")
    forged = RunStateChanged(run_id="perm-forged", state=RunState.DONE)
    with pytest.raises((TimeoutError, PublishError)):
        await coder.publish(events_subject("perm-forged"), forged, timeout=1.0)
    await refusal(caplog, "cy.events.perm-forged")

    undecodable = b'{"type":"CodeRequest","marker":"perm-undecodable"}'
    await coordinator.bus.js.publish(work_subject("coder"), undecodable)

    async def answer(item: WorkItem) -> Result:  # earlier tests' work, if any is left
        return CodeResult(patch=Patch(text=""))

    async with serving(PullWorker(coder, "coder", answer)) as worker:
        await until(lambda: worker.stats.dead_lettered == 1)
    for _ in range(100):
        events = await run_events(ctl, DEAD_LETTER_RUN)
        filed = [e for e in events if isinstance(e, DeadLetter) and "perm-undecodable" in e.payload]
        if filed:
            break
        await asyncio.sleep(0.1)
    [letter] = filed
    assert (letter.subject, letter.consumer) == (work_subject("coder"), consumer_name("coder"))
    assert letter.payload_bytes == len(undecodable)


async def test_a_coder_cannot_read_other_roles_work_nor_replies(
    connect: Callable[[str], Awaitable[Bus]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=REFUSAL_LOGGER)
    coordinator, coder = await connect("coordinator"), await connect("coder")
    seen: list[Msg] = []

    async def spy(msg: Msg) -> None:
        seen.append(msg)

    for subject in ("cy.work.tester", "cy.work.>", "_INBOX.tester.>", "_INBOX.>", "cy.ctl.>"):
        await coder.nc.subscribe(subject, cb=spy)
        await refusal(caplog, subject)
    # pulling from the tester's durable consumer is a publish the server refuses too
    await coder.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{WORK_STREAM}.tester", b"{}")
    await refusal(caplog, f"$JS.API.CONSUMER.MSG.NEXT.{WORK_STREAM}.tester")

    item = CodeRequest(run_id="perm-spy", task_id="a", goal="g", task=TaskSpec(id="a", title="a"))
    await coordinator.publish(work_subject("tester"), item)
    await coordinator.nc.request(
        f"$JS.API.STREAM.INFO.{WORK_STREAM}", b"", timeout=5
    )  # a reply into the coordinator's inbox
    await asyncio.sleep(0.3)
    assert seen == []


async def test_workers_do_not_create_topology(
    connect: Callable[[str], Awaitable[Bus]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=REFUSAL_LOGGER)
    coder = await connect("coder")
    assert not coder.may_publish(f"$JS.API.STREAM.CREATE.{WORK_STREAM}")
    config = b'{"name": "CY_ROGUE", "subjects": ["rogue.>"]}'
    with pytest.raises(nats.errors.TimeoutError):
        await coder.nc.request("$JS.API.STREAM.CREATE.CY_ROGUE", config, timeout=1.0)
    await refusal(caplog, "$JS.API.STREAM.CREATE.CY_ROGUE")


async def test_the_gate_serves_checks_and_records_approvals(
    connect: Callable[[str], Awaitable[Bus]],
) -> None:
    gate, tester = await connect("gate"), await connect("tester")
    await SafetyGate(gate, load_policy(None)).serve()
    await gate.sync()  # the server has the subscription before the tester asks
    check = ActionCheck(
        run_id="perm-gate",
        task_id="t1",
        attempt=1,
        action="install_package",
        detail="pip install x",
    )
    decision = await tester.request(GATE_CHECK, check, GateDecision, timeout=5)
    assert decision.decision == "needs_approval"
    coordinator = await connect("coordinator")
    approvals = await coordinator.store(APPROVALS_BUCKET, PendingApproval)
    recorded = await approvals.get(decision.approval_id)
    assert recorded is not None
    assert recorded.value.run_id == "perm-gate"
    await approvals.delete(decision.approval_id)


async def test_a_plugin_reviewer_serves_the_consumer_made_for_it_but_makes_none(
    connect: Callable[[str], Awaitable[Bus]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Creating a consumer would let it choose where the server pushes work: a plugin is
    given none to create, the coordinator makes its consumer."""
    caplog.set_level(logging.ERROR, logger=REFUSAL_LOGGER)
    coordinator, security = await connect("coordinator"), await connect("review-security")
    create = consumer_create_subject(
        WORK_STREAM, "review-security", work_subject("review.security")
    )
    assert not security.may_publish(through(create, security.js_api))
    await ensure_role_consumer(coordinator.js, "review.security", TEST_TOPOLOGY)
    item = ReviewRequest(
        run_id="perm-plugin",
        task_id="a",
        task=TaskSpec(id="a", title="a"),
        patch=Patch(text=""),
        reviewer="review.security",
    )
    await coordinator.publish(work_subject("review.security"), item)
    given: list[WorkItem] = []

    async def answer(item: WorkItem) -> Result:
        given.append(item)
        return ReviewResult(approved=True)

    async with serving(PullWorker(security, "review.security", answer)):
        await until(lambda: bool(given))
    assert [(i.run_id, i.task_id) for i in given] == [("perm-plugin", "a")]
    forged = through(
        consumer_create_subject(WORK_STREAM, "rogue", work_subject("review.security")),
        security.js_api,
    )
    with pytest.raises(nats.errors.TimeoutError):
        await security.nc.request(forged, b"{}", timeout=1)
    await refusal(caplog, forged)


async def test_what_jetstream_answers_a_worker_stays_in_the_worker_s_account(
    connect: Callable[[str], Awaitable[Bus]], coordinator: Coordinator
) -> None:
    """A pull or a direct get is answered on the reply subject its sender names. Named
    `$KV.cy_runs.<run>`, `cy.ctl.approve`, ... it would have the server publish stored bytes
    (work items, objects) there, which no permission forbids: in the worker's own account,
    the answer reaches no service."""
    ctl, coder = await connect("ctl"), await connect("coder")
    await ask(
        ctl, "submit", SubmitRun(run_id="perm-replay", goal="g", plan=[TaskSpec(id="a", title="a")])
    )
    await wait_for_task(ctl, "perm-replay", "a", TaskState.CODING)  # its work item is queued
    services = await connect("coordinator")
    store = await artifact_store(services.js)
    planted = await store.put("perm-replay-bytes", b'{"type": "Approve", "approval_id": "x"}')
    runs = await services.js.key_value(RUNS_BUCKET)
    before = (await runs.get("perm-replay")).revision
    results = (await services.js.stream_info(RESULT_STREAM)).state.last_seq
    heard: list[Msg] = []

    async def spy(msg: Msg) -> None:
        heard.append(msg)

    targets = (f"$KV.{RUNS_BUCKET}.perm-replay", ctl_subject("approve"), result_subject("tester"))
    for target in targets:
        await services.nc.subscribe(target, cb=spy)
    await services.sync()
    pull = through(f"$JS.API.CONSUMER.MSG.NEXT.{WORK_STREAM}.coder", coder.js_api)
    chunk = f"$O.{ARTIFACTS_BUCKET}.C.{planted.nuid}"
    get = through(f"$JS.API.DIRECT.GET.OBJ_{ARTIFACTS_BUCKET}.{chunk}", coder.js_api)
    for target in targets:
        await coder.nc.publish(pull, b'{"batch": 1, "expires": 500000000}', reply=target)
        await coder.nc.publish(get, b"", reply=target)
    await coder.sync()
    # the coder's own direct get is answered, so the ones above were served too
    answer = await coder.nc.request(get, b"", timeout=5)
    assert answer.data == b'{"type": "Approve", "approval_id": "x"}'
    await asyncio.sleep(1)
    assert heard == []
    assert (await runs.get("perm-replay")).revision == before
    assert (await services.js.stream_info(RESULT_STREAM)).state.last_seq == results
    await store.delete("perm-replay-bytes")


async def test_a_worker_that_names_jetstream_s_api_wrongly_is_told_what_to_set(
    secured: tuple[EmbeddedNats, Deployment], caplog: pytest.LogCaptureFixture
) -> None:
    """Its user, password and no `CODEYARD_NATS_JS_API` (set by hand from its env file)."""
    caplog.set_level(logging.ERROR, logger=REFUSAL_LOGGER)
    server, deployment = secured
    login = dataclasses.replace(deployment.credentials("coder"), js_api="")
    coder = await Bus.connect(server.url, credentials=login, topology=TEST_TOPOLOGY)
    try:
        with pytest.raises(nats.errors.TimeoutError):
            await coder.js.consumer_info(WORK_STREAM, "coder", timeout=1)
        message = await refusal(caplog, f"$JS.API.CONSUMER.INFO.{WORK_STREAM}.coder")
    finally:
        await coder.close()
    assert "set codeyard_nats_js_api" in message
    caplog.clear()


def test_the_generated_configuration_passes_the_servers_check(
    secured: tuple[EmbeddedNats, Deployment],
) -> None:
    _, deployment = secured
    checked = subprocess.run(
        [str(find_nats_server()), "-c", str(deployment.config_file), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "valid" in checked.stdout + checked.stderr


async def test_the_coordinator_may_read_every_work_consumer_for_the_metrics(
    connect: Callable[[str], Awaitable[Bus]],
) -> None:
    coordinator = await connect("coordinator")
    consumers = await coordinator.js.consumers_info(WORK_STREAM)
    assert {"planner", "coder", "tester", "review"} <= {info.name for info in consumers}
    gauges = ConsumerGauges(coordinator.js)
    await gauges.poll()
    queue = {"stream": WORK_STREAM, "consumer": "coder"}
    assert REGISTRY.get_sample_value("codeyard_consumer_pending_messages", queue) is not None
    gauges.clear()


async def test_a_coder_skips_the_work_of_a_cancelled_run_by_reading_its_header(
    connect: Callable[[str], Awaitable[Bus]],
    coordinator: Coordinator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A coder started after the run was cancelled reads the run's header (a message get on
    the runs' bucket) and drops its queued work; it may read nothing else of that kind."""
    caplog.set_level(logging.ERROR, logger=REFUSAL_LOGGER)
    ctl, coder = await connect("ctl"), await connect("coder")
    plan = [TaskSpec(id="a", title="a"), TaskSpec(id="b", title="b")]
    await ask(ctl, "submit", SubmitRun(run_id="perm-ended", goal="g", plan=plan))
    for task_id in ("a", "b"):
        await wait_for_task(ctl, "perm-ended", task_id, TaskState.CODING)
    cancelled = await ask(ctl, "cancel", CancelRun(run_id="perm-ended"))
    assert isinstance(cancelled, Accepted), cancelled
    given: list[str] = []

    async def answer(item: WorkItem) -> Result:
        given.append(item.run_id)  # earlier tests' coding work may come too
        return CodeResult(patch=Patch(text=""), summary="done")

    async with serving(PullWorker(coder, "coder", answer, skip_ended_runs=True)) as worker:
        await until(lambda: worker.stats.run_ended >= 2)
    assert worker.stats.run_ended == 2
    assert "perm-ended" not in given

    ended = EndedRuns(coder)
    assert await ended.ended("perm-ended")
    assert not await ended.ended("perm-never-submitted")
    for refused in (
        f"$JS.API.STREAM.MSG.GET.KV_{APPROVALS_BUCKET}",
        f"$JS.API.STREAM.MSG.GET.{WORK_STREAM}",
    ):
        with pytest.raises(nats.errors.TimeoutError):
            await coder.nc.request(refused, b'{"seq": 1}', timeout=1)
        await refusal(caplog, refused)
    await coder.nc.publish(f"$KV.{RUNS_BUCKET}.perm-ended", b"{}")  # no rewriting a run
    await refusal(caplog, f"$KV.{RUNS_BUCKET}.perm-ended")
    assert (await status(ctl, "perm-ended")).state is RunState.CANCELLED


@pytest.fixture
async def coder_without_the_read(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[Bus, Bus]]:
    """The coordinator and a coder on a server whose configuration predates the coder's
    grant to read run headers (a codeyard upgraded without regenerating it)."""
    directory = tmp_path_factory.mktemp("old-config")
    port = free_port()
    options = ServerOptions(port=port, store_dir=directory / "jetstream")
    deployment = write_deployment(directory, options=options)
    users = []
    for principal in deployment.principals:
        grants = grants_for(principal)
        if principal == "coder":
            kept = tuple(subject for subject in grants.publish if subject != HEADER_GET)
            grants = msgspec.structs.replace(grants, publish=kept)
        users.append((deployment.credentials(principal), grants))
    deployment.config_file.write_text(render_config(users, options))
    with EmbeddedNats(directory, port=port, config_file=deployment.config_file) as server:
        buses = [
            await Bus.connect(
                server.url,
                name=f"test-{principal}",
                credentials=deployment.credentials(principal),
                topology=TEST_TOPOLOGY,
            )
            for principal in ("coordinator", "coder")
        ]
        try:
            await buses[0].setup()
            yield buses[0], buses[1]
        finally:
            for bus in buses:
                await bus.close()


async def test_a_coder_refused_the_read_still_runs_its_work(
    coder_without_the_read: tuple[Bus, Bus], caplog: pytest.LogCaptureFixture
) -> None:
    """The refused read times out: the item runs as it would without the check, and the
    next one does not wait for a read again."""
    caplog.set_level(logging.ERROR, logger=REFUSAL_LOGGER)
    coordinator, coder = coder_without_the_read
    for task_id in ("a", "b"):
        item = CodeRequest(
            run_id="perm-old", task_id=task_id, goal="g", task=TaskSpec(id=task_id, title=task_id)
        )
        await coordinator.publish(work_subject("coder"), item)
    given: list[str] = []

    async def answer(item: WorkItem) -> Result:
        given.append(item.task_id)
        return CodeResult(patch=Patch(text=""), summary="done")

    async with serving(PullWorker(coder, "coder", answer, skip_ended_runs=True)) as worker:
        await until(lambda: len(given) == 2)
    assert given == ["a", "b"]
    await refusal(caplog, through(HEADER_GET, coder.js_api))
    assert worker.ended_runs is not None
    assert worker.ended_runs.reads == 1
