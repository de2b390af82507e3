"""The permission table itself: what each principal may do, checked without a server."""

from __future__ import annotations

import itertools

import pytest

from codeyard.bus.permissions import (
    COORDINATOR,
    CTL,
    GATE,
    SERVICE_ACCOUNT,
    SERVICES,
    WORKER_JS_API,
    Crossings,
    UnknownPrincipal,
    account_of,
    answers_stream,
    consumer_create_subject,
    crossings,
    grants_for,
    grants_through,
    inbox_prefix,
    principal_of_role,
    principals,
    role_of_principal,
    subject_matches,
    through,
)
from codeyard.bus.run_ends import HEADER_GET
from codeyard.bus.subjects import (
    APPROVALS_BUCKET,
    BUILTIN_ROLES,
    DEAD_LETTER_RUN,
    GATE_CHECK,
    JOURNAL_STREAM,
    PRESENCE_PREFIX,
    RESULT_STREAM,
    RUNS_BUCKET,
    WORK_STREAM,
    consumer_name,
    ctl_subject,
    events_subject,
    presence_subject,
    result_subject,
    work_subject,
)

ALL = principals(("security", "review.style"))
WORKER_ROLES = (*BUILTIN_ROLES, "review.security", "review.style")


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("a.b", "a.b", True),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        ("a.b", "a.*", False),  # a wildcard subscription is wider than one subject
        ("a.*", "a.*", True),
        ("a.*", "a.>", False),
        ("a.>", "a.*.c", True),
        ("a.b.c", "a.b", False),
    ],
)
def test_subject_matching_follows_nats(pattern: str, subject: str, matches: bool) -> None:
    assert subject_matches(pattern, subject) is matches


def test_principals_are_the_services_the_roles_and_named_plugins() -> None:
    assert ALL == (
        "coordinator",
        "gate",
        "ctl",
        "planner",
        "coder",
        "tester",
        "review",
        "review-security",
        "review-style",
    )
    assert role_of_principal("review-security") == "review.security"
    assert role_of_principal("ctl") is None
    with pytest.raises(UnknownPrincipal):
        grants_for("admin")


@pytest.mark.parametrize("verb", ["approve", "deny", "submit", "cancel"])
def test_only_ctl_may_publish_control_requests(verb: str) -> None:
    allowed = [p for p in ALL if grants_for(p).may_publish(ctl_subject(verb))]
    assert allowed == [CTL]


def test_no_worker_touches_another_roles_work_results_or_replies() -> None:
    for mine, theirs in itertools.permutations(WORKER_ROLES, 2):
        grants = grants_for(principal_of_role(mine))
        other = consumer_name(theirs)
        assert not grants.may_publish(result_subject(theirs)), (mine, theirs)
        assert not grants.may_publish(work_subject(theirs)), (mine, theirs)
        assert not grants.may_subscribe(work_subject(theirs)), (mine, theirs)
        assert not grants.may_subscribe(result_subject(theirs)), (mine, theirs)
        assert not grants.may_publish(f"$JS.API.CONSUMER.MSG.NEXT.{WORK_STREAM}.{other}")
        assert not grants.may_publish(f"$JS.ACK.{WORK_STREAM}.{other}.1.1.1.1.1")
        assert not grants.may_subscribe(f"{inbox_prefix(other)}.x"), (mine, theirs)
    for role in WORKER_ROLES:
        grants = grants_for(principal_of_role(role))
        assert grants.may_publish(result_subject(role))
        assert grants.may_publish(f"$JS.API.CONSUMER.MSG.NEXT.{WORK_STREAM}.{consumer_name(role)}")
        assert not grants.may_subscribe("_INBOX.>")
        assert not grants.may_publish(work_subject(role))  # only the coordinator dispatches


def test_only_the_coordinator_creates_topology() -> None:
    for subject in ("$JS.API.STREAM.CREATE.CY_WORK", "$JS.API.STREAM.CREATE.KV_cy_runs"):
        assert [p for p in ALL if grants_for(p).may_publish(subject)] == ["coordinator"]
    for principal in ALL:  # and nobody deletes or purges streams
        assert not grants_for(principal).may_publish("$JS.API.STREAM.DELETE.CY_WORK")
        assert not grants_for(principal).may_publish("$JS.API.STREAM.PURGE.CY_WORK")


def test_only_the_coordinator_creates_consumers_of_work_plugins_included() -> None:
    """A consumer's creator chooses where a push consumer sends its messages."""
    for role in WORKER_ROLES:
        own = consumer_create_subject(WORK_STREAM, consumer_name(role), work_subject(role))
        assert [p for p in ALL if grants_for(p).may_publish(own)] == ["coordinator"]


def test_workers_have_accounts_of_their_own_and_services_share_one() -> None:
    assert {account_of(p) for p in SERVICES} == {SERVICE_ACCOUNT}
    workers = [p for p in ALL if p not in SERVICES]
    assert len({account_of(p) for p in workers}) == len(workers)
    assert SERVICE_ACCOUNT not in {account_of(p) for p in workers}


