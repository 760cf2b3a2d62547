#!/usr/bin/env python3
"""Gatehouse, HAProxy and nginx side by side on this machine, in one run.

Each server is pinned to CPU 0 with one worker thread and serves the same two
certificates (ECDSA P-256 and RSA-2048, made by `gatehouse cert new`); the
load generator, `gatehouse bench handshake`, is pinned to CPU 1 and reads
the server's CPU time from /proc/PID/stat. Printed: one markdown table of
server CPU microseconds per TLS 1.3 handshake (full ECDSA, full RSA,
resumed), the ratio of Gatehouse to the best peer, bulk MB/s through TLS
termination, and the crypto floor from `bssl-tool speed`.

Usage: bench/compare.sh [--gatehouse PATH] [--seconds N] [--concurrency N]
Everything listens on 127.0.0.1; every process started is stopped at exit."""

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SNI = "bench.contoso.test"
SERVER_CPU = "0"
CLIENT_CPU = "1"

# Targets of issue 5: Gatehouse's server CPU per handshake over the best peer's.
CASES = [
    # key, label, --sig, --resume, target ratio
    ("full_ecdsa", "TLS 1.3 full, ECDSA P-256", "ecdsa", "never", 0.55),
    ("full_rsa", "TLS 1.3 full, RSA-2048", "rsa", "never", 1.0),
    ("resumed", "TLS 1.3 resumed (ECDSA session)", "ecdsa", "always", 0.65),
]


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# --- processes ---------------------------------------------------------------

