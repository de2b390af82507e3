"""RunEngine against a simulated, unreliable world, over random plans.

The world answers every effect the engine emits, in random order, and (in chaos mode) also
re-delivers old results, invents results for the wrong attempt or phase (some of them early:
answers to work not sent yet), parks tasks for
approval, loses the coordinator (a standby rebuilds the engine from the stored run and re-sends
the outstanding work) and sometimes cancels the run. After every step the rules must hold:

- a task is dispatched only once every dependency is merged;
- a result is applied at most once per (kind, task, attempt, reviewer), and usage is counted
  exactly for the applied ones;
- a task is merged at most once; never more than `capacity` tasks in flight;
- nothing is dispatched while the run is not executing, and nothing changes once it ended;
- the run always ends (no deadlock), and a run nobody disturbed ends done;
- a task the engine does not report as changed is unchanged (a store may skip writing it).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codeyard.coordinator import (
    Cancel,
    CancelWork,
    Coded,
    Dispatch,
    Effect,
    Event,
    Ignored,
    Integrate,
    Integrated,
    Merge,
    Merged,
    MergeFailed,
    ParkTask,
    PlanApproved,
    PlanProposed,
    RequestApproval,
    ResumeRun,
    ResumeTask,
    Reviewed,
    RunEngine,
    TaskGraph,
    TaskMoved,
    Tested,
    WorkAbandoned,
)
from codeyard.coordinator.lifecycle import TERMINAL_RUN_STATES, TERMINAL_TASK_STATES
from codeyard.schemas.model import Budget, FeedbackKind, Run, RunState, TaskSpec, TaskState, Usage
from tests.coordinator.plans import T0, dags, dispatched, new_run, spec

USAGE = Usage(calls=1, prompt_tokens=7, completion_tokens=3)
Outstanding = Dispatch | Merge | Integrate | PlanApproved | ResumeRun | ResumeTask


def ignored(effects: list[Effect]) -> bool:
    """Whether the engine refused the event: then it says so, and nothing else."""
    return len(effects) == 1 and isinstance(effects[0], Ignored)


class World:
    def __init__(
        self,
        specs: Sequence[TaskSpec],
        rng: random.Random,
        *,
        capacity: int,
        budget: Budget,
        approve_plan: bool,
        failure_rate: float,
        chaos: bool,
    ) -> None:
        self.engine = RunEngine(
            new_run(budget=budget, approve_plan=approve_plan), capacity=capacity
        )
        self.graph = TaskGraph(specs)
        self.specs = specs
        self.rng = rng
        self.capacity = capacity
        self.failure_rate = failure_rate
        self.chaos = chaos
        self.out: list[Outstanding] = []  # what the world still has to answer
        self.history: list[Event] = []  # every result ever produced, for re-delivery
        self.applied: set[tuple[str, str, int, str]] = set()
        self.applied_tokens = 0
        self.merges: Counter[str] = Counter()
        self.dispatches: Counter[tuple[str, str, int]] = Counter()
        self.ever_dispatched: set[str] = set()
        self.resent: set[tuple[str, int]] = set()  # work that may legitimately go out again
        self.disturbed = failure_rate > 0

    # --- talking to the engine ----------------------------------------------------------------

    def send(self, event: Event) -> list[Effect]:
        engine = self.engine
        ended_before = engine.run.state in TERMINAL_RUN_STATES
        before = {task_id: msgspec.json.encode(t) for task_id, t in engine.run.tasks.items()}
        effects = engine.handle(event, T0)
        changed = engine.take_changed_tasks()
        for task_id, task in engine.run.tasks.items():
            if task_id not in changed:
                assert msgspec.json.encode(task) == before[task_id], f"{task_id} changed unsaid"
        self.check(event, effects, ended_before)
        self.carry_out(effects)
        return effects

    def check(self, event: Event, effects: list[Effect], ended_before: bool) -> None:
        run = self.engine.run
        refusals = [e for e in effects if isinstance(e, Ignored)]
        if refusals:
            assert effects == [Ignored(event, refusals[0].reason, refusals[0].early)], effects
        if ended_before:
            assert ignored(effects), f"{event} changed a finished run: {effects}"
        if not ignored(effects) and isinstance(
            event, Coded | Tested | Reviewed | Merged | MergeFailed
        ):
            reviewer = event.reviewer if isinstance(event, Reviewed) else ""
            result = (type(event).__name__, event.task_id, event.attempt, reviewer)
            assert result not in self.applied, f"{result} applied twice"
            self.applied.add(result)
            if not isinstance(event, Merged | MergeFailed):
                self.applied_tokens += event.usage.total_tokens
        for effect in effects:
            if isinstance(effect, Dispatch | Merge):
                assert run.state is RunState.EXECUTING, f"{effect} while {run.state}"
            if isinstance(effect, Dispatch) and effect.task_id:
                for dep in self.graph.deps(effect.task_id):
                    assert run.tasks[dep].state is TaskState.MERGED, f"{effect}: {dep} unmerged"
                key = (effect.role, effect.task_id, effect.attempt)
                self.dispatches[key] += 1
                if self.dispatches[key] > 1:
                    assert (effect.task_id, effect.attempt) in self.resent, f"{key} sent twice"
                self.ever_dispatched.add(effect.task_id)
            if isinstance(effect, TaskMoved) and effect.state is TaskState.MERGED:
                self.merges[effect.task_id] += 1
                assert self.merges[effect.task_id] == 1
        assert len(self.engine.in_flight) <= self.capacity
        assert run.usage.total_tokens == self.applied_tokens

    def carry_out(self, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case Dispatch() | Merge() | Integrate():
                    self.out.append(effect)
                case CancelWork(task_id=task_id, attempt=attempt):
                    # cancelling races with the work: some of it still answers
                    self.out = [
                        item
                        for item in self.out
                        if not (
                            isinstance(item, Dispatch | Merge)
                            and (item.task_id, item.attempt) == (task_id, attempt)
                            and self.rng.random() < 0.5
                        )
                    ]
                case RequestApproval(kind="plan"):
                    self.out.append(PlanApproved())
                case RequestApproval(kind="budget"):
                    used = self.engine.run.usage.total_tokens
                    self.out.append(ResumeRun(Budget(max_tokens=used + self.rng.choice([5, 300]))))
                case _:
                    pass

    # --- the world's answers ------------------------------------------------------------------

    def answer(self, item: Outstanding) -> Event:
        rng, fails = self.rng, self.rng.random() < self.failure_rate
        match item:
            case Dispatch(role=role, task_id=task_id, attempt=attempt):
                if self.chaos and rng.random() < 0.005:
                    self.disturbed = True
                    return WorkAbandoned(task_id, attempt, role, "poison")
                if role == "coder":
                    return Coded(task_id, attempt, USAGE)
                if role == "tester":
                    return Tested(task_id, attempt, not fails, "log", USAGE)
                return Reviewed(task_id, attempt, role, not fails, "nit", USAGE)
            case Merge(task_id=task_id, attempt=attempt):
                if fails and rng.random() < 0.5:
                    kind = rng.choice([FeedbackKind.CONFLICT, FeedbackKind.REGRESSION])
                    return MergeFailed(task_id, attempt, kind, "conflict")
                return Merged(task_id, attempt)
            case Integrate():
                return Integrated(ok=True)
            case _:
                return item

    def bogus_result(self) -> Event:
        rng = self.rng
        task = self.engine.run.tasks[rng.choice(self.specs).id]
        attempt = max(0, task.attempt + rng.choice([-1, 0, 0, 1]))
        task_id = task.spec.id
        options: list[Event] = [
            Coded(task_id, attempt, USAGE),
            Tested(task_id, attempt, rng.random() < 0.5, "?", USAGE),
            Reviewed(task_id, attempt, "review", rng.random() < 0.5, "?", USAGE),
            Reviewed(task_id, attempt, "review.other", True, "?", USAGE),
            Merged(task_id, attempt),
            MergeFailed(task_id, attempt),
            ResumeTask(task_id, attempt, True),
        ]
        return rng.choice(options)

    def disturb(self) -> None:
        rng, run = self.rng, self.engine.run
        roll = rng.random()
        if roll < 0.35 and self.history:
            self.send(rng.choice(self.history))  # duplicate or late delivery
        elif roll < 0.6 and run.tasks:
            # an invented result that happens to match the task's attempt and state is
            # indistinguishable from a real one, and may well be a failure
            effects = self.send(self.bogus_result())
            self.disturbed |= not ignored(effects)
        elif roll < 0.75 and run.tasks:
            task = run.tasks[rng.choice(self.specs).id]
            if task.state in TERMINAL_TASK_STATES or task.state is TaskState.AWAITING_APPROVAL:
                return
            effects = self.send(ParkTask(task.spec.id, task.attempt, "needs approval"))
            if ignored(effects):
                return
            self.resent.add((task.spec.id, task.attempt))
            approved = rng.random() < 0.9
            self.disturbed |= not approved
            self.out.append(ResumeTask(task.spec.id, task.attempt, approved))
        elif roll < 0.97:
            self.fail_over()
        elif roll < 0.975:
            self.disturbed = True
            self.send(Cancel("chaos"))

    def fail_over(self) -> None:
        """The coordinator dies; a standby loads the stored run and re-sends what is out."""
        stored = msgspec.json.encode(self.engine.run)
        self.engine = RunEngine(msgspec.json.decode(stored, type=Run), capacity=self.capacity)
        assert msgspec.json.encode(self.engine.run) == stored
        work = self.engine.outstanding_work()
        for effect in work:
            if isinstance(effect, Dispatch | Merge):
                self.resent.add((effect.task_id, effect.attempt))
        if self.rng.random() < 0.5:
            self.carry_out(work)

    # --- the whole run ------------------------------------------------------------------------

    def run_to_end(self) -> None:
        self.send(PlanProposed(tuple(self.specs)))
        for _ in range(50_000):
            run = self.engine.run
            if not self.out and run.state in TERMINAL_RUN_STATES:
                return
            if self.chaos and self.rng.random() < 0.2:
                self.disturb()
                continue
            assert self.out, f"stuck: run is {run.state} and nothing is out"
            item = self.out.pop(self.rng.randrange(len(self.out)))
            event = self.answer(item)
            if not isinstance(event, PlanApproved | ResumeRun | ResumeTask):
                self.history.append(event)
            effects = self.send(event)
            # early only when the run lost a step that sent the work (never here) or invented
            assert not (ignored(effects) and effects[0].early), effects  # type: ignore[union-attr]
        raise AssertionError("the run did not end")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=dags(max_tasks=20),
    seed=st.integers(0, 2**32),
    capacity=st.integers(1, 6),
    max_tokens=st.sampled_from([0, 60, 400]),
    max_attempts=st.integers(1, 4),
    failure_rate=st.sampled_from([0.0, 0.0, 0.15, 0.4]),
    approve_plan=st.booleans(),
    chaos=st.booleans(),
)
def test_random_runs_keep_every_rule(
    specs: list[TaskSpec],
    seed: int,
    capacity: int,
    max_tokens: int,
    max_attempts: int,
    failure_rate: float,
    approve_plan: bool,
    chaos: bool,
) -> None:
    world = World(
        specs,
        random.Random(seed),
        capacity=capacity,
        budget=Budget(max_tokens=max_tokens, max_attempts_per_task=max_attempts),
        approve_plan=approve_plan,
        failure_rate=failure_rate,
        chaos=chaos,
    )
    world.run_to_end()

    run = world.engine.run
    assert run.state in TERMINAL_RUN_STATES
    assert all(task.state in TERMINAL_TASK_STATES for task in run.tasks.values())
    if run.state is RunState.DONE:
        assert all(task.state is TaskState.MERGED for task in run.tasks.values())
        assert set(world.merges) == set(run.tasks)
    else:
        assert world.disturbed, f"undisturbed run ended {run.state}: {run.error}"
    for task_id, task in run.tasks.items():
        if task.state is TaskState.FAILED:
            assert not world.ever_dispatched & world.graph.descendants(task_id)
        if task.state is TaskState.MERGED:
            assert len(task.feedback) == task.attempt - 1


def test_two_thousand_tasks_run_to_completion() -> None:
    rng = random.Random(11)
    count = 2_000
    specs = [
        spec(f"t{i}", *{f"t{rng.randrange(i)}" for _ in range(2)} if i else ())
        for i in range(count)
    ]
    rng.shuffle(specs)
    engine = RunEngine(new_run(), capacity=32)
    out = dispatched(engine.handle(PlanProposed(tuple(specs)), T0))
    merged: set[str] = set()
    while out:
        role, task_id, attempt = out.pop()
        if role == "coder":
            effects = engine.handle(Coded(task_id, attempt), T0)
        elif role == "tester":
            effects = engine.handle(Tested(task_id, attempt, passed=True), T0)
        else:
            effects = engine.handle(Reviewed(task_id, attempt, role, approved=True), T0)
            effects += engine.handle(Merged(task_id, attempt), T0)
            merged.add(task_id)
        out += dispatched(effects)
    assert merged == {s.id for s in specs}
    assert engine.run.state is RunState.INTEGRATING
