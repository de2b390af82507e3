"""Every command reads its settings from the environment; a bad value is an error naming the
variable (exit 2), never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

from codeyard.bus.embedded import free_port
from tests.processes import codeyard


def env_with(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEYARD_"))}
    env.pop("NATS_URL", None)
    return env | {"CODEYARD_DATA_DIR": str(tmp_path), "CODEYARD_NATS_PORT": str(free_port())}


def test_a_bad_value_names_its_variable(tmp_path: Path) -> None:
    env = env_with(tmp_path) | {"CODEYARD_ACK_WAIT": "-1", "CODEYARD_NATS_PORT": "abc"}
    refused = codeyard(env, "status", timeout=60)
    assert refused.returncode == 2
    assert sorted(refused.stderr.splitlines()) == [
        "error: CODEYARD_ACK_WAIT: Input should be greater than 0 (got '-1')",
        "error: CODEYARD_NATS_PORT: Input should be a valid integer, unable to parse string as "
        "an integer (got 'abc')",
    ]


def test_up_refuses_an_infinite_duration_before_starting_anything(tmp_path: Path) -> None:
    """`inf` used to pass, and `up` crashed creating the streams (OverflowError)."""
    env = env_with(tmp_path) | {"CODEYARD_LEADER_TTL": "inf"}
    refused = codeyard(env, "up", "--no-agents", "--no-dashboard", timeout=60)
    assert refused.returncode == 2
    assert (
        refused.stderr
        == "error: CODEYARD_LEADER_TTL: Input should be a finite number (got 'inf')\n"
    )
    assert not (tmp_path / "nats").exists()


def test_a_nats_user_that_cannot_name_an_inbox_is_bad_configuration_for_every_service(
    tmp_path: Path,
) -> None:
    """Exit 2, which `up` does not restart: a worker exited 1 (a crash, restarted forever)."""
    env = env_with(tmp_path) | {
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "CODEYARD_NATS_USER": "svc.tester",
        "CODEYARD_NATS_PASSWORD": "secret",
    }
    for service in (("worker", "review", "--name", "static"), ("coordinator",)):
        refused = codeyard(env, *service, timeout=60)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.splitlines()[-1] == (
            "error: NATS user 'svc.tester': expected letters, digits, _ and - (it names the inbox)"
        )


def test_a_worker_started_on_its_own_names_each_bad_llm_variable_in_one_line(
    tmp_path: Path,
) -> None:
    """A worker read its LLM settings itself and printed pydantic's report of several lines,
    naming fields (`temperature`), not variables; `up` checks them first, a lone worker did
    not. No NATS is needed: the settings are read before connecting."""
    env = env_with(tmp_path) | {
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "OPENAI_API_KEY": "sk-test",
        "CODEYARD_LLM_TEMPERATURE": "abc",
        "CODEYARD_LLM_MAX_RETRIES": "-1",
    }
    refused = codeyard(env, "worker", "coder", timeout=60)
    assert refused.returncode == 2  # bad configuration: `up` does not restart it
    assert refused.stderr.splitlines() == [
        "error: CODEYARD_LLM_TEMPERATURE: Input should be a valid number, unable to parse string "
        "as a number (got 'abc')",
        "error: CODEYARD_LLM_MAX_RETRIES: Input should be greater than or equal to 0 (got '-1')",
    ]
