"""Benchmarks run against a running codeyard: `codeyard bench ...`."""
