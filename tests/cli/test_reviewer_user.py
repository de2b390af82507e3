"""A reviewer of your own, in any language, under `codeyard up`: `--reviewer-user lint` gives it
a NATS user on the embedded server, and it serves review.lint over raw JetStream as the README's
"From another language" says (nothing of codeyard imported: JSON in, JSON out)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import msgspec
import nats

from codeyard.bus.credentials import read_credentials
from codeyard.schemas import TaskSpec
from tests.cli.test_run import codeyard_run, running_system
from tests.processes import codeyard
from tests.repositories import one_commit_repo


async def review_once(url: str, credentials_file: Path, approved: bool) -> dict[str, object]:
    """One review by reviewer `lint`, as the README's recipe does it; the request it read."""
    login = read_credentials(credentials_file)
    assert login is not None
    nc = await nats.connect(
        url, user=login.user, password=login.password, inbox_prefix=f"_INBOX.{login.user}"
    )
    try:
        # its account imports JetStream's API under the name its env file gives
        api = login.js_api or "$JS.API"
        js = nc.jetstream(prefix=api)
        # The coordinator creates the consumer once a run needs review.lint: wait for it.
        info = f"{api}.CONSUMER.INFO.CY_WORK.review-lint"
        async with asyncio.timeout(60):
            # (the server signals nothing: ask until it answers with the consumer)
            while "error" in json.loads((await nc.request(info, b"", timeout=10)).data):  # noqa: ASYNC110
                await asyncio.sleep(1)
        requests = await js.pull_subscribe_bind("review-lint", stream="CY_WORK")
        [message] = await requests.fetch(1, timeout=60)
        request = json.loads(message.data)
        answer_id = hashlib.sha256(f"{request['msg_id']}:result".encode()).hexdigest()[:32]
        answer = {
            "type": "ReviewResult",
            # copied from the request: `proof` shows the coordinator it answers work it sent
            **{key: request[key] for key in ("run_id", "task_id", "attempt", "trace_id", "proof")},
            "msg_id": answer_id,
            "reviewer": "review.lint",
            "approved": approved,
        }
        headers = {"Nats-Msg-Id": answer_id}
        await js.publish("cy.result.review.lint", json.dumps(answer).encode(), headers=headers)
        await message.ack()  # published first: a crash in between sends the request again
        return dict(request)
    finally:
        await nc.close()


async def test_a_reviewer_of_your_own_gets_a_user_and_its_verdict_counts(tmp_path: Path) -> None:
    repo = one_commit_repo(tmp_path / "repo", {"README.md": "a sample project\n"})
    plan = tmp_path / "plan.json"
    plan.write_bytes(msgspec.json.encode([TaskSpec(id="a", title="models")]))
    async with running_system(tmp_path, ("--reviewer-user", "lint")) as (env, _):
        port = env["CODEYARD_NATS_PORT"]
        login = tmp_path / "data" / "nats" / "credentials" / "review-lint.env"
        args = ("g", "--repo", str(repo), "--plan", str(plan), "--run-id", "r1")
        running = asyncio.to_thread(codeyard_run, env, *args, "--reviewer", "review.lint")
        reviewing = review_once(f"nats://127.0.0.1:{port}", login, approved=True)
        done, request = await asyncio.gather(running, reviewing)
    assert request["task_id"] == "a"
    assert done.returncode == 0, done.stdout + done.stderr
    assert "run r1 done: 1/1 tasks merged" in done.stdout


async def test_up_says_a_reviewer_user_is_for_its_own_server(tmp_path: Path) -> None:
    env_with_url = {"NATS_URL": "nats://127.0.0.1:4222", "CODEYARD_DATA_DIR": str(tmp_path)}
    refused = await asyncio.to_thread(
        codeyard, env_with_url | {"PATH": "/usr/bin:/bin"}, "up", "--reviewer-user", "lint"
    )
    assert refused.returncode == 2
    assert refused.stderr == (
        "error: --reviewer-user gives a user on up's own server; with NATS_URL, give it one "
        "there: codeyard deploy nats-config --reviewer NAME\n"
    )


async def test_up_refuses_a_reviewer_it_would_run_and_leave_to_you(tmp_path: Path) -> None:
    env = {"CODEYARD_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    args = ("up", "--reviewer", "static", "--reviewer-user", "review.static")
    refused = await asyncio.to_thread(codeyard, env, *args)
    assert refused.returncode == 2
    assert refused.stderr == (
        "error: review.static is given both --reviewer and --reviewer-user: choose one\n"
    )
