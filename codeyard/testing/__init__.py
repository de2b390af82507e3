"""Test doubles that speak the real bus protocol, for tests and benchmarks. Never used by the
product's own code paths."""
