"""A worker process for every role with scripted answers, speaking the real bus protocol.

    python -m codeyard.testing.scripted_worker --roles coder,tester,review [options]

It connects to NATS_URL, as CODEYARD_NATS_USER if set (else, serving one role, as that role's
user in CODEYARD_NATS_CREDENTIALS_DIR, if any).
Answers: the planner returns the plan in --plan (a JSON list of task
specs); the coder returns a one-line patch reporting --tokens of usage; the tester passes,
except on the first attempt of the tasks in --fail-tests; reviewers approve, except the first
attempt of --reject. With --log every finished item is appended as `type task attempt pid`
(to prove nothing ran twice).
With --hang-on TASK it prints `HANGING <task>` and never answers that task (a victim to kill).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

import msgspec

from codeyard.bus import Bus, PullWorker
from codeyard.bus.permissions import principal_of_role
from codeyard.config import Settings
from codeyard.schemas import (
    CodeRequest,
    CodeResult,
    Patch,
    PlanRequest,
    PlanResult,
    Result,
    ReviewComment,
    ReviewRequest,
    ReviewResult,
    TaskSpec,
    TestRequest,
    TestResult,
    Usage,
    WorkItem,
)


def new_file_patch(path: str, line: str) -> str:
    """A unified diff that creates `path` holding one line: applies to any tree without it."""
    return (
        f"diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n"
        f"@@ -0,0 +1 @@\n+{line}\n"
    )


def append_line(path: Path, line: str) -> None:
    with open(path, "a") as log:  # one small O_APPEND write: lines from processes never mix
        log.write(line)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--roles", default="planner,coder,tester,review")
    parser.add_argument("--plan", type=Path)
    parser.add_argument("--fail-tests", default="")
    parser.add_argument("--reject", default="")
    parser.add_argument("--hang-on", default="")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--log", type=Path)
    parser.add_argument("--tokens", type=int, default=0, help="tokens each coder result reports")
    return parser.parse_args()


class Script:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.fail_tests = set(filter(None, args.fail_tests.split(",")))
        self.reject = set(filter(None, args.reject.split(",")))
        self.plan = (
            msgspec.json.decode(args.plan.read_bytes(), type=list[TaskSpec]) if args.plan else []
        )

    async def answer(self, item: WorkItem) -> Result:
        if item.task_id and item.task_id == self.args.hang_on:
            print(f"HANGING {item.task_id}", flush=True)
            await asyncio.Event().wait()
        if self.args.delay:
            await asyncio.sleep(self.args.delay)
        result = self._result(item)
        if self.args.log:
            line = f"{type(item).__name__} {item.task_id or '-'} {item.attempt} {os.getpid()}\n"
            append_line(self.args.log, line)
        return result

    def _result(self, item: WorkItem) -> Result:
        match item:
            case PlanRequest():
                return PlanResult(tasks=self.plan)
            case CodeRequest():
                text = new_file_patch(f"notes/{item.task_id}.txt", f"attempt {item.attempt}")
                usage = Usage(calls=1, prompt_tokens=self.args.tokens)
                return CodeResult(
                    patch=Patch(text=text), summary=f"coded {item.task_id}", usage=usage
                )
            case TestRequest():
                failing = item.task_id in self.fail_tests and item.attempt == 1
                output = "FAILED test_feature - assert 1 == 2" if failing else "1 passed"
                return TestResult(passed=not failing, output=output, tests_run=1)
            case ReviewRequest():
                rejecting = item.task_id in self.reject and item.attempt == 1
                comments = [ReviewComment(text="handle the empty case")] if rejecting else []
                return ReviewResult(
                    reviewer=item.reviewer, approved=not rejecting, comments=comments
                )


async def main() -> None:
    args = parse()
    settings = Settings()
    roles = args.roles.split(",")
    bus = await Bus.connect(
        settings.nats_url,
        name="scripted-worker",
        credentials=settings.credentials(principal_of_role(roles[0])),  # env ones for several
        topology=settings.topology(),
    )
    script = Script(args)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    workers = [
        PullWorker(bus, role, script.answer, concurrency=args.concurrency, retry_delays=(0.2,))
        for role in roles
    ]
    print("READY", flush=True)
    await asyncio.gather(*(worker.run(stop, grace=2) for worker in workers))
    await bus.close()


if __name__ == "__main__":
    asyncio.run(main())
