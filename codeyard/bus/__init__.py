"""NATS connection, subjects, JetStream topology, the worker loop and the embedded server."""

from codeyard.bus.connection import Bus
from codeyard.bus.embedded import EmbeddedNats, EmbeddedServerError, find_nats_server
from codeyard.bus.store import StaleRevision, Versioned, VersionedStore
from codeyard.bus.topology import Topology, ensure_topology
from codeyard.bus.worker import GiveUp, PullWorker, RetryLater

__all__ = [
    "Bus",
    "EmbeddedNats",
    "EmbeddedServerError",
    "GiveUp",
    "PullWorker",
    "RetryLater",
    "StaleRevision",
    "Topology",
    "Versioned",
    "VersionedStore",
    "ensure_topology",
    "find_nats_server",
]
