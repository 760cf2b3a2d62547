#!/usr/bin/env python3
"""A TLS 1.3 handshake load generator built on OpenSSL (Python's ssl module),
independent of `gatehouse bench handshake` (BoringSSL), to check that a
verdict about server CPU per handshake does not depend on the client.

N worker processes (each pinned to --cpu, one connection at a time) loop
connect -> TLS 1.3 handshake (SNI, no certificate verification; the
handshake signature is still checked) -> close_notify -> close, for a fixed
duration. Nothing else is sent: a server with an HTTP frontend waits for a
request that never comes.

  --mode full      offers no session; every handshake must be full.
  --mode resumed   each process first does one full handshake and reads until
                   the TLS 1.3 NewSessionTicket is there (up to 1 s), then
                   offers that session on every measured connection; any
                   measured handshake that was not resumed fails the run.
  --sig ecdsa|rsa  offers only that key type's signature algorithms, so a
                   server with both certificates must choose that one; the
                   served certificate's key type is checked on every
                   connection (a mismatch fails the run).

Key exchange is X25519 only (the one group every server here and both clients
share). Server CPU is utime+stime of --server-pid (comma-separated pids are
summed; all threads) from /proc/PID/stat, read after the warm-up and 200 ms
after the last measured connection; client CPU is the worker processes' own.

Usage: bench/ssl_client.py --target 127.0.0.1:PORT --sni NAME [--mode full|resumed]
         [--sig ecdsa|rsa] [--processes N] [--cpu N|any] [--duration S] [--server-pid PID[,PID]]
         [--json FILE]
Exit codes: 0 ok; 1 bad flags or no handshake succeeded; 3 the server did not
do what was asked (a full handshake in --mode resumed, another key type)."""

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time

TICKET_WAIT = 1.0       # seconds to wait for the TLS 1.3 ticket in the warm-up
CONNECT_TIMEOUT = 5.0   # per connection; a stuck server cannot stall the run past its duration by more

# OpenSSL's own configuration mechanism restricts every SSL_CTX the worker
# makes: Python's ssl module has no way to set signature algorithms or groups.
SIGALGS = {
    "ecdsa": "ecdsa_secp256r1_sha256:ecdsa_secp384r1_sha384:ecdsa_secp521r1_sha512",
    # rsa_pkcs1_sha256 only for the certificate's own signature (not usable in TLS 1.3 handshakes)
    "rsa": "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pss_rsae_sha512:rsa_pkcs1_sha256",
}
OPENSSL_CONF = """openssl_conf = gatehouse_bench
[gatehouse_bench]
ssl_conf = ssl_sect
[ssl_sect]
system_default = client_sect
[client_sect]
MinProtocol = TLSv1.3
MaxProtocol = TLSv1.3
Groups = X25519
SignatureAlgorithms = {sigalgs}
"""


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# --- the served certificate's key type, from its DER -------------------------

def der_items(data, pos, end):
    """(tag, content start, content end) of each DER item in data[pos:end]."""
    while pos < end:
        tag = data[pos]
        length = data[pos + 1]
        pos += 2
        if length & 0x80:
            n = length & 0x7F
            length = int.from_bytes(data[pos:pos + n], "big")
            pos += n
        yield tag, pos, pos + length
        pos += length


OID_EC = bytes.fromhex("2a8648ce3d0201")          # 1.2.840.10045.2.1 id-ecPublicKey
OID_RSA = bytes.fromhex("2a864886f70d010101")     # 1.2.840.113549.1.1.1 rsaEncryption
CURVES = {bytes.fromhex("2a8648ce3d030107"): "P-256", bytes.fromhex("2b81040022"): "P-384",
          bytes.fromhex("2b81040023"): "P-521"}


def key_type(der):
    """"ECDSA P-256", "RSA-2048", ... for a DER certificate (the names the
    BoringSSL client reports)."""
    _, s, e = next(der_items(der, 0, len(der)))          # Certificate
    _, s, e = next(der_items(der, s, e))                 # tbsCertificate
    fields = list(der_items(der, s, e))
    if fields[0][0] == 0xA0:                             # [0] version
        fields = fields[1:]
    _, s, e = fields[5]                                  # subjectPublicKeyInfo
    (_, as_, ae), (_, ks, ke) = list(der_items(der, s, e))[:2]
    alg = list(der_items(der, as_, ae))
    oid = der[alg[0][1]:alg[0][2]]
    if oid == OID_EC:
        return "ECDSA " + CURVES.get(der[alg[1][1]:alg[1][2]], "other curve")
    if oid == OID_RSA:
        # BIT STRING: one byte of unused bits, then RSAPublicKey { modulus, exponent }
        _, rs, re_ = next(der_items(der, ks + 1, ke))
        _, ms, me = next(der_items(der, rs, re_))
        modulus = der[ms:me].lstrip(b"\x00")
        return f"RSA-{len(modulus) * 8}"
    return "other (" + oid.hex() + ")"


