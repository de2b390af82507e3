#!/usr/bin/env bash
# Makes a Docker engine answer on codeyard's own socket and builds the sandbox image, for the
# docker backend of codeyard/sandbox (tests, CI, a development machine without a Docker service).
#
#   scripts/docker-engine.sh          # install docker.io if missing, start dockerd, build image
#
# dockerd is started by hand (machines here run no init system) on a fixed socket that codeyard
# finds by itself (CODEYARD_DOCKER_HOST, see codeyard/sandbox/docker.py), with its own data and
# exec roots so it never touches a system Docker's state. Sandbox containers use no network at
# all (network_mode=none), so the engine needs neither a bridge nor iptables rules: it starts
# with --bridge=none --iptables=false, and changes nothing in the host's firewall.
# Idempotent: an engine already answering on the socket is reused, an existing image is kept.
# Needs root (dockerd does); exits non-zero with the reason otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

RUN_DIR="${CODEYARD_DOCKER_RUN_DIR:-/run/codeyard-docker}"
SOCKET="$RUN_DIR/docker.sock"
DATA_ROOT="${CODEYARD_DOCKER_DATA_ROOT:-/var/lib/codeyard-docker}"
LOG="$RUN_DIR/dockerd.log"
HOST="unix://$SOCKET"

if [ "$(id -u)" -ne 0 ]; then
    echo "docker-engine.sh: dockerd needs root; run it as root (or start a Docker engine" \
        "yourself and set CODEYARD_DOCKER_HOST)" >&2
    exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io
fi

engine_answers() {
    docker -H "$HOST" info >/dev/null 2>&1
}

# A pid file left by an engine that was killed (a session's end kills it) makes dockerd, or the
# containerd it supervises, refuse to start; remove it unless its process is still that program.
remove_stale_pidfile() {
    local pidfile="$1" program="$2" pid
    [ -f "$pidfile" ] || return 0
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    if [ -z "$pid" ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" != "$program" ]; then
        rm -f "$pidfile"
    fi
}

if ! engine_answers; then
    mkdir -p "$RUN_DIR" "$DATA_ROOT"
    remove_stale_pidfile "$RUN_DIR/dockerd.pid" dockerd
    remove_stale_pidfile "$RUN_DIR/exec/containerd/containerd.pid" containerd
    if [ -f "$LOG" ]; then
        mv -f "$LOG" "$LOG.1" # so the log shows this start only
    fi
    # setsid: the engine outlives this script and the session that ran it.
    setsid dockerd \
        --host "$HOST" \
        --data-root "$DATA_ROOT" \
        --exec-root "$RUN_DIR/exec" \
        --pidfile "$RUN_DIR/dockerd.pid" \
        --iptables=false --ip6tables=false --bridge=none \
        </dev/null >>"$LOG" 2>&1 &
    for _ in $(seq 1 120); do
        if engine_answers; then
            break
        fi
        if ! kill -0 $! 2>/dev/null; then
            echo "docker-engine.sh: dockerd exited; the end of $LOG:" >&2
            tail -n 20 "$LOG" >&2
            exit 1
        fi
        sleep 0.5
    done
    if ! engine_answers; then
        echo "docker-engine.sh: dockerd did not answer on $SOCKET within 60 s; see $LOG" >&2
        exit 1
    fi
fi
echo "docker engine: $HOST ($(docker -H "$HOST" version --format '{{.Server.Version}}'))"

DOCKER_HOST="$HOST" ./scripts/build-sandbox-image.sh
