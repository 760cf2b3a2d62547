#!/usr/bin/env bash
# Gatehouse vs HAProxy vs nginx on this machine: server CPU per TLS 1.3
# handshake (full ECDSA P-256, full RSA-2048, resumed) measured with two
# independent clients (BoringSSL: gatehouse bench handshake; OpenSSL:
# bench/ssl_client.py), bulk MB/s, L7 keep-alive requests/s and proxy CPU per
# request with TLS on both sides (wrk HTTP/1.1, h2load HTTP/2, one nginx HTTPS
# backend), the crypto floor, and optionally worker scaling (--workers 1,2).
# Proxies on CPU 0, load generators (and the L7 backend) on CPU 1, loopback only.
# Usage: bench/compare.sh [--gatehouse PATH] [--seconds N] [--clients bssl,openssl]
#                         [--servers gatehouse,haproxy,nginx] [--workers 1,2 | --scaling]
#                         [--skip-l7] [--skip-bulk] [--json FILE] [--processes N] [--concurrency N]
#                         [--l7-seconds N] [--h2-seconds N (0 skips h2load)] [--l7-rounds N]
# (default binary: build/proxy/gatehouse, as `bash .ci/test` builds it).
# Takes about five minutes (two more with --scaling); every process it starts
# is stopped at exit. Exits 1 when an L7 run failed (non-2xx answers, errors,
# a proxy died).
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
