"""Who may publish and subscribe to what on the bus: one NATS user per principal.

Pure data, no I/O: `codeyard.deploy` renders it into a nats-server configuration, and a
connected `Bus` consults it to skip what its user may not do (a worker does not try to create
its consumer when only the coordinator may).

Principals and their NATS user names:

- `coordinator`: owns the topology (streams, buckets, the builtin roles' consumers), the runs,
  the lease; consumes results, dispatches work, answers `cy.ctl.*`.
- `gate`: answers `cy.gate.check`, records pending approvals, appends audit events.
- `planner`, `coder`, `tester`, `review`: pull their own role's work, publish their own role's
  results and announce themselves on their own role's presence subject. They cannot read
  other roles' work or results, nor publish them. They may get single records of `cy_runs`
  (a run's header says whether the run ended), but not list, watch or write it.
- `review-<name>`: a plugin reviewer `review.<name>` is its own principal, generated on demand
  (`codeyard deploy nats-config --reviewer NAME`), so one plugin cannot answer another's
  reviews. As for builtin roles, the coordinator creates its durable consumer (when a run names
  it): a worker allowed to create consumers could make one that pushes work onto any subject.
- `ctl`: the CLI and the people behind it. The only principal that may publish `cy.ctl.*`,
  hence the only one that approves or denies. It listens to `cy.presence.>` (`codeyard workers`).

JetStream acts on behalf of a client through subjects, so each of these is granted explicitly:
pulling is a publish to `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`, acks (and naks,
in-progress, term) are publishes to `$JS.ACK.<stream>.<consumer>.>`, every JetStream publish
and API call waits for a reply on the client's inbox.

Replies: each user gets its own inbox prefix `_INBOX.<user>` (`inbox_prefix`) and may subscribe
only there, so no principal can read another's replies: pulled work items and publish acks
arrive on inboxes too. Services answer requests through `allow_responses` (a one-off publish
permission on the reply subject of a request they received), not a grant on `_INBOX.>`.

Accounts: permissions alone cannot stop a worker from having JetStream publish stored bytes
onto a subject of its choice. A pull, a direct get or a consumer's delivery is answered on the
reply subject the client names, whatever that client may publish itself; replayed onto
`$KV.cy_runs.<run>` it would rewrite a run. So each worker has an account of its own
(`account_of`), without JetStream, and reaches the services' account (`SERVICE_ACCOUNT`, which
holds every stream) only through imports of exactly the subjects it is granted (`crossings`).
What the server publishes for it then goes back into the worker's own account, where nothing
listens but the worker itself.
"""

from __future__ import annotations

import re

import msgspec

from codeyard.bus import subjects

COORDINATOR = "coordinator"
GATE = "gate"
CTL = "ctl"
SERVICES = (COORDINATOR, GATE, CTL)
SERVICE_ACCOUNT = "CODEYARD"  # the services' account, which holds every stream
INBOX_ROOT = "_INBOX"
JS_API = "$JS.API"
# Where a worker's account imports JetStream's API: under its own name the account would also
# hear the server's "JetStream not enabled for account", which answers first.
WORKER_JS_API = f"JS.{SERVICE_ACCOUNT}.API"

# Every stream codeyard has, KV buckets and the object store included (their stream names).
STREAMS = (
    subjects.WORK_STREAM,
    subjects.RESULT_STREAM,
    subjects.EVENT_STREAM,
    subjects.JOURNAL_STREAM,
    f"KV_{subjects.RUNS_BUCKET}",
    f"KV_{subjects.APPROVALS_BUCKET}",
    f"KV_{subjects.LEADER_BUCKET}",
    f"OBJ_{subjects.ARTIFACTS_BUCKET}",
)

# The roles that ask the safety gate before acting (besides the coordinator).
ASKS_THE_GATE = frozenset({"tester"})

_USER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class UnknownPrincipal(ValueError):
    pass


class Grants(msgspec.Struct, frozen=True, kw_only=True):
    """Subjects (NATS wildcards allowed) a principal may publish to and subscribe to."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False

    def may_publish(self, subject: str) -> bool:
        return any(subject_matches(pattern, subject) for pattern in self.publish)

    def may_subscribe(self, subject: str) -> bool:
        return any(subject_matches(pattern, subject) for pattern in self.subscribe)


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS matching: `*` is one token, a trailing `>` one or more. A wildcard in `subject`
    (a subscription) is covered only by the same or a wider wildcard in `pattern`."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or tokens[index] == ">":
            return False
        if token != "*" and token != tokens[index]:
            return False
    return len(tokens) == len(wanted)


def principal_of_role(role: str) -> str:
    """The NATS user of a worker role: its consumer name (no dots: `review.x` -> `review-x`)."""
    return subjects.consumer_name(role)


def role_of_principal(principal: str) -> str | None:
    if principal in SERVICES:
        return None
    role = principal.replace("-", ".", 1) if principal.startswith("review-") else principal
    try:
        return subjects.check_role(role)
    except subjects.UnknownRole:
        return None


def principals(reviewers: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Every principal of a deployment, with plugin reviewers named by `reviewers` (`security`
    or `review.security`)."""
    plugins = tuple(
        principal_of_role(name if name.startswith("review.") else f"review.{name}")
        for name in reviewers
    )
    builtin = tuple(principal_of_role(role) for role in subjects.BUILTIN_ROLES)
    return tuple(dict.fromkeys((*SERVICES, *builtin, *plugins)))


