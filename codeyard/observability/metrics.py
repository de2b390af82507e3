"""Every Prometheus metric codeyard exports, in one place (the process-wide default registry).

Names start with `codeyard_`. Label values come from bounded sets (roles, models, backends,
outcomes, states, policy actions), never from run or task ids, so the series stay few.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Handlers and sandbox runs take from milliseconds to many minutes (an LLM thinking, a test
# suite); the default buckets stop at 10 s.
SLOW_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
# A coordinator step is a batch of results and one pipelined commit: sub-millisecond upward.
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

# --- workers (codeyard.bus.worker) -----------------------------------------------------------

WORK_HANDLED = Counter(
    "codeyard_work_items_handled", "Work items answered with the handler's result", ["role"]
)
WORK_FAILED = Counter(
    "codeyard_work_items_failed",
    "Work items answered with WorkFailed (gave up, out of deliveries, or result too big)",
    ["role"],
)
WORK_RETRIED = Counter(
    "codeyard_work_items_retried", "Work items handed back for a later redelivery", ["role"]
)
WORK_DEAD_LETTERED = Counter(
    "codeyard_work_items_dead_lettered", "Undecodable work items recorded as DeadLetter", ["role"]
)
HANDLER_SECONDS = Histogram(
    "codeyard_handler_duration_seconds",
    "Time a role's handler took on one work item, by how it ended "
    "(ok, retry, failed, approval, cancelled)",
    ["role", "outcome"],
    buckets=SLOW_BUCKETS,
)

# --- LLM (codeyard.llm.openai_client) ---------------------------------------------------------

LLM_CALLS = Counter(
    "codeyard_llm_calls",
    "Chat-completion requests, by outcome (ok, http_error, rejected, timeout, connection_error, "
    "malformed: a 200 whose body is no chat completion)",
    ["role", "model", "outcome"],
)
LLM_TOKENS = Counter(
    "codeyard_llm_tokens",
    "Tokens the endpoint reported, kind=prompt|completion",
    ["role", "model", "kind"],
)
LLM_INVALID_ANSWERS = Counter(
    "codeyard_llm_invalid_answers",
    "Answers that did not fit the schema and were re-asked",
    ["role", "model"],
)
LLM_SECONDS = Histogram(
    "codeyard_llm_call_duration_seconds",
    "Latency of each chat-completion request, answered or not",
    ["role", "model"],
    buckets=SLOW_BUCKETS,
)

# --- sandbox (codeyard.sandbox) ---------------------------------------------------------------

SANDBOX_RUNS = Counter(
    "codeyard_sandbox_runs",
    "Sandboxed commands, by outcome: ok, failed (non-zero exit), the limit that stopped it "
    "(wall_time, cpu, memory, pids, file_size, open_files, disk) or error (the sandbox could "
    "not run it)",
    ["backend", "outcome"],
)
SANDBOX_SECONDS = Histogram(
    "codeyard_sandbox_run_duration_seconds",
    "Wall time of sandboxed commands",
    ["backend"],
    buckets=SLOW_BUCKETS,
)

# --- safety gate (codeyard.agents.safety_gate) ------------------------------------------------

GATE_DECISIONS = Counter(
    "codeyard_gate_decisions",
    "Decisions of the safety gate (allow, deny, needs_approval) by checked action",
    ["action", "decision"],
)

# --- coordinator (codeyard.coordinator.service) -----------------------------------------------

COORDINATOR_LEADING = Gauge(
    "codeyard_coordinator_leading", "1 while this coordinator holds the leader lease"
)
COORDINATOR_RESULTS = Counter(
    "codeyard_coordinator_results",
    "Results taken from CY_RESULTS, by outcome (applied, ignored, malformed, refused: not the"
    " answer of the role whose subject it came on, held: handed back while the artifacts store"
    " is away)",
    ["outcome"],
)
COORDINATOR_DISPATCHES = Counter(
    "codeyard_coordinator_dispatches", "Work items sent (re-sends after a failover too)", ["role"]
)
COORDINATOR_STEP_SECONDS = Histogram(
    "codeyard_coordinator_step_duration_seconds",
    "One step: apply a batch of inputs and make it durable",
    buckets=STEP_BUCKETS,
)
COORDINATOR_TASKS = Gauge(
    "codeyard_coordinator_tasks", "Tasks of the open runs of the leader, by state", ["state"]
)
COORDINATOR_RUNS = Gauge(
    "codeyard_coordinator_open_runs", "Open runs of the leader, by state", ["state"]
)

# --- garbage collection (codeyard.coordinator.artifact_collector, workspace.cache_pruning) -----

ARTIFACTS_DELETED = Counter(
    "codeyard_artifacts_deleted",
    "Objects the leading coordinator deleted from cy_artifacts, by kind (bundle, patch)",
    ["kind"],
)
ARTIFACT_BYTES_DELETED = Counter(
    "codeyard_artifact_bytes_deleted", "Bytes of the objects deleted from cy_artifacts"
)
INTEGRATION_CLONES_DELETED = Counter(
    "codeyard_integration_clones_deleted",
    "Integration clones the leading coordinator deleted from its data dir, by why (ended: the "
    "run ended longer than the retention ago; no_run: no such run, unchanged for as long)",
    ["reason"],
)
INTEGRATION_CLONE_BYTES_DELETED = Counter(
    "codeyard_integration_clone_bytes_deleted", "Bytes of the integration clones deleted"
)
SNAPSHOT_CACHE_PRUNED = Counter(
    "codeyard_snapshot_cache_pruned",
    "Entries a worker removed from its snapshot cache, by kind (bundle, repository, partial)",
    ["kind"],
)

# --- JetStream consumers (read by the leading coordinator) ------------------------------------

CONSUMER_PENDING = Gauge(
    "codeyard_consumer_pending_messages",
    "Messages not yet delivered to the consumer (queue depth)",
    ["stream", "consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "codeyard_consumer_ack_pending_messages",
    "Messages delivered and not yet acknowledged",
    ["stream", "consumer"],
)
CONSUMER_REDELIVERED = Gauge(
    "codeyard_consumer_redelivered_messages",
    "Messages delivered more than once and not yet acknowledged",
    ["stream", "consumer"],
)
