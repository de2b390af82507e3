"""`python -m codeyard.deploy nats-config --out DIR`: the same as `codeyard deploy ...`."""

from codeyard.cli import deploy_app

deploy_app()