def inbox_prefix(user: str) -> str:
    """The inbox prefix a connection as `user` must use: the only inboxes it may read."""
    if not _USER.match(user):
        raise UnknownPrincipal(
            f"NATS user {user!r}: expected letters, digits, _ and - (it names the inbox)"
        )
    return f"{INBOX_ROOT}.{user}"


def consumer_create_subject(stream: str, consumer: str, filter_subject: str) -> str:
    """The create/update API subject that names the filter (the server rejects a request whose
    filter differs), as nats-py sends it for a named consumer with one filter."""
    return f"{JS_API}.CONSUMER.CREATE.{stream}.{consumer}.{filter_subject}"


def _replies(user: str) -> tuple[str, ...]:
    return (f"{inbox_prefix(user)}.>",)


def _kv(bucket: str, *, scan: bool = False) -> tuple[str, ...]:
    """Read (get, status), write (put, create, update, delete) one bucket; with `scan`, list its
    latest values through a short-lived consumer (`codeyard.bus.kv_scan`)."""
    stream = f"KV_{bucket}"
    grants: tuple[str, ...] = (
        f"{JS_API}.STREAM.INFO.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}.>",
        f"{JS_API}.STREAM.MSG.GET.{stream}",
        f"$KV.{bucket}.>",
    )
    if scan:
        grants += (
            f"{JS_API}.CONSUMER.CREATE.{stream}.>",
            f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.>",
            f"{JS_API}.CONSUMER.DELETE.{stream}.>",
        )
    return grants


def _journal() -> tuple[str, ...]:
    """Append to runs' journals, read them back (last entry, entries after a sequence) and
    purge them (`codeyard.coordinator.run_store`)."""
    stream = subjects.JOURNAL_STREAM
    return (
        subjects.journal_subject(">"),
        f"{JS_API}.STREAM.INFO.{stream}",
        f"{JS_API}.STREAM.MSG.GET.{stream}",
        f"{JS_API}.STREAM.PURGE.{stream}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.>",
        f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.>",
        f"{JS_API}.CONSUMER.DELETE.{stream}.>",
    )


def _objects(bucket: str, *, write: bool = False) -> tuple[str, ...]:
    """Read objects of one object store by direct gets (`codeyard.bus.object_reader`), which
    answer on the reader's own inbox; with `write`, also all nats-py's object store does to
    put, list, replace and delete objects (purging chunks). Snapshots and large patches travel
    this way (`codeyard.workspace`)."""
    stream = f"OBJ_{bucket}"
    grants: tuple[str, ...] = (
        f"{JS_API}.STREAM.INFO.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}.>",
    )
    if write:
        grants += (
            f"{JS_API}.STREAM.NAMES",
            f"{JS_API}.STREAM.MSG.GET.{stream}",
            f"{JS_API}.STREAM.PURGE.{stream}",
            f"{JS_API}.CONSUMER.CREATE.{stream}",
            f"{JS_API}.CONSUMER.CREATE.{stream}.>",
            f"{JS_API}.CONSUMER.INFO.{stream}.*",
            f"{JS_API}.CONSUMER.DELETE.{stream}.*",
            f"$JS.FC.{stream}.>",
            f"$O.{bucket}.>",
        )
    return grants


def _coordinator() -> Grants:
    topology = (
        f"{JS_API}.INFO",
        f"{JS_API}.STREAM.NAMES",
        f"{JS_API}.STREAM.LIST",
        *(
            f"{JS_API}.STREAM.{verb}.{stream}"
            for verb in ("CREATE", "UPDATE", "INFO")
            for stream in STREAMS
        ),
        f"{JS_API}.CONSUMER.CREATE.{subjects.WORK_STREAM}.>",
        f"{JS_API}.CONSUMER.CREATE.{subjects.RESULT_STREAM}.>",
        f"{JS_API}.CONSUMER.INFO.{subjects.WORK_STREAM}.*",
        f"{JS_API}.CONSUMER.INFO.{subjects.RESULT_STREAM}.*",
        # queue depth per role for the metrics, plugin reviewers' consumers included
        f"{JS_API}.CONSUMER.LIST.{subjects.WORK_STREAM}",
    )
    results = (
        f"{JS_API}.CONSUMER.MSG.NEXT.{subjects.RESULT_STREAM}.{subjects.COORDINATOR_CONSUMER}",
        f"$JS.ACK.{subjects.RESULT_STREAM}.{subjects.COORDINATOR_CONSUMER}.>",
    )
    return Grants(
        publish=(
            *topology,
            *results,
            *_kv(subjects.RUNS_BUCKET, scan=True),
            *_journal(),
            *_kv(subjects.APPROVALS_BUCKET, scan=True),
            *_kv(subjects.LEADER_BUCKET),
            *_objects(subjects.ARTIFACTS_BUCKET, write=True),
            "cy.work.>",
            "cy.events.>",
            "cy.cancel.>",
            subjects.GATE_CHECK,
        ),
        subscribe=(f"{subjects.CTL_PREFIX}.>", *_replies(COORDINATOR)),
        allow_responses=True,
    )