def test_a_worker_imports_what_it_is_granted_and_nothing_more() -> None:
    for role in WORKER_ROLES:
        user = principal_of_role(role)
        grants = grants_for(user)
        crossing = crossings(user, grants)
        assert crossing.services == grants.publish
        # its inbox is its own account's: answers come back to it without an import
        assert crossing.streams == ("cy.cancel.*",)
    for service in SERVICES:
        assert crossings(service, grants_for(service)) == Crossings(services=(), streams=())


def test_a_pull_is_answered_by_a_stream_of_messages_other_requests_by_one() -> None:
    assert answers_stream(f"$JS.API.CONSUMER.MSG.NEXT.{WORK_STREAM}.coder")
    assert not answers_stream(f"$JS.API.CONSUMER.INFO.{WORK_STREAM}.coder")
    assert not answers_stream(result_subject("coder"))


def test_a_worker_names_jetstream_s_api_under_its_import() -> None:
    coder = grants_for("coder")
    moved = grants_through(coder, WORKER_JS_API)
    pull = f"CONSUMER.MSG.NEXT.{WORK_STREAM}.coder"
    assert moved.may_publish(f"{WORKER_JS_API}.{pull}")
    assert not moved.may_publish(f"$JS.API.{pull}")
    assert moved.may_publish(result_subject("coder"))  # other subjects keep their names
    assert f"$JS.ACK.{WORK_STREAM}.coder.>" in moved.publish
    assert through(f"$JS.API.{pull}", "$JS.API") == f"$JS.API.{pull}"
    assert grants_through(coder, "$JS.API") == coder


def test_the_gate_is_asked_by_the_coordinator_and_the_tester_and_answers() -> None:
    askers = [p for p in ALL if grants_for(p).may_publish(GATE_CHECK)]
    assert askers == ["coordinator", "tester"]
    gate = grants_for("gate")
    assert gate.may_subscribe(GATE_CHECK)
    assert gate.allow_responses


def test_every_principal_reads_only_its_own_inbox() -> None:
    for mine, theirs in itertools.permutations(ALL, 2):
        assert not grants_for(mine).may_subscribe(f"{inbox_prefix(theirs)}.abc.1"), (mine, theirs)
    for principal in ALL:
        assert grants_for(principal).may_subscribe(f"{inbox_prefix(principal)}.abc.1")


def test_an_inbox_prefix_needs_a_plain_user_name() -> None:
    assert inbox_prefix("review-security") == "_INBOX.review-security"
    for bad in ("", "a.b", "a*", "a>", "a b"):
        with pytest.raises(UnknownPrincipal):
            inbox_prefix(bad)


def test_workers_announce_only_their_own_role_and_ctl_hears_them_all() -> None:
    for mine, theirs in itertools.permutations(WORKER_ROLES, 2):
        grants = grants_for(principal_of_role(mine))
        assert grants.may_publish(presence_subject(mine)), mine
        assert not grants.may_publish(presence_subject(theirs)), (mine, theirs)
    announcers = [p for p in ALL if grants_for(p).may_publish(presence_subject("coder"))]
    assert announcers == ["coder"]
    listeners = [p for p in ALL if grants_for(p).may_subscribe(f"{PRESENCE_PREFIX}.>")]
    assert listeners == [CTL]


def test_workers_may_get_run_records_and_nothing_more_of_the_runs() -> None:
    """Whether a work item's run ended is in the run's header: a message get on the runs'
    bucket, not one on any other stream, nor listing, watching or writing the runs."""
    runs = f"KV_{RUNS_BUCKET}"
    for role in WORKER_ROLES:
        grants = grants_for(principal_of_role(role))
        assert grants.may_publish(HEADER_GET), role
        for stream in (f"KV_{APPROVALS_BUCKET}", WORK_STREAM, RESULT_STREAM, JOURNAL_STREAM):
            assert not grants.may_publish(f"$JS.API.STREAM.MSG.GET.{stream}"), (role, stream)
        for subject in (
            f"$KV.{RUNS_BUCKET}.run1",
            f"$JS.API.CONSUMER.CREATE.{runs}",
            f"$JS.API.CONSUMER.CREATE.{runs}.watch.$KV.{RUNS_BUCKET}.>",
            f"$JS.API.STREAM.INFO.{runs}",
            f"$JS.API.STREAM.MSG.DELETE.{runs}",
            f"$JS.API.STREAM.PURGE.{runs}",
        ):
            assert not grants.may_publish(subject), (role, subject)
        assert not grants.may_subscribe(f"$KV.{RUNS_BUCKET}.>"), role


def test_only_the_services_write_events() -> None:
    """A worker that could write events would forge any run's: its end, which `codeyard run`
    believes, or a gate's audit. Its dead letters go on its result subject instead."""
    writers = [p for p in ALL if grants_for(p).may_publish(events_subject("run1"))]
    assert writers == [COORDINATOR, GATE]
    for role in WORKER_ROLES:
        assert not grants_for(principal_of_role(role)).may_publish(events_subject(DEAD_LETTER_RUN))
