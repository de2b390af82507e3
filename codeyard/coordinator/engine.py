"""`RunEngine`: one run's rules, as a pure function from input events to effects.

The engine owns a `Run` (the stored model) and the `TaskGraph` of its plan. `handle(event, now)`
checks the event against the current state, changes the run in place and returns what the I/O
layer must do, in order. It reads no clock, does no I/O and keeps nothing that cannot be
rebuilt from the `Run`: a standby coordinator builds `RunEngine(run)` from the stored record
and continues, re-sending `outstanding_work()` if it cannot tell what was already sent.

Rules, in short:

- a task becomes ready when every dependency is merged; ready tasks start (attempt 1, coding)
  highest critical path first (weighted by the plan's effort estimates, if it has any) while
  fewer than `capacity` tasks are in flight;
- coding -> testing -> reviewing (every required reviewer must approve) -> gated (merge)
  -> merged; a failed test, a rejected review or a failed merge sends the task back to coding
  at the next attempt with the reason as `Feedback`, until `Budget.max_attempts_per_task`;
- a result is applied only for the task's current attempt and state, so duplicates, stale
  attempts and results for another phase are `Ignored` and never applied twice;
- a failed task fails the run; a failed or cancelled run cancels what is in flight and every
  task not finished, and starts nothing more;
- usage of every applied result is added to the run, and of every `UnappliedSpend` (work that
  spent tokens, then was handed back to be retried or answered too late) once, whatever its
  task does now; over budget, the run pauses in `awaiting_approval`: results still apply, but
  new work is held until `ResumeRun`. The ids of results whose usage was counted are kept
  with their task, so a result replayed after a failover is not counted again either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, assert_never

import msgspec

from codeyard.coordinator.budget import budget_overrun
from codeyard.coordinator.effects import (
    CODER,
    PLANNER,
    TESTER,
    CancelWork,
    Dispatch,
    Effect,
    Ignored,
    Integrate,
    Merge,
    RequestApproval,
    RunFinished,
    RunMoved,
    TaskMoved,
)
from codeyard.coordinator.effort import effort_weights
from codeyard.coordinator.events import (
    Cancel,
    CapacityChanged,
    Coded,
    Event,
    Integrated,
    Merged,
    MergeFailed,
    ParkTask,
    PlanApproved,
    PlanProposed,
    PlanRejected,
    ResumeRun,
    ResumeTask,
    Reviewed,
    StartPlanning,
    Tested,
    UnappliedSpend,
    WorkAbandoned,
)
from codeyard.coordinator.graph import InvalidPlan, TaskGraph
from codeyard.coordinator.lifecycle import (
    PARKABLE_STATES,
    TERMINAL_RUN_STATES,
    TERMINAL_TASK_STATES,
    WORKING_STATES,
    move_run,
    move_task,
)
from codeyard.coordinator.ready_queue import ReadyQueue
from codeyard.schemas.model import (
    Feedback,
    FeedbackKind,
    Run,
    RunState,
    Task,
    TaskSpec,
    TaskState,
    Usage,
)

DEFAULT_REVIEWERS = ("review",)
# Feedback.text is at most 20,000 characters on the wire; the end of a test log matters most.
FEEDBACK_LIMIT = 20_000  # characters of one feedback text
FEEDBACK_BYTES = 256 * 1024  # of a task's feedback, encoded: well within a 1 MiB message
_FEEDBACK_HEAD = 2_000

_ACTIVE_RUN = frozenset({RunState.EXECUTING, RunState.AWAITING_APPROVAL})
_BEFORE_EXECUTING = frozenset({RunState.PLANNING, RunState.PLAN_APPROVAL})

# Ids of results whose usage was counted, remembered per task (and for the planning), to count
# each once. Only a replay needs them, which comes within the coordinators' ack_wait of the
# count; a task's work reports far fewer results with usage in that time, and the list is
# stored with the task at every step that changes it, so it is kept short.
CHARGED_REPORTS_KEPT = 32

# Events standing for a worker's answer; applied, their usage is counted with the result's id.
ANSWERS = (PlanProposed, Coded, Tested, Reviewed, WorkAbandoned, ParkTask)

TaskResult = Coded | Tested | Reviewed | Merged | MergeFailed

# How far along a task's work is, by state; a worker's answer belongs to its role's stage. An
# answer from further along than its task (or from a later attempt) is early: see `Ignored`.
_STAGE = {
    TaskState.PLANNED: 0,
    TaskState.READY: 0,
    TaskState.CODING: 1,
    TaskState.TESTING: 2,
    TaskState.REVIEWING: 3,
    TaskState.GATED: 4,
}
_NO_STAGE = len(_STAGE)  # parked or finished: no answer is ahead of it


def _stage_of_role(role: str) -> int:
    if role == CODER:
        return _STAGE[TaskState.CODING]
    if role == TESTER:
        return _STAGE[TaskState.TESTING]
    if role == "review" or role.startswith("review."):
        return _STAGE[TaskState.REVIEWING]
    return 0  # not a task's worker (the merge step's questions): never early


@dataclass
class _Step:
    """The effects of one `handle` call, and the time it happens at."""

    now: datetime
    out: list[Effect] = field(default_factory=list)
    ignored: bool = False

    def ignore(self, event: Event, reason: str, *, early: bool = False) -> None:
        self.out.append(Ignored(event, reason, early))
        self.ignored = True


class RunEngine:
    """Applies events to one run and says what to do next. Not thread-safe; one per run."""

    def __init__(self, run: Run, *, capacity: int = 1) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.run = run
        self._capacity = capacity
        self._graph: TaskGraph | None = None
        self._queue: ReadyQueue | None = None
        self._waiting: dict[str, int] = {}  # task id -> dependencies not merged yet
        self._in_flight: set[str] = set()  # started (attempt >= 1) and not finished
        self._merged = 0
        self._changed: set[str] = set()  # tasks changed since `take_changed_tasks`
        if run.tasks:
            self._load_plan()

    # --- queries ------------------------------------------------------------------------------

    @property
    def graph(self) -> TaskGraph:
        if self._graph is None:
            raise LookupError(f"run {self.run.run_id!r} has no plan yet")
        return self._graph

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def wants(self) -> int:
        """How many tasks it could have in flight now: those in flight and those ready (at most;
        a queued task may have stopped being ready)."""
        return len(self._in_flight) + (len(self._queue) if self._queue is not None else 0)

    @property
    def in_flight(self) -> frozenset[str]:
        """Tasks started and not yet merged, failed or cancelled (parked ones included)."""
        return frozenset(self._in_flight)

    def take_changed_tasks(self) -> set[str]:
        """Ids of the tasks changed since the last call, so a store can write only those.
        (The run itself, without its tasks, changes with every event not ignored.)"""
        changed, self._changed = self._changed, set()
        return changed

    def required_reviewers(self, task_id: str) -> tuple[str, ...]:
        """The reviewers that must all approve: the task's own, else the run's default."""
        return reviewers_of(self.run.tasks[task_id].spec, self.run.reviewers)

    def outstanding_work(self) -> list[Effect]:
        """The work that should be out right now, as effects to send (again).

        For a coordinator taking over, which cannot know whether its predecessor's last sends
        happened: sending twice is safe, since results are applied once per (task, attempt).
        """
        run = self.run
        if run.state is RunState.PLANNING and not run.tasks:
            return [Dispatch(PLANNER, "", 1)]
        if run.state is RunState.INTEGRATING:
            return [Integrate()]
        if run.state not in _ACTIVE_RUN:
            return []
        work: list[Effect] = []
        for task in run.tasks.values():
            if task.state in WORKING_STATES and not task.held:
                work.extend(self._work_of(task))
        return work

    # --- events -------------------------------------------------------------------------------

    def handle(self, event: Event, now: datetime) -> list[Effect]:
        """Apply `event` at time `now`; return the effects to carry out, in order.

        An event that changes nothing comes back as `[Ignored(event, reason)]` and nothing
        else; any other answer (even an empty list) means the run may have changed: store it.
        """
        step = _Step(now)
        match event:
            case Coded():
                self._on_coded(event, step)
            case Tested():
                self._on_tested(event, step)
            case Reviewed():
                self._on_reviewed(event, step)
            case Merged():
                self._on_merged(event, step)
            case MergeFailed():
                self._on_merge_failed(event, step)
            case StartPlanning():
                self._on_start_planning(event, step)
            case PlanProposed():
                self._on_plan(event, step)
            case PlanApproved():
                self._on_plan_approved(event, step)
            case PlanRejected():
                self._on_plan_rejected(event, step)
            case WorkAbandoned():
                self._on_abandoned(event, step)
            case UnappliedSpend():
                self._on_unapplied_spend(event, step)
            case ParkTask():
                self._on_park(event, step)
            case ResumeTask():
                self._on_resume_task(event, step)
            case ResumeRun():
                self._on_resume_run(event, step)
            case Cancel():
                self._on_cancel(event, step)
            case CapacityChanged():
                self._on_capacity(event, step)
            case Integrated():
                self._on_integrated(event, step)
            case _:
                assert_never(event)
        if not step.ignored:
            self.run.updated_at = now
            # A park is remembered even when it spent nothing: its copies must not park again.
            if (
                isinstance(event, ANSWERS)
                and event.result_id
                and (event.usage.calls or isinstance(event, ParkTask))
            ):
                task_id = "" if isinstance(event, PlanProposed) else event.task_id
                self._counted(task_id, event.result_id)
        return step.out

    def _on_start_planning(self, event: StartPlanning, step: _Step) -> None:
        if self.run.state is not RunState.PLANNING:
            step.ignore(event, f"run is {self.run.state}, not planning")
        elif self.run.tasks:
            step.ignore(event, "the run already has a plan")
        else:
            step.out.append(Dispatch(PLANNER, "", 1))

    def _on_plan(self, event: PlanProposed, step: _Step) -> None:
        run = self.run
        if run.state is not RunState.PLANNING or run.tasks:
            step.ignore(event, f"run is {run.state} and has a plan already")
            return
        run.usage = run.usage + event.usage
        try:
            TaskGraph(event.tasks)
        except InvalidPlan as error:
            self._end_run(RunState.FAILED, str(error), step)
            return
        run.tasks = {spec.id: Task(spec=spec) for spec in event.tasks}
        self._changed.update(run.tasks)
        self._load_plan()
        if run.approve_plan:
            self._move_run(RunState.PLAN_APPROVAL, step, "plan waits for approval")
            self._ask("plan", plan_question(run.tasks), step)
        else:
            self._execute(step, "plan accepted")

    def _on_plan_approved(self, event: PlanApproved, step: _Step) -> None:
        if self.run.state is not RunState.PLAN_APPROVAL:
            step.ignore(event, f"run is {self.run.state}, not plan_approval")
        else:
            self._execute(step, "plan approved")

    def _on_plan_rejected(self, event: PlanRejected, step: _Step) -> None:
        if self.run.state is not RunState.PLAN_APPROVAL:
            step.ignore(event, f"run is {self.run.state}, not plan_approval")
        else:
            self._end_run(RunState.CANCELLED, f"plan rejected: {event.reason}", step)

    def _on_coded(self, event: Coded, step: _Step) -> None:
        if task := self._expect(event, TaskState.CODING, step):
            self._charge(event.usage, step)
            self._move(task, TaskState.TESTING, step)
            self._send_work(task, step)

    def _on_tested(self, event: Tested, step: _Step) -> None:
        if task := self._expect(event, TaskState.TESTING, step):
            self._charge(event.usage, step)
            if event.passed:
                task.approvals = {}
                self._move(task, TaskState.REVIEWING, step, "tests passed")
                self._send_work(task, step)
            else:
                self._send_back(task, FeedbackKind.TEST_FAILURE, event.report, step)

    def _on_merged(self, event: Merged, step: _Step) -> None:
        if task := self._expect(event, TaskState.GATED, step):
            if event.repo is not None:  # work sent from now on starts from the new head
                self.run.repo = event.repo
            self._move(task, TaskState.MERGED, step)
            self._on_task_merged(task, step)

    def _on_merge_failed(self, event: MergeFailed, step: _Step) -> None:
        if task := self._expect(event, TaskState.GATED, step):
            self._send_back(task, event.kind, event.report, step)

    def _on_reviewed(self, event: Reviewed, step: _Step) -> None:
        task = self._expect(event, TaskState.REVIEWING, step)
        if task is None:
            return
        required = self.required_reviewers(event.task_id)
        if event.reviewer not in required:
            step.ignore(event, f"{event.reviewer!r} is not a required reviewer of this task")
            return
        if event.reviewer in task.approvals:
            step.ignore(event, f"{event.reviewer!r} already reviewed attempt {task.attempt}")
            return
        self._charge(event.usage, step)
        self._changed.add(event.task_id)
        task.approvals[event.reviewer] = event.approved
        if not event.approved:
            text = f"{event.reviewer}: {event.comments}" if event.comments else event.reviewer
            self._send_back(task, FeedbackKind.REVIEW, text, step)
        elif all(task.approvals.get(name) for name in required):
            self._move(task, TaskState.GATED, step, "approved by " + ", ".join(required))
            self._send_work(task, step)

    def _on_abandoned(self, event: WorkAbandoned, step: _Step) -> None:
        run = self.run
        if not event.task_id:
            if run.state is RunState.PLANNING and event.role == PLANNER:
                run.usage = run.usage + event.usage
                self._end_run(RunState.FAILED, f"planner failed: {event.reason}", step)
            else:
                step.ignore(event, f"no planning is out (run is {run.state})")
            return
        task = self._task(event, step)
        if task is None:
            return
        if task.state not in WORKING_STATES or event.role not in self._roles_out(task):
            reason = f"no {event.role} work is out for task (it is {task.state})"
            step.ignore(event, reason, early=self._behind(task, _stage_of_role(event.role)))
            return
        run.usage = run.usage + event.usage  # no budget check: the task is failing anyway
        self._fail_task(task, f"{event.role} failed: {event.reason}", step)

    def _on_unapplied_spend(self, event: UnappliedSpend, step: _Step) -> None:
        """Count what a delivery spent though its answer is not applied: not once per state
        like a result's (the work may have moved on since; the tokens are spent all the same),
        but once per report, remembered in the run (the planning's) or its task."""
        run = self.run
        if run.state in TERMINAL_RUN_STATES:
            step.ignore(event, f"run is {run.state}")
            return
        if event.task_id and event.task_id not in run.tasks:
            step.ignore(event, f"unknown task {event.task_id!r}")
            return
        if event.report in self._charged(event.task_id):
            step.ignore(event, f"the usage of {event.report} is counted already")
            return
        self._counted(event.task_id, event.report)
        self._charge(event.usage, step)

    def _charged(self, task_id: str) -> list[str]:
        """The reports whose usage is counted, of a task (of the planning: "")."""
        return self.run.tasks[task_id].charged_reports if task_id else self.run.charged_reports

    def _counted(self, task_id: str, report: str) -> None:
        charged = self._charged(task_id)
        charged.append(report)
        del charged[:-CHARGED_REPORTS_KEPT]
        if task_id:
            self._changed.add(task_id)  # its record holds the list

    def _on_park(self, event: ParkTask, step: _Step) -> None:
        task = self._task(event, step)
        if task is None:
            return
        if event.result_id and event.result_id in task.charged_reports:
            # A copy of an answer applied before (its ack lost, or a batch of it sent again):
            # the task parked for it then, and may have been approved since. Parked again, it
            # would wait for an answer already given.
            step.ignore(event, "this answer parked the task before")
            return
        if self._behind(task, _stage_of_role(event.role)):
            step.ignore(event, f"task is {task.state}: {event.role} has no work", early=True)
            return
        if task.state not in PARKABLE_STATES:
            step.ignore(event, f"task is {task.state}: cannot park")
            return
        task.held = False  # parking takes the work back; approval sends it again
        self._move(task, TaskState.AWAITING_APPROVAL, step, event.reason)
        # Only once parked, like a result's: a replayed `ApprovalNeeded` finds it parked.
        self._charge(event.usage, step)

    def _on_resume_task(self, event: ResumeTask, step: _Step) -> None:
        task = self._task(event, step)
        if task is None:
            return
        if task.state is not TaskState.AWAITING_APPROVAL or task.parked_from is None:
            step.ignore(event, f"task is {task.state}, not awaiting_approval")
            return
        if not event.approved:
            self._fail_task(task, f"approval denied: {event.reason}", step)
            return
        target = task.parked_from
        self._move(task, target, step, f"approved: {event.reason}" if event.reason else "approved")
        if target in WORKING_STATES:
            self._send_work(task, step)
        elif target is TaskState.READY:
            self._ready_queue().push(task.spec.id)
        elif self._waiting[task.spec.id] == 0:
            self._make_ready(task, step)
        self._fill(step)

    def _on_resume_run(self, event: ResumeRun, step: _Step) -> None:
        run = self.run
        if run.state is not RunState.AWAITING_APPROVAL:
            step.ignore(event, f"run is {run.state}, not awaiting_approval")
            return
        if event.budget is not None:
            run.budget = event.budget
        overrun = budget_overrun(run.usage, run.budget)
        if overrun:
            self._ask("budget", f"still over budget: {overrun}", step)
            return
        self._move_run(RunState.EXECUTING, step, "resumed")
        for task in run.tasks.values():
            if task.held:
                self._send_work(task, step)
        self._finish_if_all_merged(step)
        self._fill(step)

    def _on_cancel(self, event: Cancel, step: _Step) -> None:
        run = self.run
        if run.state in TERMINAL_RUN_STATES:
            step.ignore(event, f"run is already {run.state}")
            return
        if run.state is RunState.PLANNING and not run.tasks:
            step.out.append(CancelWork("", 1))
        self._end_run(RunState.CANCELLED, event.reason, step)

    def _on_capacity(self, event: CapacityChanged, step: _Step) -> None:
        if event.capacity < 0:
            step.ignore(event, "capacity must be >= 0")
            return
        self._capacity = event.capacity
        self._fill(step)

    def _on_integrated(self, event: Integrated, step: _Step) -> None:
        if self.run.state is not RunState.INTEGRATING:
            step.ignore(event, f"run is {self.run.state}, not integrating")
        elif event.ok:
            self._move_run(RunState.DONE, step, event.report)
            step.out.append(RunFinished(RunState.DONE, event.report))
        else:
            self._end_run(RunState.FAILED, f"integration failed: {event.report}", step)

    # --- guards -------------------------------------------------------------------------------

    def _task(
        self, event: TaskResult | WorkAbandoned | ParkTask | ResumeTask, step: _Step
    ) -> Task | None:
        """The task `event` is about, if the run is under way and the attempt is current."""
        run = self.run
        if run.state not in _ACTIVE_RUN:
            # A task's answer while the run is still planning (or has its plan waiting for
            # approval): the step that started the tasks was lost.
            early = isinstance(event, ANSWERS) and run.state in _BEFORE_EXECUTING
            step.ignore(event, f"run is {run.state}", early=early)
            return None
        task = run.tasks.get(event.task_id)
        if task is None:
            step.ignore(event, f"unknown task {event.task_id!r}")
            return None
        if event.attempt > task.attempt and isinstance(event, ANSWERS) and task.state in _STAGE:
            reason = f"early: attempt {event.attempt}, task is at {task.attempt}"
            step.ignore(event, reason, early=True)
            return None
        if event.attempt != task.attempt:
            step.ignore(event, f"stale: attempt {event.attempt}, task is at {task.attempt}")
            return None
        return task

    def _expect(self, event: TaskResult, state: TaskState, step: _Step) -> Task | None:
        """The task `event` answers, if it is at that attempt and in `state`."""
        task = self._task(event, step)
        if task is not None and task.state is not state:
            early = isinstance(event, ANSWERS) and self._behind(task, _STAGE[state])
            step.ignore(event, f"task is {task.state}, not {state}", early=early)
            return None
        return task

    def _behind(self, task: Task, stage: int) -> bool:
        """Whether `task` has not reached `stage` (see `_STAGE`)."""
        return _STAGE.get(task.state, _NO_STAGE) < stage

    # --- moves --------------------------------------------------------------------------------

    def _move(self, task: Task, target: TaskState, step: _Step, reason: str = "") -> None:
        previous = move_task(task, target)
        self._changed.add(task.spec.id)
        if target is TaskState.CODING and task.started_at is None:
            task.started_at = step.now
        if target in TERMINAL_TASK_STATES:
            task.finished_at = step.now
            task.held = False
            self._in_flight.discard(task.spec.id)
        step.out.append(TaskMoved(task.spec.id, task.attempt, previous, target, reason))

    def _move_run(self, target: RunState, step: _Step, reason: str = "") -> None:
        previous = move_run(self.run, target)
        step.out.append(RunMoved(previous, target, reason))

    def _execute(self, step: _Step, reason: str) -> None:
        self._move_run(RunState.EXECUTING, step, reason)
        for task_id in self.graph:
            task = self.run.tasks[task_id]
            if task.state is TaskState.PLANNED and self._waiting[task_id] == 0:
                self._make_ready(task, step)
        self._check_budget(step)
        self._fill(step)

    def _make_ready(self, task: Task, step: _Step) -> None:
        self._move(task, TaskState.READY, step, "dependencies merged")
        self._ready_queue().push(task.spec.id)

    def _fill(self, step: _Step) -> None:
        """Start ready tasks, best first, while there is capacity."""
        free = self._capacity - len(self._in_flight)
        if self.run.state is not RunState.EXECUTING or free <= 0 or self._queue is None:
            return
        tasks = self.run.tasks
        for task_id in self._queue.take(free, lambda t: tasks[t].state is TaskState.READY):
            task = tasks[task_id]
            task.attempt += 1
            self._in_flight.add(task_id)
            self._move(task, TaskState.CODING, step)
            self._send_work(task, step)

    def _send_work(self, task: Task, step: _Step) -> None:
        """Send the work of the task's state now, or hold it while the run is paused."""
        self._changed.add(task.spec.id)
        if self.run.state is RunState.EXECUTING:
            task.held = False
            step.out.extend(self._work_of(task))
        else:
            task.held = True

    def _work_of(self, task: Task) -> list[Effect]:
        task_id, attempt = task.spec.id, task.attempt
        if task.state is TaskState.GATED:
            return [Merge(task_id, attempt)]
        feedback = tuple(task.feedback)
        return [Dispatch(role, task_id, attempt, feedback) for role in self._roles_out(task)]

    def _roles_out(self, task: Task) -> tuple[str, ...]:
        """The roles whose answer the task's state waits for."""
        if task.state is TaskState.CODING:
            return (CODER,)
        if task.state is TaskState.TESTING:
            return (TESTER,)
        if task.state is TaskState.REVIEWING:
            required = self.required_reviewers(task.spec.id)
            return tuple(name for name in required if name not in task.approvals)
        return ()

    def _send_back(self, task: Task, kind: FeedbackKind, text: str, step: _Step) -> None:
        """Feedback edge: back to coding at the next attempt, or fail when none is left."""
        task.feedback.append(Feedback(attempt=task.attempt, kind=kind, text=_clip(text)))
        task.feedback = _latest_feedback(task.feedback)
        limit = self.run.budget.max_attempts_per_task
        if task.attempt >= limit:
            reason = f"attempts exhausted: attempt {task.attempt} of {limit} ended in {kind}"
            self._fail_task(task, reason, step)
            return
        task.attempt += 1
        task.approvals = {}
        self._move(task, TaskState.CODING, step, f"{kind} on attempt {task.attempt - 1}")
        self._send_work(task, step)

    def _on_task_merged(self, task: Task, step: _Step) -> None:
        self._merged += 1
        tasks = self.run.tasks
        for dependent in self.graph.dependents(task.spec.id):
            self._waiting[dependent] -= 1
            if self._waiting[dependent] == 0 and tasks[dependent].state is TaskState.PLANNED:
                self._make_ready(tasks[dependent], step)
        self._finish_if_all_merged(step)
        self._fill(step)

    def _finish_if_all_merged(self, step: _Step) -> None:
        if self.run.state is RunState.EXECUTING and self._merged == len(self.run.tasks):
            self._move_run(RunState.INTEGRATING, step, "every task merged")
            step.out.append(Integrate())

    def _fail_task(self, task: Task, reason: str, step: _Step) -> None:
        task.error = reason
        self._move(task, TaskState.FAILED, step, reason)
        self._end_run(RunState.FAILED, f"task {task.spec.id!r} failed: {reason}", step)

    def _end_run(self, state: RunState, reason: str, step: _Step) -> None:
        """Fail or cancel the run: cancel work in flight and every unfinished task."""
        for task in self.run.tasks.values():
            if task.state in TERMINAL_TASK_STATES:
                continue
            if task.state in WORKING_STATES and not task.held:
                step.out.append(CancelWork(task.spec.id, task.attempt))
            task.error = reason
            self._move(task, TaskState.CANCELLED, step, reason)
        self.run.error = reason
        self._move_run(state, step, reason)
        step.out.append(RunFinished(state, reason))

    # --- budget -------------------------------------------------------------------------------

    def _ask(self, kind: Literal["plan", "budget"], reason: str, step: _Step) -> None:
        self.run.questions += 1
        step.out.append(RequestApproval(kind, reason, self.run.questions))

    def _charge(self, usage: Usage, step: _Step) -> None:
        self.run.usage = self.run.usage + usage
        self._check_budget(step)

    def _check_budget(self, step: _Step) -> None:
        if self.run.state is not RunState.EXECUTING:
            return
        overrun = budget_overrun(self.run.usage, self.run.budget)
        if overrun:
            self._move_run(RunState.AWAITING_APPROVAL, step, f"over budget: {overrun}")
            self._ask("budget", overrun, step)

    # --- state rebuilt from the run -----------------------------------------------------------

    def _load_plan(self) -> None:
        tasks = self.run.tasks
        for key, task in tasks.items():
            if key != task.spec.id:
                raise InvalidPlan([f"task stored under {key!r} has id {task.spec.id!r}"])
        specs = [task.spec for task in tasks.values()]
        # Accepted before (perhaps by a version without the size limit): not refused now.
        graph = TaskGraph(specs, weights=effort_weights(specs), limit_size=False)
        merged = TaskState.MERGED
        self._graph = graph
        self._queue = ReadyQueue(graph)
        self._waiting = {
            task_id: sum(tasks[dep].state is not merged for dep in graph.deps(task_id))
            for task_id in graph
        }
        self._in_flight = {
            task_id
            for task_id, task in tasks.items()
            if task.attempt >= 1 and task.state not in TERMINAL_TASK_STATES
        }
        self._merged = sum(task.state is merged for task in tasks.values())
        for task_id, task in tasks.items():
            if task.state is TaskState.READY:
                self._queue.push(task_id)

    def _ready_queue(self) -> ReadyQueue:
        if self._queue is None:
            raise LookupError(f"run {self.run.run_id!r} has no plan yet")
        return self._queue


def _latest_feedback(feedback: list[Feedback]) -> list[Feedback]:
    """The newest feedback that fits in `FEEDBACK_BYTES` as JSON, at least the newest entry.

    Every code request and task record carries a task's feedback whole: without a bound, a
    task's 100 allowed attempts of 20,000-character logs (6 bytes a character once control
    characters are escaped) outgrew NATS' message limit, and the step that sent it back failed
    on every retry."""
    kept: list[Feedback] = []
    size = 0
    for entry in reversed(feedback):
        size += len(msgspec.json.encode(entry.text)) + 64  # its other fields, generously
        if kept and size > FEEDBACK_BYTES:
            break
        kept.append(entry)
    kept.reverse()
    return kept


def _clip(text: str) -> str:
    """Keep the head and, mostly, the tail of an over-long text (where test logs say why)."""
    if len(text) <= FEEDBACK_LIMIT:
        return text
    tail = FEEDBACK_LIMIT - _FEEDBACK_HEAD - 64
    cut = len(text) - _FEEDBACK_HEAD - tail
    return f"{text[:_FEEDBACK_HEAD]}\n[... {cut} characters cut ...]\n{text[-tail:]}"


def reviewers_of(spec: TaskSpec, run_reviewers: Sequence[str]) -> tuple[str, ...]:
    """The reviewers that must all approve a task: its own, else its run's, else the default."""
    return tuple(dict.fromkeys(spec.reviewers or run_reviewers or DEFAULT_REVIEWERS))


PLAN_TASKS_SHOWN = 40  # in a plan's question; the rest are counted (`codeyard status RUN`)
PLAN_QUESTION_CHARS = 8_000  # and as many as fit in this, well within a question's LongText


def plan_question(tasks: dict[str, Task]) -> str:
    """What a person approving a plan is asked: the plan, a task a line (the question was only
    "approve the plan of 3 tasks", and the prompt of `codeyard run` showed no task yet)."""
    lines = [f"approve the plan of {len(tasks)} tasks:"]
    size = len(lines[0])
    for task in list(tasks.values())[:PLAN_TASKS_SHOWN]:
        spec = task.spec
        title = " ".join(spec.title.split())  # (a line break in it would forge a task)
        deps = ", ".join(spec.deps[:5]) + (
            f" and {len(spec.deps) - 5} more" if spec.deps[5:] else ""
        )
        line = f"  {spec.id}: {title}" + (f" (after {deps})" if deps else "")
        if size + len(line) + 1 > PLAN_QUESTION_CHARS:  # (ids, titles and deps at their longest)
            break
        lines.append(line)
        size += len(line) + 1
    if len(tasks) > len(lines) - 1:
        lines.append(f"  ... and {len(tasks) - (len(lines) - 1)} more")
    return "\n".join(lines)