# --- one worker process ------------------------------------------------------

def make_context():
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # a load generator: the chain is not verified
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def close_tls(s):
    """close_notify without waiting for the server's, then FIN."""
    import ssl
    try:
        s.setblocking(False)
        s.unwrap()
    except (ssl.SSLError, OSError):
        pass
    s.close()


def wait_for_ticket(s):
    """Reads (nothing is expected but the NewSessionTicket) until the session
    carries a ticket or TICKET_WAIT passes; returns the session or None."""
    import ssl
    s.setblocking(False)
    deadline = time.monotonic() + TICKET_WAIT
    while True:
        sess = s.session
        if sess is not None and sess.has_ticket:
            return sess
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            if not s.recv(1024):
                return None
        except ssl.SSLWantReadError:
            select.select([s], [], [], min(left, 0.05))
        except (ssl.SSLError, OSError):
            return None


class Tally:
    def __init__(self):
        self.full = 0
        self.resumed = 0
        self.latency_us = []
        self.errors = {}
        self.versions = {}
        self.keys = {}

    def count(self, table, key):
        table[key] = table.get(key, 0) + 1


def handshake(ctx, addr, sni, session, tally, keys_seen):
    """One connection; records it in TALLY. Returns the SSLSocket (open) or None."""
    started = time.monotonic()
    raw = None
    try:
        raw = socket.create_connection(addr, timeout=CONNECT_TIMEOUT)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = ctx.wrap_socket(raw, server_hostname=sni, session=session)
    except Exception as e:  # noqa: BLE001 - every failure is counted by its reason
        tally.count(tally.errors, f"{type(e).__name__}: {str(e)[:80]}")
        if raw is not None:
            raw.close()
        return None
    tally.latency_us.append(int((time.monotonic() - started) * 1e6))
    if s.session_reused:
        tally.resumed += 1
    else:
        tally.full += 1
    tally.count(tally.versions, s.version())
    der = s.getpeercert(binary_form=True)
    kt = keys_seen.get(der)
    if kt is None:
        kt = keys_seen[der] = key_type(der) if der else "none"
    tally.count(tally.keys, kt)
    return s


def worker(args):
    """Runs in its own process: warm-up, "ready", waits for "go DEADLINE",
    loops, prints its tally as one JSON line."""
    if args.cpu != "any":
        os.sched_setaffinity(0, {int(args.cpu)})
    host, port = args.target.rsplit(":", 1)
    addr = (host, int(port))
    ctx = make_context()
    keys_seen = {}
    session = None
    warm = {"handshakes": 0, "without_session": 0, "errors": {}}
    if args.mode == "resumed":
        t = Tally()
        s = handshake(ctx, addr, args.sni, None, t, keys_seen)
        warm["handshakes"] = 1
        warm["errors"] = t.errors
        if s is not None:
            session = wait_for_ticket(s)
            close_tls(s)
        if session is None:
            warm["without_session"] = 1
    print(json.dumps({"ready": True, "warmup": warm}), flush=True)
    line = sys.stdin.readline().split()
    if len(line) != 2 or line[0] != "go":
        return 1
    deadline = float(line[1])
    tally = Tally()
    cpu0 = sum(os.times()[:2])
    while time.monotonic() < deadline:
        s = handshake(ctx, addr, args.sni, session, tally, keys_seen)
        if s is not None:
            close_tls(s)
    ended = time.monotonic()
    cpu1 = sum(os.times()[:2])
    print(json.dumps({"full": tally.full, "resumed": tally.resumed, "latency_us": tally.latency_us,
                      "errors": tally.errors, "versions": tally.versions, "keys": tally.keys,
                      "cpu_seconds": cpu1 - cpu0, "ended": ended}), flush=True)
    return 0


# --- the coordinating process ------------------------------------------------

