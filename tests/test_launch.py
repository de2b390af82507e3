"""What a worker process makes of a bad setting: refused while it starts, it is bad
configuration (exit 2, which `up` does not restart); a `ValueError` once it serves is not."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from codeyard import launch
from codeyard.bus import Bus, EmbeddedNats
from codeyard.bus.credentials import JS_API_VARIABLE, SERVICE_KEY_VARIABLE, Credentials
from codeyard.bus.permissions import SERVICE_ACCOUNT, WORKER_JS_API
from codeyard.bus.topology import Topology
from codeyard.bus.worker import Handler
from codeyard.config import Settings
from codeyard.deploy.nats_config import Deployment, write_deployment
from codeyard.launch import (
    BadConfiguration,
    configuring,
    principal_credentials,
    serve_role,
    service_children,
    service_key_of,
)


def test_a_value_refused_while_configuring_is_bad_configuration() -> None:
    with pytest.raises(BadConfiguration, match="no such model") as refused, configuring():
        raise ValueError("no such model")
    assert isinstance(refused.value.__cause__, ValueError)

    with pytest.raises(KeyError), configuring():  # anything else is left as it is
        raise KeyError("x")


async def test_a_worker_whose_handler_cannot_be_built_is_bad_configuration(
    nats_server: EmbeddedNats, bus: Bus, tmp_path: Path
) -> None:
    def make_handler(_: object) -> Handler:
        raise ValueError("review-x is a plugin reviewer")

    settings = Settings(NATS_URL=nats_server.url, data_dir=tmp_path)
    with pytest.raises(BadConfiguration, match="a plugin reviewer"):
        await serve_role(settings, "coder", make_handler, concurrency=1)


def test_a_refused_environment_is_bad_configuration_one_line_per_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from codeyard.llm import LLMSettings

    monkeypatch.setenv("CODEYARD_LLM_TEMPERATURE", "abc")
    with pytest.raises(BadConfiguration) as refused, configuring():
        LLMSettings()
    assert refused.value.problems == (
        "CODEYARD_LLM_TEMPERATURE: Input should be a valid number, unable to parse string as a "
        "number (got 'abc')",
    )


def test_why_a_server_could_not_listen_is_told_apart_from_a_port_in_use() -> None:
    """`up` said any address it could not bind was in use (an IPv6 one it could, too)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert launch.bind_problem(port, "127.0.0.1") == launch.IN_USE
        assert not launch.port_free(port)
    assert launch.bind_problem(port, "127.0.0.1") == ""
    assert launch.bind_problem(port, "192.0.2.1") == "Cannot assign requested address"
    if has_ipv6_loopback():
        assert launch.bind_problem(port, "::1") == ""


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_a_server_without_storage_for_the_streams_is_named_as_such(tmp_path: Path) -> None:
    """JetStream refused the events stream (1 GiB) on a small disk, and `up` said "cannot reach
    NATS at ...: ServerError()": nats-py's errors have an empty repr."""
    config = tmp_path / "small.conf"
    config.write_text(f'jetstream {{ store_dir: "{tmp_path / "js"}", max_file_store: 100MB }}\n')
    server = await EmbeddedNats(tmp_path / "store", config_file=config).start_async()
    try:
        with pytest.raises(launch.NatsUnreachable) as refused:
            await launch.prepare_bus(server.url, None, Topology())
    finally:
        server.stop()
    said = str(refused.value)
    assert said.startswith(f"NATS at {server.url} refused to set up codeyard's streams")
    assert "insufficient storage resources available (JetStream error 10047)" in said
    assert "choose a data dir on a larger disk (CODEYARD_DATA_DIR)" in said