class Processes:
    """Everything this script starts, stopped by pid at exit."""

    def __init__(self):
        self.procs = []       # Popen
        self.extra_pids = []  # e.g. nginx workers

    def start(self, args, **kw):
        p = subprocess.Popen(args, **kw)
        self.procs.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, timeout=5):
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_pid(self, pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop_all(self):
        for p in list(reversed(self.procs)):
            self.stop(p, timeout=3)
        for pid in self.extra_pids:
            self.stop_pid(pid)
        self.extra_pids.clear()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}) before listening on port {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the plain TCP sink (runs as its own process on the client CPU) ------------

class SinkProtocol(asyncio.BufferedProtocol):
    """Discards everything. A connection that sends data starts with an
    8-byte length N (bulk mode); after N more bytes the sink answers "done".
    Handshake-only connections send nothing and are closed at EOF."""

    def __init__(self):
        self.buffer = bytearray(1 << 20)
        self.header = b""
        self.want = None
        self.got = 0

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buffer

    def buffer_updated(self, n):
        data_start = 0
        if self.want is None:
            take = min(8 - len(self.header), n)
            self.header += bytes(self.buffer[:take])
            data_start = take
            if len(self.header) == 8:
                self.want = struct.unpack("!Q", self.header)[0]
        if self.want is not None:
            self.got += n - data_start
            if self.got >= self.want and self.want >= 0:
                self.transport.write(b"done")
                self.want = -1

    def eof_received(self):
        self.transport.close()
        return False


def run_sink(port):
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(SinkProtocol, "127.0.0.1", port, backlog=4096, reuse_address=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def run_bulk_client(port, megabytes, sni):
    """TLS to the proxy, 8-byte length, MEGABYTES MiB, waits for "done".
    Prints the elapsed seconds."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    total = megabytes << 20
    chunk = memoryview(bytes(256 << 10))
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    with ctx.wrap_socket(raw, server_hostname=sni) as s:
        started = time.monotonic()
        s.sendall(struct.pack("!Q", total))
        sent = 0
        while sent < total:
            n = min(len(chunk), total - sent)
            s.sendall(chunk[:n])
            sent += n
        answer = b""
        while len(answer) < 4:
            part = s.recv(4 - len(answer))
            if not part:
                break
            answer += part
        elapsed = time.monotonic() - started
    if answer != b"done":
        raise SystemExit(f"bulk: the sink answered {answer!r}, not 'done'")
    print(f"{elapsed:.6f}")


# --- servers -------------------------------------------------------------------

class Server:
    name = "?"

    def __init__(self, procs, work, certs, sink_port):
        self.procs = procs
        self.work = work
        self.certs = certs
        self.sink_port = sink_port
        self.port = free_port()
        self.bulk_port = None
        self.proc = None
        self.pid = None
        self.skip = None  # reason this server cannot run

    def stop(self):
        if self.proc:
            self.procs.stop(self.proc)
            self.proc = None


class Gatehouse(Server):
    name = "Gatehouse"

    def __init__(self, *a, binary):
        super().__init__(*a)
        self.binary = binary
        self.bulk_port = self.port  # the same l4 listener carries both

    def start(self):
        ec, rsa = self.certs["ec"], self.certs["rsa"]
        cfg = os.path.join(self.work, "gatehouse.toml")
        with open(cfg, "w") as f:
            f.write(f"""[server]
workers = 1
admin = ""
access_log = ""

[[certificate]]
name = "ec"
cert = "{ec}.crt"
key = "{ec}.key"

[[certificate]]
name = "rsa"
cert = "{rsa}.crt"
key = "{rsa}.key"

[[listener]]
name = "l4"
bind = "127.0.0.1:{self.port}"
mode = "l4"
pool = "sink"

[[server]]
name = "sink"
address = "127.0.0.1:{self.sink_port}"

[[pool]]
name = "sink"
servers = ["sink"]
tls = "plain"
""")
        self.stderr = open(os.path.join(self.work, "gatehouse.stderr"), "w")
        self.proc = self.procs.start(["taskset", "-c", SERVER_CPU, self.binary, "run", "-c", cfg],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr)
        wait_port(self.port, self.proc, "gatehouse")
        self.pid = self.proc.pid  # taskset execs the server: same pid

    def stop(self):
        super().stop()
        if getattr(self, "stderr", None):
            self.stderr.close()


class Haproxy(Server):
    name = "HAProxy"

    def start(self):
        exe = shutil.which("haproxy")
        if not exe:
            self.skip = "haproxy not installed"
            return
        pems = []
        for key in ("ec", "rsa"):
            pem = os.path.join(self.work, f"haproxy-{key}.pem")
            with open(pem, "w") as out:
                for ext in (".crt", ".key"):
                    with open(self.certs[key] + ext) as f:
                        out.write(f.read())
            pems.append(pem)
        self.bulk_port = free_port()
        cfg = os.path.join(self.work, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(f"""global
    nbthread 1
    maxconn 4000
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend handshakes
    mode http
    bind 127.0.0.1:{self.port} ssl crt {pems[0]} crt {pems[1]}
    http-request return status 200 content-type text/plain string ok

frontend bulk
    mode tcp
    bind 127.0.0.1:{self.bulk_port} ssl crt {pems[0]} crt {pems[1]}
    default_backend sink

backend sink
    mode tcp
    server sink 127.0.0.1:{self.sink_port}
""")
        self.log = open(os.path.join(self.work, "haproxy.log"), "w")
        self.proc = self.procs.start(["taskset", "-c", SERVER_CPU, exe, "-f", cfg, "-db"],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc, "haproxy")
        self.pid = self.proc.pid

    def stop(self):
        super().stop()
        if getattr(self, "log", None):
            self.log.close()


class Nginx(Server):
    name = "nginx"

    def start(self):
        exe = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if not exe:
            self.skip = "nginx not installed"
            return
        d = os.path.join(self.work, "nginx")
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o755)
        ec, rsa = self.certs["ec"], self.certs["rsa"]
        cfg = os.path.join(d, "nginx.conf")
        with open(cfg, "w") as f:
            f.write(f"""daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 10000; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {ec}.crt;
        ssl_certificate_key {ec}.key;
        ssl_certificate {rsa}.crt;
        ssl_certificate_key {rsa}.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        location / {{ return 200 "ok"; }}
    }}
}}
""")
        self.proc = self.procs.start(["taskset", "-c", SERVER_CPU, exe, "-c", cfg, "-p", d, "-e", f"{d}/error.log"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, "nginx")
        deadline = time.monotonic() + 10
        workers = []
        while not workers and time.monotonic() < deadline:
            workers = children(self.proc.pid)
            time.sleep(0.05)
        if len(workers) != 1:
            raise RuntimeError(f"nginx: expected one worker process, found {workers}")
        self.pid = workers[0]
        self.procs.extra_pids.append(self.pid)

    def stop(self):
        if self.proc:
            workers = children(self.proc.pid)
            self.procs.stop(self.proc, sig=signal.SIGQUIT)
            self.proc = None
            for pid in workers:  # a worker can outlive its master (TESTING.md)
                self.procs.stop_pid(pid)
            self.bulk_port = None


# --- measurements ---------------------------------------------------------------

def bench(binary, work, server, sig, resume, seconds, concurrency):
    out = os.path.join(work, f"bench-{server.name}-{sig}-{resume}.json")
    args = ["taskset", "-c", CLIENT_CPU, binary, "bench", "handshake", "--target", f"127.0.0.1:{server.port}",
            "--sni", SNI, "--tls", "1.3", "--sig", sig, "--resume", resume, "--concurrency", str(concurrency),
            "--duration", f"{seconds}s", "--server-pid", str(server.pid), "--json", out]
    p = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 90)
    try:
        with open(out) as f:
            result = json.load(f)
    except (OSError, ValueError):
        result = {"ok": False, "problems": [f"no JSON (exit {p.returncode}): {p.stderr.strip()[-300:]}"]}
    result["exit"] = p.returncode
    result["stderr"] = p.stderr
    return result


def bulk(server, megabytes):
    if not server.bulk_port:
        return None
    before = cpu_seconds(server.pid)
    p = subprocess.run(["taskset", "-c", CLIENT_CPU, sys.executable, os.path.abspath(__file__), "--bulk-client",
                        str(server.bulk_port), str(megabytes)], capture_output=True, text=True, timeout=120)
    after = cpu_seconds(server.pid)
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout).strip()[-300:]}
    elapsed = float(p.stdout.strip())
    return {"mb_per_s": megabytes * 1.048576 / elapsed, "cpu_us_per_mib": (after - before) * 1e6 / megabytes,
            "seconds": elapsed}


def crypto_floor():
    """µs per operation from `bssl-tool speed`, pinned to the server's CPU."""
    exe = shutil.which("bssl-tool")
    if not exe:
        return None, "bssl-tool not installed (package android-boringssl)"
    ops = {}
    patterns = {
        "p256_sign": r"ECDSA P-256 signing operations in (\d+)us \(([\d.]+) ops/sec\)",
        "x25519_base": r"Curve25519 base-point multiplication operations in (\d+)us \(([\d.]+) ops/sec\)",
        "x25519_arb": r"Curve25519 arbitrary point multiplication operations in (\d+)us \(([\d.]+) ops/sec\)",
        "rsa2048_sign": r"RSA 2048 signing operations in (\d+)us \(([\d.]+) ops/sec\)",
    }
    text = ""
    for flt in ("ECDSA P-256", "Curve25519", "RSA 2048"):
        p = subprocess.run(["taskset", "-c", SERVER_CPU, exe, "speed", "-filter", flt, "-timeout", "1"],
                           capture_output=True, text=True, timeout=60)
        text += p.stdout + p.stderr
    for key, pattern in patterns.items():
        m = re.search(pattern, text)
        if m:
            ops[key] = 1e6 / float(m.group(2))
    if len(ops) != len(patterns):
        return None, "could not parse bssl-tool speed output:\n" + text
    return ops, text


