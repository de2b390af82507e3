"""Deployment artifacts generated from code: the NATS server configuration with one user per
principal (`nats_config`)."""