def test_a_coordinator_without_a_service_key_says_what_it_risks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert service_key_of(None) is None
    assert caplog.text == ""  # NATS without users: no permission to rely on anyway
    assert service_key_of(Credentials("coordinator", "pw")) is None
    assert f"no {SERVICE_KEY_VARIABLE}: answers are not checked" in caplog.text
    with pytest.raises(BadConfiguration, match=f"^{SERVICE_KEY_VARIABLE}: .* at least 32"):
        service_key_of(Credentials("coordinator", "pw", "short"))
    key = service_key_of(Credentials("coordinator", "pw", "k" * 43))
    assert key is not None
    assert key.work_proof("coder", "r", "t", "a", 1) != key.work_proof("tester", "r", "t", "a", 1)


def env_of_up_s_children(deployment: Deployment, variable: str) -> dict[str, str | None]:
    """`variable` as `up` sets it for each of its children, by name, with the users of
    `deployment`."""
    children = service_children(
        "nats://127.0.0.1:4222",
        coders=1,
        agents=True,
        credentials=principal_credentials(deployment.credentials_dir),
    )
    return {child.name: (child.env or {}).get(variable) for child in children}


def test_up_hands_the_service_key_to_its_coordinator_alone(tmp_path: Path) -> None:
    deployment = write_deployment(tmp_path)
    key = deployment.credentials("coordinator").service_key
    keys = env_of_up_s_children(deployment, SERVICE_KEY_VARIABLE)
    assert {name: value for name, value in keys.items() if value} == {
        "coordinator": key,
        "safety-gate": key,
    }


def test_a_coordinator_given_its_user_by_the_environment_has_its_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As `docker compose` gives it, from its env file (`env_file:`)."""
    monkeypatch.setenv("CODEYARD_NATS_USER", "coordinator")
    monkeypatch.setenv("CODEYARD_NATS_PASSWORD", "pw")
    monkeypatch.setenv(SERVICE_KEY_VARIABLE, "k" * 43)
    credentials = Settings(data_dir=tmp_path).credentials("coordinator")
    assert credentials == Credentials("coordinator", "pw", "k" * 43)


def test_up_hands_each_worker_the_name_its_account_gives_jetstream_s_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apis = env_of_up_s_children(write_deployment(tmp_path), JS_API_VARIABLE)
    assert apis["coordinator"] is None
    assert apis["safety-gate"] is None
    assert {apis[name] for name in apis if name.startswith(("coder", "tester", "planner"))} == {
        WORKER_JS_API
    }
    # and a worker given its user by the environment (`env_file:`) uses it
    monkeypatch.setenv("CODEYARD_NATS_USER", "coder")
    monkeypatch.setenv("CODEYARD_NATS_PASSWORD", "pw")
    monkeypatch.setenv(JS_API_VARIABLE, WORKER_JS_API)
    assert Settings(data_dir=tmp_path).credentials("coder") == Credentials(
        "coder", "pw", js_api=WORKER_JS_API
    )


def test_up_hands_the_streams_of_its_server_from_before_accounts_to_the_services(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path)
    old = settings.embedded_dir() / "jetstream" / "jetstream" / "$G" / "streams" / "CY_WORK"
    old.mkdir(parents=True)
    deployment = launch.embedded_deployment(settings, 4333)
    moved = settings.embedded_dir() / "jetstream" / "jetstream" / SERVICE_ACCOUNT / "streams"
    assert (moved / "CY_WORK").is_dir()
    assert not old.parent.parent.exists()
    assert deployment.accounts


def test_up_hands_its_cap_on_tasks_in_flight_to_the_coordinator() -> None:
    def coordinator_args(max_in_flight: int | None = None) -> list[str]:
        url = "nats://127.0.0.1:4222"
        children = service_children(url, coders=1, agents=False, max_in_flight=max_in_flight)
        (coordinator,) = [child for child in children if child.name == "coordinator"]
        return list(coordinator.argv)

    assert "--max-in-flight" not in coordinator_args()
    args = coordinator_args(max_in_flight=6)
    assert args[args.index("--max-in-flight") + 1] == "6"
