#!/usr/bin/env bash
# Gatehouse vs HAProxy vs nginx on this machine: server CPU per TLS 1.3
# handshake (full ECDSA P-256, full RSA-2048, resumed), bulk MB/s, and the
# crypto floor. Servers on CPU 0, the load generator on CPU 1, loopback only.
# Usage: bench/compare.sh [--gatehouse PATH] [--seconds N] [--concurrency N]
# (default binary: build/proxy/gatehouse, as `bash .ci/test` builds it).
# Takes about two minutes; every process it starts is stopped at exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=""
cleanup() {
  # compare.py stops its own servers; this covers it being killed mid-run.
  if [ -n "$py" ] && kill -0 "$py" 2>/dev/null; then
    kill -TERM "$py" 2>/dev/null || true
    wait "$py" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
ulimit -n 20000 2>/dev/null || true
python3 "$here/compare.py" "$@" &
py=$!
wait "$py"
