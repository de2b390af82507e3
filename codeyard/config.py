"""Configuration from the environment (`CODEYARD_*`, plus the conventional `NATS_URL`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from codeyard.bus.topology import DAY, Topology


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("codeyard"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CODEYARD_", extra="ignore")

    nats_url: str = Field(
        default="",
        validation_alias=AliasChoices("NATS_URL", "CODEYARD_NATS_URL"),
        description="NATS server to use; empty starts an embedded nats-server",
    )
    data_dir: Path = Field(
        default_factory=default_data_dir, description="embedded server store, caches, reports"
    )
    nats_port: int = Field(default=4222, ge=0, le=65535, description="embedded server port")
    ack_wait: float = Field(
        default=30.0, gt=0, description="seconds before unacked work is redelivered"
    )
    leader_ttl: float = Field(
        default=5.0, gt=0, description="seconds a dead coordinator leader keeps the lease"
    )
    local_llm: bool = Field(
        default=True,
        description="with no LLM endpoint configured, serve the bundled SmolLM2 (codeyard[local])",
    )
    event_retention_days: float = Field(default=30.0, gt=0, description="events stream max age")
    sandbox: Literal["auto", "docker", "bwrap", "process"] = Field(
        default="auto",
        description="backend for generated code: auto = docker, else bwrap, else refuse",
    )
    sandbox_image: str = Field(
        default="codeyard-sandbox:bookworm",
        min_length=1,
        description="image of the docker backend (scripts/build-sandbox-image.sh builds it)",
    )
    docker_host: str = Field(
        default="",
        description="Docker engine; empty: DOCKER_HOST, else /run/codeyard-docker/docker.sock "
        "when it exists, else Docker's default socket",
    )
    allow_unsandboxed: bool = Field(
        default=False,
        description="permit sandbox=process, which runs generated code with no isolation",
    )

    def topology(self) -> Topology:
        return Topology(
            ack_wait=self.ack_wait,
            leader_ttl=self.leader_ttl,
            event_max_age=self.event_retention_days * DAY,
        )
