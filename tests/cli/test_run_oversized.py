"""`codeyard run` with a run too big to submit: each task within its limit and the plan file
within a message, but goal, plan and test command together over what a message may carry. It is
bad input, refused before anything is submitted (exit 2); it used to be sent, refused by nats-py
(MaxPayloadError), and reported as NATS being out of reach (exit 1)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from typer.testing import CliRunner

from codeyard.bus import Bus, EmbeddedNats
from codeyard.cli import app
from codeyard.schemas import MAX_MESSAGE_BYTES, TaskSpec
from tests.cli.test_run_input import env, repo
from tests.coordinator.test_oversized_work import MAX_PAYLOAD, small_messages
from tests.processes import codeyard

__all__ = ["env", "repo", "small_messages"]  # fixtures, shared with other tests

GOAL = "g" * 19_000  # a goal is at most 20,000 characters
TEST_COMMAND = "make test " + "x" * 5_000


def plan_of(path: Path, tasks: int) -> str:
    """A plan of `tasks` tasks of about 57 KB each: under the 64 KiB a task may have."""
    path.write_bytes(
        msgspec.json.encode(
            [
                TaskSpec(
                    id=f"t{i}", title="t", description="d" * 19_000, acceptance=["a" * 19_000] * 2
                )
                for i in range(tasks)
            ]
        )
    )
    return str(path)


def url_of(bus: Bus) -> str:
    connected = bus.nc.connected_url
    assert connected is not None
    return f"nats://{connected.netloc}"


def test_a_run_over_a_codeyard_message_is_refused_before_it_is_submitted(
    env: dict[str, str], repo: Path, tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    plan = plan_of(tmp_path / "plan.json", tasks=18)
    assert Path(plan).stat().st_size < MAX_MESSAGE_BYTES  # a plan file that may be read
    args = ("run", GOAL, "--repo", str(repo), "--plan", plan, "--test-command", TEST_COMMAND)

    refused = codeyard(env | {"NATS_URL": nats_server.url}, *args)

    assert refused.returncode == 2, refused.stderr
    assert refused.stdout == ""  # no run was started (nor a coordinator asked: none runs here)
    assert refused.stderr.startswith("error: the run is 10")
    assert refused.stderr.endswith(
        " bytes to submit (goal, plan and test command), over the 1048576-byte limit of a "
        "codeyard message: shorten them, or leave detail to files in the repository\n"
    )


def test_a_run_over_the_servers_max_payload_is_refused_naming_it(
    env: dict[str, str], repo: Path, tmp_path: Path, small_messages: Bus
) -> None:
    """A server set to take less than codeyard's limit (max_payload in its configuration)."""
    plan = plan_of(tmp_path / "plan.json", tasks=1)

    on_small = env | {"NATS_URL": url_of(small_messages)}

    refused = codeyard(on_small, "run", GOAL, "--repo", str(repo), "--plan", plan)

    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith("error: the run is ")
    assert f" over the {MAX_PAYLOAD}-byte max_payload of the NATS server: " in refused.stderr


def test_nats_refusing_to_send_the_run_is_not_nats_out_of_reach(
    repo: Path, tmp_path: Path, small_messages: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the run get past the check (the server it reconnected to taking less than the
    one it connected to), nats-py's refusal says what it is too."""
    monkeypatch.setattr(Client, "max_payload", property(lambda _: MAX_MESSAGE_BYTES))
    monkeypatch.setenv("NATS_URL", url_of(small_messages))
    plan = plan_of(tmp_path / "plan.json", tasks=1)

    refused = CliRunner().invoke(app, ["run", GOAL, "--repo", str(repo), "--plan", plan])

    assert refused.exit_code == 2, refused.output[-500:]  # after the goal it printed
    assert "cannot reach NATS" not in refused.output
    assert " over the max_payload of the NATS server: shorten them" in " ".join(
        refused.output.split()  # rich may wrap long lines
    )
