"""Every subject, stream, consumer and bucket name codeyard uses, in one place.

Roles are fixed words; plugin reviewers are `review.<name>`, so their work arrives on
`cy.work.review.<name>` and their durable consumer is `review-<name>`.
"""

from __future__ import annotations

import re

WORK_STREAM = "CY_WORK"
RESULT_STREAM = "CY_RESULTS"
EVENT_STREAM = "CY_EVENTS"
JOURNAL_STREAM = "CY_JOURNAL"

RUNS_BUCKET = "cy_runs"
APPROVALS_BUCKET = "cy_approvals"
LEADER_BUCKET = "cy_leader"
ARTIFACTS_BUCKET = "cy_artifacts"

GATE_CHECK = "cy.gate.check"
GATE_QUEUE = "safety-gate"
CTL_PREFIX = "cy.ctl"
PRESENCE_PREFIX = "cy.presence"
COORDINATOR_CONSUMER = "coordinator"

BUILTIN_ROLES = ("planner", "coder", "tester", "review")
DEAD_LETTER_RUN = "_unrouted"

_ROLE = re.compile(r"^(planner|coder|tester|review(\.[a-z0-9][a-z0-9_-]{0,31})?)$")


class UnknownRole(ValueError):
    pass


def check_role(role: str) -> str:
    if not _ROLE.fullmatch(role):
        raise UnknownRole(
            f"unknown role {role!r}: expected one of {', '.join(BUILTIN_ROLES)} "
            "or review.<name> (lowercase letters, digits, _ and -)"
        )
    return role


def journal_subject(run_id: str) -> str:
    """Where the coordinator journals a run's changes between checkpoints to `cy_runs`."""
    return f"cy.journal.{run_id}"


def journal_events_subject(run_id: str) -> str:
    """Where the coordinator keeps the events of a run's step too many for its journal entry,
    until the entry is stored (`codeyard.coordinator.run_store`)."""
    return f"cy.journal.{run_id}.events"


WORK_PREFIX = "cy.work."


def work_subject(role: str) -> str:
    return f"{WORK_PREFIX}{check_role(role)}"


RESULT_PREFIX = "cy.result."


def result_subject(role: str) -> str:
    return f"{RESULT_PREFIX}{check_role(role)}"


def role_of_result_subject(subject: str) -> str:
    """The role whose results `subject` carries (its workers alone may publish there)."""
    return subject.removeprefix(RESULT_PREFIX)


def events_subject(run_id: str) -> str:
    return f"cy.events.{run_id or DEAD_LETTER_RUN}"


def cancel_subject(run_id: str) -> str:
    """Core NATS (not stored): tells workers to drop work of a run that no longer needs it."""
    return f"cy.cancel.{run_id}"


def presence_subject(role: str) -> str:
    """Core NATS (not stored): each worker announces itself here (`codeyard workers` listens)."""
    return f"{PRESENCE_PREFIX}.{check_role(role)}"


def ctl_subject(verb: str) -> str:
    return f"{CTL_PREFIX}.{verb}"


def consumer_name(role: str) -> str:
    """Durable consumer names may not contain dots."""
    return check_role(role).replace(".", "-")