# --- report ----------------------------------------------------------------------

def cell(result, case_sig, case_resume):
    if result is None:
        return None, "—"
    us = result.get("server_cpu_us_per_handshake")
    rate = result.get("handshakes_per_second", 0)
    total = result.get("total", 0)
    if not total or us is None:
        why = "; ".join(result.get("problems", [])) or "no handshake"
        return None, f"failed ({why[:60]})"
    if case_resume == "always" and result.get("full", 0) > 0:
        return None, f"NOT RESUMED ({result['full']} of {total} full)"
    keys = result.get("certificate_key_types", {})
    want = "ECDSA" if case_sig == "ecdsa" else "RSA"
    if case_resume == "never" and any(not k.startswith(want) for k in keys):
        return None, f"wrong certificate ({', '.join(keys)})"
    return us, f"{us:.0f} µs ({rate:.0f}/s)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gatehouse", default=os.environ.get("GATEHOUSE") or os.path.join(ROOT, "build", "proxy", "gatehouse"))
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", "6")),
                    help="per case (default 6)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--bulk-mib", type=int, default=1024)
    ap.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bulk-client", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sink:
        return run_sink(args.sink)
    if args.bulk_client:
        return run_bulk_client(args.bulk_client[0], args.bulk_client[1], SNI)

    binary = os.path.abspath(args.gatehouse)
    if not os.access(binary, os.X_OK):
        sys.exit(f"compare: no gatehouse binary at {binary}; build first (bash .ci/build build) or pass --gatehouse")
    if os.cpu_count() < 2 or not shutil.which("taskset"):
        sys.exit("compare: needs two CPUs and taskset (util-linux): servers on CPU 0, the client on CPU 1")

    started = time.monotonic()
    procs = Processes()

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    work = tempfile.mkdtemp(prefix="gatehouse-compare-")
    os.chmod(work, 0o755)  # nginx workers run unprivileged
    try:
        log("crypto floor: bssl-tool speed on CPU 0 ...")
        floor, floor_text = crypto_floor()

        certs = {}
        for key, kind in (("ec", "ec256"), ("rsa", "rsa2048")):
            prefix = os.path.join(work, key)
            subprocess.run([binary, "cert", "new", "--cn", SNI, "--san", SNI, "--key", kind, "--out", prefix],
                           check=True, capture_output=True, timeout=60)
            certs[key] = prefix

        sink_port = free_port()
        sink = procs.start(["taskset", "-c", CLIENT_CPU, sys.executable, os.path.abspath(__file__),
                            "--sink", str(sink_port)], stdin=subprocess.DEVNULL)
        wait_port(sink_port, sink, "sink")

        servers = [Gatehouse(procs, work, certs, sink_port, binary=binary), Haproxy(procs, work, certs, sink_port),
                   Nginx(procs, work, certs, sink_port)]
        results = {}
        bulks = {}
        for server in servers:
            try:
                server.start()
            except Exception as e:  # noqa: BLE001 - report and go on with the others
                server.skip = str(e)
                server.stop()
            if server.skip:
                log(f"{server.name}: skipped: {server.skip}")
                continue
            for key, label, sig, resume, _ in CASES:
                log(f"{server.name}: {label} ({args.seconds}s) ...")
                r = bench(binary, work, server, sig, resume, args.seconds, args.concurrency)
                results[(server.name, key)] = r
                if r.get("exit"):
                    log(f"  bench exited {r['exit']}: " + " ".join(r.get("problems", []))[:300])
            if server.bulk_port:
                log(f"{server.name}: bulk {args.bulk_mib} MiB through TLS termination ...")
                bulks[server.name] = bulk(server, args.bulk_mib)
            server.stop()
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    # --- the report
    names = [s.name for s in servers]
    print()
    print(f"## Server CPU per TLS 1.3 handshake (µs; lower is better) — {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{os.cpu_count()} CPUs, server on CPU {SERVER_CPU} (1 worker), client on CPU {CLIENT_CPU}, "
          f"{args.concurrency} connections, {args.seconds}s per case")
    print()
    print("| case | " + " | ".join(names) + " | Gatehouse / best peer | target |")
    print("|---|" + "---|" * len(names) + "---|---|")
    for key, label, sig, resume, target in CASES:
        values = {}
        texts = []
        for s in servers:
            if s.skip:
                texts.append(f"skipped ({s.skip[:40]})")
                continue
            v, t = cell(results.get((s.name, key)), sig, resume)
            values[s.name] = v
            texts.append(t)
        peers = [v for n, v in values.items() if n != "Gatehouse" and v]
        ratio = "—"
        if values.get("Gatehouse") and peers:
            r = values["Gatehouse"] / min(peers)
            ratio = f"{r:.2f}" + (" ✔" if r <= target else " ✘")
        print(f"| {label} | " + " | ".join(texts) + f" | {ratio} | ≤ {target:.2f} |")
    print()
    print("Cells: server CPU µs per handshake from /proc/PID/stat (utime+stime, all threads; 10 ms ticks), "
          "and handshakes/s the single-threaded client reached. The client verifies every signature, so it, "
          "not the server, usually limits handshakes/s; compare the CPU figures.")

    if floor:
        ecdsa_floor = floor["p256_sign"] + floor["x25519_base"] + floor["x25519_arb"]
        rsa_floor = floor["rsa2048_sign"] + floor["x25519_base"] + floor["x25519_arb"]
        print()
        print("## Crypto floor (bssl-tool speed on CPU 0, this BoringSSL)")
        print()
        print(f"- ECDSA P-256 sign {floor['p256_sign']:.1f} µs, X25519 keygen {floor['x25519_base']:.1f} µs, "
              f"X25519 shared secret {floor['x25519_arb']:.1f} µs, RSA-2048 sign {floor['rsa2048_sign']:.1f} µs")
        print(f"- full ECDSA P-256 handshake floor = 1 signature + 2 X25519 operations = **{ecdsa_floor:.0f} µs**"
              + (f"; Gatehouse is at {values_for(results, 'full_ecdsa') / ecdsa_floor:.2f}x the floor (target ≤ 1.4x)"
                 if values_for(results, "full_ecdsa") else ""))
        print(f"- full RSA-2048 handshake floor = **{rsa_floor:.0f} µs**"
              + (f"; Gatehouse is at {values_for(results, 'full_rsa') / rsa_floor:.2f}x"
                 if values_for(results, "full_rsa") else ""))
    else:
        print()
        print(f"Crypto floor: unavailable: {floor_text[:300]}")

    if bulks:
        print()
        print("## Bulk through TLS termination (1 connection, client → proxy → plain sink)")
        print()
        print("| server | MB/s | server CPU µs per MiB |")
        print("|---|---|---|")
        for name, b in bulks.items():
            if b is None:
                continue
            if "error" in b:
                print(f"| {name} | failed: {b['error'][:80]} | |")
            else:
                print(f"| {name} | {b['mb_per_s']:.0f} | {b['cpu_us_per_mib']:.0f} |")
        print()
        print("The client (Python ssl) and the sink share CPU 1, so MB/s is bounded by them as much as by the "
              "proxy; the CPU per MiB is the proxy's own cost. nginx has no `stream` module here and is not run.")

    print()
    print("## Caveats")
    print()
    print("- Gatehouse's HTTP (l7) mode is not built yet: Gatehouse runs an **l4** listener whose pool is a plain-TCP "
          "sink on CPU 1, so after each handshake it also connects to the sink; HAProxy and nginx run an HTTPS "
          "frontend that waits for a request that never comes. Gatehouse does slightly more work per connection.")
    print("- Keep-alive requests/s through TLS on both sides waits for L7.")
    print("- One run on a shared 2-CPU machine: other load on CPU 0 or 1 moves the figures; rerun to compare.")
    print(f"- Whole run: {time.monotonic() - started:.0f} s.")
    return 0


def values_for(results, key):
    r = results.get(("Gatehouse", key))
    if not r or not r.get("total"):
        return None
    return r.get("server_cpu_us_per_handshake")


if __name__ == "__main__":
    sys.exit(main())