def server_cpu(pids):
    """utime+stime seconds of all PIDS (all threads), or None if one is gone."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += int(fields[11]) + int(fields[12])
    return total / tick


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))] / 1000.0


def merge(results, warmups):
    out = {"full": 0, "resumed": 0, "latency_us": [], "errors": {}, "versions": {}, "keys": {},
           "cpu_seconds": 0.0, "warmup": {"handshakes": 0, "without_session": 0, "errors": {}}}
    for r in results:
        out["full"] += r["full"]
        out["resumed"] += r["resumed"]
        out["latency_us"] += r["latency_us"]
        out["cpu_seconds"] += r["cpu_seconds"]
        for k in ("errors", "versions", "keys"):
            for name, n in r[k].items():
                out[k][name] = out[k].get(name, 0) + n
    for w in warmups:
        out["warmup"]["handshakes"] += w["handshakes"]
        out["warmup"]["without_session"] += w["without_session"]
        for name, n in w["errors"].items():
            out["warmup"]["errors"][name] = out["warmup"]["errors"].get(name, 0) + n
    return out


def start_workers(args, conf_path):
    env = dict(os.environ, OPENSSL_CONF=conf_path)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--target", args.target, "--sni", args.sni,
           "--mode", args.mode, "--sig", args.sig, "--cpu", args.cpu]
    return [subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for _ in range(args.processes)]


def read_line(p, timeout, what):
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    line = p.stdout.readline() if ready else ""
    if not line:
        raise RuntimeError(f"a worker process gave no {what} (exit {p.poll()})")
    return json.loads(line)


def run(args, pids):
    """The measured run; returns the report dict."""
    with tempfile.NamedTemporaryFile("w", prefix="ssl-client-", suffix=".cnf", delete=False) as f:
        f.write(OPENSSL_CONF.format(sigalgs=SIGALGS[args.sig]))
        conf = f.name
    workers = []
    try:
        workers = start_workers(args, conf)
        warmups = [read_line(p, 30, "ready line")["warmup"] for p in workers]
        cpu0 = server_cpu(pids) if pids else None
        started = time.monotonic()
        for p in workers:
            p.stdin.write(f"go {started + args.duration}\n")
            p.stdin.flush()
        results = [read_line(p, args.duration + 30, "result") for p in workers]
        if pids:
            time.sleep(0.2)  # the server finishes its side of the last connections
        cpu1 = server_cpu(pids) if pids else None
        for p in workers:
            p.wait(10)
    finally:
        for p in workers:
            if p.poll() is None:
                p.kill()
                p.wait()
        os.unlink(conf)
    merged = merge(results, warmups)
    elapsed = max([r["ended"] for r in results] + [started + 1e-9]) - started
    return report(args, pids, merged, elapsed, cpu0, cpu1)


def check(args, m, total):
    """What the server did that was not asked for, as problem strings."""
    problems = []
    want = "ECDSA" if args.sig == "ecdsa" else "RSA"
    wrong = {k: n for k, n in m["keys"].items() if not k.startswith(want)}
    if wrong:
        problems.append(f"--sig {args.sig}: the server presented " + ", ".join(f"{k} ({n})" for k, n in wrong.items()))
    if args.mode == "resumed":
        if m["warmup"]["without_session"]:
            problems.append(f"--mode resumed: {m['warmup']['without_session']} of {m['warmup']['handshakes']} "
                            f"warm-up handshakes got no session ticket within {TICKET_WAIT:g}s")
        if m["full"]:
            problems.append(f"--mode resumed: {m['full']} of {total} measured handshakes were full, not resumed")
    elif m["resumed"]:
        problems.append(f"--mode full: {m['resumed']} of {total} handshakes resumed")
    other = {v: n for v, n in m["versions"].items() if v != "TLSv1.3"}
    if other:
        problems.append("not TLS 1.3: " + ", ".join(f"{v} ({n})" for v, n in other.items()))
    return problems


def report(args, pids, m, elapsed, cpu0, cpu1):
    import ssl
    total = m["full"] + m["resumed"]
    lat = sorted(m["latency_us"])
    per = (lambda sec: sec * 1e6 / total) if total else (lambda sec: None)
    server = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    problems = check(args, m, total)
    j = {
        "client": "openssl", "library": ssl.OPENSSL_VERSION, "target": args.target, "sni": [args.sni],
        "processes": args.processes, "concurrency": args.processes, "cpu": args.cpu,
        "mode": args.mode, "resume": "always" if args.mode == "resumed" else "never", "tls": "1.3",
        "sig": args.sig, "groups": "X25519", "sigalgs": SIGALGS[args.sig],
        "duration_seconds": elapsed, "total": total, "full": m["full"], "resumed": m["resumed"],
        "handshakes_per_second": total / elapsed if elapsed > 0 else 0.0,
        "latency_ms": {"p50": percentile(lat, 50), "p90": percentile(lat, 90), "p99": percentile(lat, 99),
                       "mean": (sum(lat) / len(lat) / 1000.0) if lat else 0.0,
                       "min": lat[0] / 1000.0 if lat else 0.0, "max": lat[-1] / 1000.0 if lat else 0.0},
        "errors": m["errors"], "errors_total": sum(m["errors"].values()),
        "tls_versions": m["versions"], "certificate_key_types": m["keys"],
        "server_pids": pids, "server_cpu_seconds": server,
        "server_cpu_us_per_handshake": per(server) if server is not None else None,
        "client_cpu_seconds": m["cpu_seconds"], "client_cpu_us_per_handshake": per(m["cpu_seconds"]),
        "problems": problems, "ok": total > 0 and not problems,
    }
    if args.mode == "resumed":
        j["warmup"] = m["warmup"]
    return j


def print_table(j):
    def us(v):
        return "—" if v is None else f"{v:.1f} us/handshake"

    print(f"OpenSSL handshake client ({j['library']}): {j['target']} SNI {j['sni'][0]}, {j['processes']} "
          f"process(es) on CPU {j['cpu']}, TLS 1.3, {j['mode']}, sig {j['sig']}, X25519")
    print(f"  handshakes   {j['total']} ({j['full']} full, {j['resumed']} resumed) in {j['duration_seconds']:.2f} s "
          f"= {j['handshakes_per_second']:.0f}/s")
    lat = j["latency_ms"]
    print(f"  latency ms   p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  max {lat['max']:.2f}")
    print(f"  versions     {j['tls_versions']}   certificates {j['certificate_key_types']}")
    if j["server_cpu_seconds"] is not None:
        print(f"  server CPU   {j['server_cpu_seconds']:.3f} s (pid {','.join(map(str, j['server_pids']))}) = "
              f"{us(j['server_cpu_us_per_handshake'])}")
    print(f"  client CPU   {j['client_cpu_seconds']:.3f} s = {us(j['client_cpu_us_per_handshake'])}")
    print(f"  errors       {j['errors_total']} {j['errors'] or ''}")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="HOST:PORT")
    ap.add_argument("--sni", required=True)
    ap.add_argument("--mode", choices=("full", "resumed"), default="full")
    ap.add_argument("--sig", choices=("ecdsa", "rsa"), default="ecdsa")
    ap.add_argument("--processes", type=int, default=3, help="worker processes, one connection each (default 3)")
    ap.add_argument("--cpu", default="1", help="CPU the workers are pinned to, or 'any' (default 1)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds (default 5)")
    ap.add_argument("--server-pid", default="", help="PID[,PID]: server processes whose CPU is measured")
    ap.add_argument("--json", help="write the report as one JSON object to this file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.processes < 1 or args.duration <= 0:
        ap.error("--processes and --duration must be positive")
    if args.cpu != "any" and not args.cpu.isdigit():
        ap.error("--cpu: a CPU number or 'any'")
    try:
        pids = [int(p) for p in args.server_pid.split(",") if p]
    except ValueError:
        ap.error(f"--server-pid {args.server_pid!r}: pids separated by commas")
    for pid in pids:
        if not os.path.exists(f"/proc/{pid}/stat"):
            ap.error(f"--server-pid {pid}: no such process")
    return args, pids


def main(argv=None):
    args, pids = parse_args(argv)
    if args.worker:
        return worker(args)
    try:
        j = run(args, pids)
    except (RuntimeError, OSError, ValueError) as e:
        log(f"ssl_client: {e}")
        return 1
    print_table(j)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(j, f)
            f.write("\n")
    if j["total"] == 0:
        first = next(iter(j["errors"]), "no attempt")
        log(f"ssl_client: no handshake with {args.target} succeeded (first error: {first})")
        return 1
    if j["problems"]:
        log("*** ssl_client FAILED: " + "; ".join(j["problems"]) + " ***")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
