"""`python -m codeyard.deploy nats-config --out DIR`: the same as `codeyard deploy ...`."""

import sys

from codeyard.cli import app

app(args=["deploy", *sys.argv[1:]], prog_name="python -m codeyard")