def _gate() -> Grants:
    return Grants(
        publish=("cy.events.>", *_kv(subjects.APPROVALS_BUCKET)),
        subscribe=(subjects.GATE_CHECK, *_replies(GATE)),
        allow_responses=True,
    )


def _ctl() -> Grants:
    events = subjects.EVENT_STREAM
    return Grants(
        publish=(
            f"{subjects.CTL_PREFIX}.>",
            # `codeyard run` follows a run's events through an ordered (push) consumer
            f"{JS_API}.STREAM.INFO.{events}",
            f"{JS_API}.CONSUMER.CREATE.{events}",
            f"{JS_API}.CONSUMER.CREATE.{events}.>",
            f"{JS_API}.CONSUMER.INFO.{events}.*",
            f"{JS_API}.CONSUMER.DELETE.{events}.*",
            f"$JS.FC.{events}.>",
            # the dashboard shows large patches, which travel through the object store
            *_objects(subjects.ARTIFACTS_BUCKET),
        ),
        # `codeyard workers` listens to the workers' announcements
        subscribe=(f"{subjects.PRESENCE_PREFIX}.>", *_replies(CTL)),
    )


def _worker(role: str) -> Grants:
    user = principal_of_role(role)
    work = subjects.WORK_STREAM
    publish = [
        f"{JS_API}.CONSUMER.INFO.{work}.{user}",
        f"{JS_API}.CONSUMER.MSG.NEXT.{work}.{user}",
        f"$JS.ACK.{work}.{user}.>",
        subjects.result_subject(role),
        subjects.presence_subject(role),  # announces itself as its own role only
        # (no events: its dead letters go on its result subject, and the coordinator files
        # them; a role that could write events would forge any run's)
        # whether a work item's run has ended, from its header (`codeyard.bus.run_ends`): a
        # message get on the runs' bucket only, no listing, watching nor writing
        f"{JS_API}.STREAM.MSG.GET.KV_{subjects.RUNS_BUCKET}",
        # the run's code, and patches over 64 KiB (which the coordinator stores)
        *_objects(subjects.ARTIFACTS_BUCKET),
    ]
    if role in ASKS_THE_GATE:
        publish.append(subjects.GATE_CHECK)
    return Grants(publish=tuple(publish), subscribe=("cy.cancel.*", *_replies(user)))


class Crossings(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker's account imports from the services' account: a service per subject it
    may publish (a request answered, a pull answered by messages until it expires, a result
    published with its publish ack, an ack), a stream per subject it may subscribe to outside
    its own inbox (the cancellations)."""

    services: tuple[str, ...]
    streams: tuple[str, ...]


def account_of(principal: str) -> str:
    """The NATS account of `principal`: the services share the one that holds the streams;
    each worker has its own."""
    return SERVICE_ACCOUNT if principal in SERVICES else f"{SERVICE_ACCOUNT}-{principal}"


def crossings(user: str, grants: Grants) -> Crossings:
    """What the account of worker `user` imports, so that its `grants` reach the services'
    account and nothing else does (a service's principals share that account: none)."""
    if user in SERVICES:
        return Crossings(services=(), streams=())
    inbox = _replies(user)
    return Crossings(
        services=grants.publish,
        streams=tuple(subject for subject in grants.subscribe if subject not in inbox),
    )


def through(subject: str, js_api: str) -> str:
    """`subject` as named by a client whose JetStream API is at `js_api`."""
    if js_api != JS_API and subject.startswith(f"{JS_API}."):
        return js_api + subject[len(JS_API) :]
    return subject


def grants_through(grants: Grants, js_api: str) -> Grants:
    """`grants` as named by a client whose JetStream API is at `js_api`."""
    return msgspec.structs.replace(
        grants, publish=tuple(through(subject, js_api) for subject in grants.publish)
    )


def answers_stream(subject: str) -> bool:
    """Whether a request on `subject` is answered by many messages (a pull: each delivered
    work item is an answer) rather than one."""
    return subject.startswith(f"{JS_API}.CONSUMER.MSG.NEXT.")


def grants_for(principal: str) -> Grants:
    """The grants of `principal`; `UnknownPrincipal` if codeyard has no such principal."""
    if principal == COORDINATOR:
        return _coordinator()
    if principal == GATE:
        return _gate()
    if principal == CTL:
        return _ctl()
    role = role_of_principal(principal)
    if role is None:
        raise UnknownPrincipal(
            f"unknown principal {principal!r}: expected one of {', '.join(principals())} "
            "or review-<name>"
        )
    return _worker(role)
