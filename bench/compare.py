#!/usr/bin/env python3
"""Gatehouse, HAProxy and nginx side by side on this machine, in one run.

Each server is pinned to CPU 0 with one worker thread and serves the same two
certificates (ECDSA P-256 and RSA-2048, made by `gatehouse cert new`). Two
independent handshake load generators, pinned to CPU 1, take turns per case:
`gatehouse bench handshake` (BoringSSL, 32 connections in one process) and
bench/ssl_client.py (OpenSSL via Python's ssl, N processes with one
connection each); both read the server's CPU time from /proc/PID/stat.
Printed: the CPU model and flags and the TLS libraries in play; server CPU
microseconds per TLS 1.3 handshake (full ECDSA, full RSA, resumed) per
client, the ratio of Gatehouse to the best peer per client side by side;
bulk MB/s through TLS termination; L7 keep-alive requests/s and proxy CPU per
request with TLS on both sides (wrk for HTTP/1.1, h2load for HTTP/2, all
three proxies in front of one nginx HTTPS backend on CPU 1); the crypto floor
from `bssl speed` of the BoringSSL that Gatehouse links; with --workers 1,2 (or --scaling) the handshake cases
again with 2 workers, unpinned, and the growth. A JSON summary is written too.

Usage: bench/compare.sh [--gatehouse PATH] [--seconds N] [--concurrency N] [--processes N]
                        [--clients bssl,openssl] [--servers gatehouse,haproxy,nginx]
                        [--workers 1,2 | --scaling] [--skip-l7] [--skip-bulk] [--json FILE]
                        [--l7-seconds N] [--h2-seconds N] [--l7-rounds N]
Everything listens on 127.0.0.1; every process started is stopped at exit."""

import argparse
import asyncio
import json
import os
import re
import resource
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

# wrk and h2load send the URL's host as SNI and Host; /etc/hosts maps
# localhost to 127.0.0.1 and the front certificates cover it.
L7_HOST = "localhost"
BACKEND_NAME = "mbx01"     # the backend's SAN (cert new --cn MBX01)
NOISY = 0.25              # CPUs used by other processes during a case that make it worth a warning
L7_TARGET = 0.7            # target: Gatehouse's proxy CPU per request over the best peer's
H2_STREAMS = 10            # h2load -m: concurrent streams per connection

# Targets: Gatehouse's server CPU per handshake over the best peer's.
CASES = [
    # key, label, --sig, --resume, target ratio
    ("full_ecdsa", "TLS 1.3 full, ECDSA P-256", "ecdsa", "never", 0.55),
    ("full_rsa", "TLS 1.3 full, RSA-2048", "rsa", "never", 0.90),
    ("resumed", "TLS 1.3 resumed (ECDSA session)", "ecdsa", "always", 0.55),
]


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# --- processes ---------------------------------------------------------------

class Processes:
    """Everything this script starts, stopped by pid at exit."""

    def __init__(self):
        self.procs = []       # Popen
        self.extra_pids = {}  # pid -> start time, e.g. nginx workers

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

    def add_pid(self, pid):
        self.extra_pids[pid] = start_time(pid)

    def stop_pid(self, pid):
        """SIGKILL to PID if it is still the process add_pid saw (not a reused pid)."""
        started = self.extra_pids.pop(pid, None)
        try:
            if started is not None and start_time(pid) == started:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, OSError):
            pass

    def stop_all(self):
        for p in list(reversed(self.procs)):
            self.stop(p, timeout=3)
        for pid in list(self.extra_pids):
            self.stop_pid(pid)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
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


def start_time(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def cpu_split(pids):
    """(user, system) CPU seconds of PIDS (one pid or a list), all their threads."""
    user = system = 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in ([pids] if isinstance(pids, int) else pids):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user += int(fields[11])
        system += int(fields[12])
    return user / tick, system / tick


def task_cpu(pids):
    """{(pid, tid): CPU seconds} of every thread of PIDS: which worker did the work."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[(pid, int(tid))] = (int(fields[11]) + int(fields[12])) / tick
    return out


def worker_split(before, after):
    """Shares (percent, largest first) of the CPU the threads spent between
    two task_cpu() samples; threads under 3% are left out."""
    deltas = [after[k] - before.get(k, 0) for k in after]
    total = sum(deltas)
    if total <= 0:
        return []
    return [round(d * 100 / total) for d in sorted(deltas, reverse=True) if d * 100 / total >= 3]


def machine_busy():
    """(busy, all) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v[:8]) - idle, sum(v[:8])


def cpu_seconds(pid):
    return sum(cpu_split(pid))


def kernel_share(before, after):
    """The system part of the CPU spent between two cpu_split() samples (0..1)."""
    user, system = after[0] - before[0], after[1] - before[1]
    return system / (user + system) if user + system > 0 else None


def with_kernel(text, share):
    return text if share is None else f"{text} (kernel {share * 100:.0f}%)"


def tail(path, n=1500):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


# --- nginx (the HTTPS peer, the proxy peer and the shared backend) ------------

def nginx_exe():
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def nginx_paths(d):
    """The http{} lines that keep nginx's files in its own directory."""
    return f"""    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;"""


def nginx_head(d, workers=1):
    """An nginx.conf up to inside http{}: WORKERS workers in the foreground,
    its files in D, no access log."""
    return f"""daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 10000; }}
http {{
    access_log off;
{nginx_paths(d)}"""


def start_nginx(procs, d, conf, port, cpu, what, workers=1):
    """Writes CONF to D/nginx.conf, starts one master (pinned to CPU, or not
    when CPU is None) with WORKERS workers; returns (master Popen, worker pids)."""
    cfg = os.path.join(d, "nginx.conf")
    with open(cfg, "w") as f:
        f.write(conf)
    args = [nginx_exe(), "-c", cfg, "-p", d, "-e", f"{d}/error.log"]
    if cpu is not None:
        args = ["taskset", "-c", cpu] + args
    proc = procs.start(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc, what)
    except RuntimeError as e:
        raise RuntimeError(f"{e}: {tail(os.path.join(d, 'error.log'), 300)}") from None
    deadline = time.monotonic() + 10
    found = []
    while len(found) < workers and time.monotonic() < deadline:
        found = children(proc.pid)
        time.sleep(0.05)
    if len(found) != workers:
        raise RuntimeError(f"{what}: expected {workers} worker process(es), found {found}")
    for pid in found:
        procs.add_pid(pid)
    return proc, found


def stop_nginx(procs, proc):
    workers = children(proc.pid)
    for pid in workers:  # our master's children, also any it respawned
        if pid not in procs.extra_pids:
            try:
                procs.add_pid(pid)
            except OSError:
                pass
    procs.stop(proc, sig=signal.SIGQUIT)
    for pid in workers:  # a worker can outlive its master (TESTING.md)
        procs.stop_pid(pid)


class Backend:
    """The one backend all three proxies forward to in the L7 runs: nginx
    (nginx-light) on HTTPS with a self-signed RSA-2048 certificate like an
    Exchange Mailbox server's, answering "ok\\n" with keep-alive, pinned to the
    client CPU. A plain-HTTP stub_status port counts its TCP connections and
    requests, so a run can check every request reached it and count the
    backend connections each proxy opened."""

    def __init__(self, procs, work, cpu):
        self.procs = procs
        self.dir = os.path.join(work, "backend")
        self.cpu = cpu
        self.proc = None
        self.pid = None
        self.port = None

    def start(self, binary):
        if not nginx_exe():
            raise RuntimeError("nginx not installed")
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.cert = os.path.join(self.dir, "mbx01")
        subprocess.run([binary, "cert", "new", "--cn", "MBX01", "--key", "rsa2048", "--out", self.cert],
                       check=True, capture_output=True, timeout=60)
        inspect = subprocess.run([binary, "cert", "inspect", self.cert + ".crt", "--json"],
                                 check=True, capture_output=True, text=True, timeout=60)
        self.thumbprint = json.loads(inspect.stdout)[0]["certificates"][0]["Thumbprint"]
        self.port, self.status_port = free_port(), free_port()
        d = self.dir
        conf = f"""{nginx_head(d)}
    default_type text/plain;
    keepalive_requests 100000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {self.cert}.crt;
        ssl_certificate_key {self.cert}.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            add_header X-Backend {BACKEND_NAME} always;
            return 200 "ok\\n";
        }}
    }}
    server {{
        listen 127.0.0.1:{self.status_port};
        location / {{ stub_status; }}
    }}
}}
"""
        self.proc, (self.pid,) = start_nginx(self.procs, d, conf, self.port, self.cpu, "backend nginx")

    def counters(self):
        """(TCP connections accepted, requests) so far, this request excluded."""
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", self.status_port, timeout=5)
        try:
            c.request("GET", "/")
            text = c.getresponse().read().decode()
        finally:
            c.close()
        m = re.search(r"server accepts handled requests\s+(\d+)\s+(\d+)\s+(\d+)", text)
        if not m:
            raise RuntimeError(f"backend stub_status: unexpected answer {text!r}")
        return int(m.group(1)) - 1, int(m.group(3)) - 1

    def stop(self):
        if self.proc:
            stop_nginx(self.procs, self.proc)
            self.proc = None


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

    def __init__(self, procs, work, certs, sink_port, backend, workers=1, pinned=True):
        self.procs = procs
        self.workers = workers   # Gatehouse workers, nginx worker_processes, HAProxy nbthread
        self.pinned = pinned     # on SERVER_CPU alone, or free to run on every CPU
        self.work = work
        self.certs = certs
        self.sink_port = sink_port
        self.backend = backend  # None: no L7 runs
        self.port = free_port()  # the HTTPS frontend the handshake runs use
        self.bulk_port = None
        self.l7_port = None      # the reverse proxy to the backend
        self.proc = None
        self.pid = None
        self.pids = []    # the processes whose CPU is the server's (nginx: its workers)
        self.skip = None  # reason this server cannot run

    def taskset(self):
        return ["taskset", "-c", SERVER_CPU] if self.pinned else []

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def diagnostics(self):
        """The tail of the server's own log, for a failure report."""
        return ""

    def stop(self):
        if self.proc:
            self.procs.stop(self.proc)
            self.proc = None


class Gatehouse(Server):
    name = "Gatehouse"

    def __init__(self, *a, binary):
        super().__init__(*a)
        self.binary = binary
        self.bulk_port = free_port()
        self.stderr_path = os.path.join(self.work, f"gatehouse-{self.workers}.stderr")

    def start(self):
        ec, rsa = self.certs["ec"], self.certs["rsa"]
        # One l7 listener serves the handshake runs (it waits for a request
        # that never comes, like HAProxy's and nginx's HTTP frontends) and the
        # L7 runs; an l4 listener to the plain sink carries the bulk run.
        l7 = ""
        if self.backend:
            self.l7_port = self.port
            l7 = f"""
[[route]]
listener = "web"
paths = ["/"]
pool = "mbx"

[[server]]
name = "mbx01"
address = "127.0.0.1:{self.backend.port}"
pin = "{self.backend.thumbprint}"

[[pool]]
name = "mbx"
servers = ["mbx01"]
tls = "verify"
"""
        cfg = os.path.join(self.work, f"gatehouse-{self.workers}.toml")
        with open(cfg, "w") as f:
            f.write(f"""[global]
workers = {self.workers}
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
name = "web"
bind = "127.0.0.1:{self.port}"
mode = "l7"

[[listener]]
name = "l4"
bind = "127.0.0.1:{self.bulk_port}"
mode = "l4"
pool = "sink"

[[server]]
name = "sink"
address = "127.0.0.1:{self.sink_port}"

[[pool]]
name = "sink"
servers = ["sink"]
tls = "plain"
{l7}""")
        self.stderr = open(self.stderr_path, "w")
        self.proc = self.procs.start(self.taskset() + [self.binary, "run", "-c", cfg],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr)
        wait_port(self.port, self.proc, "gatehouse")
        wait_port(self.bulk_port, self.proc, "gatehouse")
        self.pid = self.proc.pid  # taskset execs the server: same pid
        self.pids = [self.pid]

    def diagnostics(self):
        return tail(self.stderr_path)

    def stop(self):
        super().stop()
        if getattr(self, "stderr", None):
            self.stderr.close()
            self.stderr = None


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
        l7 = ""
        if self.backend:
            self.l7_port = free_port()
            l7 = f"""
frontend l7
    mode http
    bind 127.0.0.1:{self.l7_port} ssl crt {pems[0]} crt {pems[1]} alpn h2,http/1.1
    default_backend mbx

backend mbx
    mode http
    http-reuse always
    server s1 127.0.0.1:{self.backend.port} ssl verify required ca-file {self.backend.cert}.crt verifyhost {BACKEND_NAME}
"""
        cfg = os.path.join(self.work, f"haproxy-{self.workers}.cfg")
        with open(cfg, "w") as f:
            f.write(f"""global
    nbthread {self.workers}
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
{l7}""")
        self.log_path = os.path.join(self.work, f"haproxy-{self.workers}.log")
        self.log = open(self.log_path, "w")
        self.proc = self.procs.start(self.taskset() + [exe, "-f", cfg, "-db"],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc, "haproxy")
        self.pid = self.proc.pid
        self.pids = [self.pid]

    def diagnostics(self):
        return tail(self.log_path)

    def stop(self):
        super().stop()
        if getattr(self, "log", None):
            self.log.close()
            self.log = None


class Nginx(Server):
    name = "nginx"

    def start(self):
        if not nginx_exe():
            self.skip = "nginx not installed"
            return
        self.dir = d = os.path.join(self.work, f"nginx-{self.workers}")
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o755)
        ec, rsa = self.certs["ec"], self.certs["rsa"]
        certs = f"""        ssl_certificate {ec}.crt;
        ssl_certificate_key {ec}.key;
        ssl_certificate {rsa}.crt;
        ssl_certificate_key {rsa}.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;"""
        l7 = ""
        if self.backend:
            self.l7_port = free_port()
            l7 = f"""
    upstream mbx {{
        server 127.0.0.1:{self.backend.port};
        keepalive 32;
        keepalive_requests 100000;
    }}
    server {{
        listen 127.0.0.1:{self.l7_port} ssl http2;
{certs}
        location / {{
            proxy_pass https://mbx;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_session_reuse on;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {self.backend.cert}.crt;
            proxy_ssl_name {BACKEND_NAME};
        }}
    }}"""
        conf = f"""{nginx_head(d, self.workers)}
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{self.port} ssl;
{certs}
        location / {{ return 200 "ok"; }}
    }}{l7}
}}
"""
        self.proc, self.pids = start_nginx(self.procs, d, conf, self.port, SERVER_CPU if self.pinned else None,
                                           "nginx", self.workers)
        self.pid = self.pids[0]

    def diagnostics(self):
        return tail(os.path.join(self.dir, "error.log"))

    def stop(self):
        if self.proc:
            stop_nginx(self.procs, self.proc)
            self.proc = None
            self.bulk_port = None


# --- measurements ---------------------------------------------------------------

def client_args(client, binary, server, sig, resume, seconds, opts, pinned, out):
    """The command line of one handshake case for CLIENT ("bssl" or "openssl")."""
    pids = ",".join(map(str, server.pids))
    target = f"127.0.0.1:{server.port}"
    if client == "bssl":
        args = [binary, "bench", "handshake", "--target", target, "--sni", SNI, "--tls", "1.3", "--sig", sig,
                "--resume", resume, "--concurrency", str(opts.concurrency), "--duration", f"{seconds}s",
                "--server-pid", pids, "--json", out]
        return (["taskset", "-c", CLIENT_CPU] if pinned else []) + args
    return [sys.executable, os.path.join(HERE, "ssl_client.py"), "--target", target, "--sni", SNI,
            "--mode", "resumed" if resume == "always" else "full", "--sig", sig, "--processes", str(opts.processes),
            "--cpu", CLIENT_CPU if pinned else "any", "--duration", str(seconds), "--server-pid", pids,
            "--json", out]


def bench(client, binary, work, server, sig, resume, seconds, opts, pinned=True):
    """One handshake case: the client's JSON report, plus the server's kernel
    share, how its threads shared the work (worker_split) and the CPU the rest
    of the machine used meanwhile (other_load, in CPUs: neither the server nor
    the client, i.e. noise)."""
    out = os.path.join(work, f"hs-{client}-{server.name}-{server.workers}-{sig}-{resume}.json")
    args = client_args(client, binary, server, sig, resume, seconds, opts, pinned, out)
    split0, tasks0, busy0 = cpu_split(server.pids), task_cpu(server.pids), machine_busy()
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.monotonic()
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 90)
        code, stderr = p.returncode, p.stderr
    except subprocess.TimeoutExpired:
        code, stderr = "by timeout", ""
    wall = time.monotonic() - wall0
    alive = server.alive()
    split1 = cpu_split(server.pids) if alive else None
    tasks1, busy1 = task_cpu(server.pids), machine_busy()
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        with open(out) as f:
            result = json.load(f)
    except (OSError, ValueError):
        result = {"ok": False, "problems": [f"no JSON (exit {code}): {stderr.strip()[-300:]}"]}
    result["exit"] = code
    result["stderr"] = stderr
    result["kernel_share"] = kernel_share(split0, split1) if split1 else None
    result["worker_split"] = worker_split(tasks0, tasks1)
    if split1:
        tick = os.sysconf("SC_CLK_TCK")
        machine = (busy1[0] - busy0[0]) / tick
        client_cpu = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
        result["other_load"] = max(0.0, machine - sum(split1) + sum(split0) - client_cpu) / wall
    dur, scpu = result.get("duration_seconds"), result.get("server_cpu_seconds")
    result["server_busy"] = scpu / dur if dur and scpu is not None else None
    return result


def bulk(server, megabytes):
    if not server.bulk_port:
        return None
    split0 = cpu_split(server.pid)
    p = subprocess.run(["taskset", "-c", CLIENT_CPU, sys.executable, os.path.abspath(__file__), "--bulk-client",
                        str(server.bulk_port), str(megabytes)], capture_output=True, text=True, timeout=120)
    split1 = cpu_split(server.pid)
    before, after = sum(split0), sum(split1)
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout).strip()[-300:]}
    elapsed = float(p.stdout.strip())
    return {"mb_per_s": megabytes * 1.048576 / elapsed, "cpu_us_per_mib": (after - before) * 1e6 / megabytes,
            "seconds": elapsed, "kernel_share": kernel_share(split0, split1)}


def preflight(port):
    """One HTTP/1.1 GET through the proxy: 200, "ok\\n", from the backend."""
    import http.client
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c = http.client.HTTPSConnection(L7_HOST, port, timeout=10, context=ctx)
    try:
        c.request("GET", "/")
        r = c.getresponse()
        body = r.read()
        if r.status != 200 or body != b"ok\n" or r.getheader("X-Backend") != BACKEND_NAME:
            return (f"a test GET / answered {r.status} {r.reason}, X-Backend {r.getheader('X-Backend')!r}, "
                    f"body {body[:80]!r} (want 200, X-Backend {BACKEND_NAME}, 'ok\\n')")
    except (OSError, http.client.HTTPException) as e:
        return f"a test GET / failed: {type(e).__name__}: {e}"
    finally:
        c.close()
    return None


def parse_wrk(text):
    """requests, requests/s and problems from wrk's output."""
    problems = []
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", text)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not m or not rate:
        return None, None, ["could not parse wrk's output"]
    requests = int(m.group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if bad:
        problems.append(f"{bad.group(1)} of {requests} responses not 2xx/3xx")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if errors and any(int(x) for x in errors.groups()):
        problems.append("socket errors: connect {}, read {}, write {}, timeout {}".format(*errors.groups()))
    return requests, float(rate.group(1)), problems


def parse_h2load(text):
    """requests (succeeded), requests/s and problems from h2load's output."""
    problems = []
    fin = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", text)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if not fin or not req or not codes:
        return None, None, ["could not parse h2load's output"]
    _total, _started, done, succeeded, failed, errored, timeout = map(int, req.groups())
    ok2, r3, r4, r5 = map(int, codes.groups())
    if failed or errored or timeout:
        problems.append(f"{failed} failed, {errored} errored, {timeout} timed out of {done} done")
    if r3 or r4 or r5 or ok2 < succeeded:
        problems.append(f"status codes: {ok2} 2xx, {r3} 3xx, {r4} 4xx, {r5} 5xx")
    proto = re.search(r"Application protocol: (\S+)", text)
    if not proto or proto.group(1) != "h2":
        problems.append(f"HTTP/2 not negotiated ({proto.group(1) if proto else 'no application protocol'})")
    return succeeded, float(fin.group(3)), problems


def l7(server, backend, tool, seconds, connections):
    """Keep-alive GETs through SERVER's reverse proxy to BACKEND for SECONDS:
    wrk (HTTP/1.1) or h2load (HTTP/2, H2_STREAMS streams per connection),
    pinned to the client CPU. Returns requests/s, the proxy's CPU µs per
    request, backend connections opened, and problems (any means FAILED)."""
    result = {"problems": []}
    problems = result["problems"]
    url = f"https://{L7_HOST}:{server.l7_port}/"
    if tool == "wrk":
        why = preflight(server.l7_port)
        if why:
            problems.append(why)
        args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url]
    else:
        args = ["h2load", "-t1", "-c", str(connections), "-m", str(H2_STREAMS), "-D", str(seconds), url]
    result["command"] = " ".join(["taskset", "-c", CLIENT_CPU] + args)
    if not server.alive():  # a failed test GET does not stop the run: wrk's figures tell more
        problems.append(f"{server.name} is not running (exit {server.proc.returncode if server.proc else '?'})")
        result["diagnostics"] = server.diagnostics()
        return result
    accepts0, requests0 = backend.counters()
    split0 = cpu_split(server.pid)
    try:
        p = subprocess.run(["taskset", "-c", CLIENT_CPU] + args, capture_output=True, text=True,
                           timeout=seconds + 60)
        output, code = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ""
        output = out.decode(errors="replace") if isinstance(out, bytes) else out
        code = "by timeout"
    alive = server.alive()
    split1 = cpu_split(server.pid) if alive else None
    accepts1, requests1 = backend.counters()
    result["output"] = output
    if code != 0:
        problems.append(f"{tool} exited {code}")
    requests, rate, found = (parse_wrk if tool == "wrk" else parse_h2load)(output)
    problems += found
    if not alive:
        problems.append(f"{server.name} DIED during the run (exit {server.proc.returncode})")
    if requests == 0:
        problems.append("no request completed")
    if requests:
        reached = requests1 - requests0
        if reached < requests:
            problems.append(f"only {reached} of {requests} requests reached the backend")
        result.update(requests=requests, rate=rate, backend_connections=accepts1 - accepts0)
        if split1 is not None:
            result["cpu_us_per_request"] = (sum(split1) - sum(split0)) * 1e6 / requests
            result["kernel_us_per_request"] = (split1[1] - split0[1]) * 1e6 / requests
    if problems:
        result["diagnostics"] = server.diagnostics()
    return result


def bssl_tool(binary):
    """The `bssl` of the BoringSSL that binary links (`--version` says which): the
    fast build's own (.ci/boringssl), else Debian's bssl-tool."""
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    fast = os.path.join(ROOT, ".deps", "boringssl", "bin", "bssl")
    if "without OPENSSL_SMALL" in version and os.access(fast, os.X_OK):
        return fast
    return shutil.which("bssl-tool")


def crypto_floor(binary):
    """µs per operation from `bssl speed` of binary's BoringSSL, pinned to the server's CPU."""
    exe = bssl_tool(binary)
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
        return None, f"could not parse {exe} speed output:\n" + text
    return ops, text


# --- report ----------------------------------------------------------------------

CLIENTS = {
    "bssl": "BoringSSL client (`gatehouse bench handshake`)",
    "openssl": "OpenSSL client (`bench/ssl_client.py`)",
}
SERVER_NAMES = {"gatehouse": "Gatehouse", "haproxy": "HAProxy", "nginx": "nginx"}
CPU_FLAGS = ("aes", "vaes", "pclmulqdq", "vpclmulqdq", "avx2", "avx512f", "avx512ifma", "avx512vl", "adx", "bmi2",
             "sha_ni")


def first_line(args, pattern):
    """The first line of ARGS' output (stdout and stderr) matching PATTERN, or None."""
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in (p.stdout + p.stderr).splitlines():
        if re.search(pattern, line):
            return line.strip()
    return None


def machine_info(binary):
    """CPU model and the flags that decide crypto speed, and the TLS libraries in play."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    boring = first_line([binary, "--version"], r"^BoringSSL")
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "cpu_flags_absent": [f for f in CPU_FLAGS if f not in flags],
        "gatehouse_boringssl": boring or "unknown",
        "openssl_client": ssl.OPENSSL_VERSION,
        "nginx": first_line([nginx_exe() or "nginx", "-V"], r"built with|nginx version") if nginx_exe() else None,
        "haproxy": (first_line(["haproxy", "-vv"], r"Running on OpenSSL") if shutil.which("haproxy") else None),
    }


def print_machine(m):
    print(f"- CPU: {m['cpu_model']}, {m['cpus']} CPUs; flags: {' '.join(m['cpu_flags']) or 'none of interest'}"
          + (f" (absent: {' '.join(m['cpu_flags_absent'])})" if m["cpu_flags_absent"] else ""))
    print(f"- Gatehouse's BoringSSL: {m['gatehouse_boringssl']}")
    print(f"- OpenSSL client: {m['openssl_client']}; nginx: {m['nginx'] or 'not installed'}; "
          f"HAProxy: {m['haproxy'] or 'not installed'}")


def cell(result, case_sig, case_resume):
    """(server µs per handshake or None, the table's text) for one case."""
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
    if any(not k.startswith(want) for k in keys):
        return None, f"wrong certificate ({', '.join(keys)})"
    text = with_kernel(f"{us:.0f} µs", result.get("kernel_share")) + f" {rate:.0f}/s"
    if result.get("server_busy") is not None:
        text += f", busy {result['server_busy'] * 100:.0f}%"
    if (result.get("other_load") or 0) >= NOISY:
        text += f", ⚠ other load {result['other_load']:.1f} CPU"
    return us, text


def ratio_to_best(values):
    """(Gatehouse / best peer, best peer's name) or (None, None)."""
    peers = {n: v for n, v in values.items() if n != "Gatehouse" and v}
    if not values.get("Gatehouse") or not peers:
        return None, None
    best = min(peers, key=peers.get)
    return values["Gatehouse"] / peers[best], best


def parse_list(text, allowed, flag):
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        sys.exit(f"compare: {flag} {text!r}: choose from {', '.join(allowed)}")
    return items


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gatehouse", default=os.environ.get("GATEHOUSE") or os.path.join(ROOT, "build", "proxy", "gatehouse"))
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", "5")),
                    help="per handshake case and client (default 5)")
    ap.add_argument("--concurrency", type=int, default=32, help="connections of the BoringSSL client (default 32)")
    ap.add_argument("--processes", type=int, default=3,
                    help="processes of the OpenSSL client, one connection each (default 3)")
    ap.add_argument("--clients", default="bssl,openssl", help="handshake clients: bssl,openssl (default both)")
    ap.add_argument("--servers", default="gatehouse,haproxy,nginx", help="default all three")
    ap.add_argument("--workers", default="1",
                    help="worker counts for the handshake cases, e.g. 1,2 (scaling; default 1)")
    ap.add_argument("--scaling", action="store_true", help="same as --workers 1,2")
    ap.add_argument("--skip-l7", action="store_true", help="no wrk/h2load runs")
    ap.add_argument("--skip-bulk", action="store_true", help="no bulk run")
    ap.add_argument("--json", help="summary file (default: gatehouse-compare-DATE.json in the temp directory)")
    ap.add_argument("--bulk-mib", type=int, default=1024)
    ap.add_argument("--l7-seconds", type=int, default=10, help="wrk run per proxy (default 10)")
    ap.add_argument("--h2-seconds", type=int, default=5, help="h2load run per proxy (default 5; 0 skips)")
    ap.add_argument("--l7-connections", type=int, default=32)
    ap.add_argument("--l7-rounds", type=int, default=3,
                    help="L7 runs per proxy and tool, taken in turns; the median is reported (default 3)")
    ap.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bulk-client", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.client_list = parse_list(args.clients, CLIENTS, "--clients")
    args.server_list = parse_list(args.servers, SERVER_NAMES, "--servers")
    try:
        args.worker_list = sorted({int(w) for w in ("1,2" if args.scaling else args.workers).split(",") if w})
    except ValueError:
        sys.exit(f"compare: --workers {args.workers!r}: numbers separated by commas")
    if 1 not in args.worker_list or any(w < 1 for w in args.worker_list):
        sys.exit("compare: --workers must include 1 (the comparison and the base of the growth factor)")
    return args


def make_servers(args, procs, work, certs, sink_port, backend, binary, workers=1, pinned=True):
    made = {"gatehouse": lambda: Gatehouse(procs, work, certs, sink_port, backend, workers, pinned, binary=binary),
            "haproxy": lambda: Haproxy(procs, work, certs, sink_port, backend, workers, pinned),
            "nginx": lambda: Nginx(procs, work, certs, sink_port, backend, workers, pinned)}
    return [made[n]() for n in args.server_list]


def start_server(server):
    try:
        server.start()
    except Exception as e:  # noqa: BLE001 - report and go on with the others
        server.skip = str(e)
        server.stop()
    if server.skip:
        log(f"{server.name}: skipped: {server.skip}")
    return not server.skip


def handshake_cases(args, binary, work, server, results, pinned=True):
    """Every case with every client, the clients in turn per case."""
    where = "" if pinned else f", {server.workers} workers on any CPU"
    for key, label, sig, resume, _ in CASES:
        for client in args.client_list:
            log(f"{server.name}: {label}, {client} client ({args.seconds}s{where}) ...")
            r = bench(client, binary, work, server, sig, resume, args.seconds, args, pinned)
            results[(server.name, server.workers, client, key)] = r
            if r.get("exit"):
                log(f"  {client} exited {r['exit']}: " + " ".join(r.get("problems", []))[:300])


def main():
    args = parse_args()
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
    stamp = time.strftime("%Y-%m-%d %H:%M")
    json_path = args.json or os.path.join(tempfile.gettempdir(),
                                          f"gatehouse-compare-{time.strftime('%Y%m%d-%H%M%S')}.json")
    machine = machine_info(binary)
    procs = Processes()

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    work = tempfile.mkdtemp(prefix="gatehouse-compare-")
    l7_skip = "--skip-l7" if args.skip_l7 else None
    backend = None
    os.chmod(work, 0o755)  # nginx workers run unprivileged
    results = {}  # (server name, workers, client, case key) -> bench() result
    bulks = {}
    l7s = {}      # (server name, tool) -> l7() results
    tools = []
    try:
        log(f"crypto floor: {bssl_tool(binary)} speed on CPU 0 ...")
        floor, floor_text = crypto_floor(binary)

        certs = {}
        for key, kind in (("ec", "ec256"), ("rsa", "rsa2048")):
            prefix = os.path.join(work, key)
            subprocess.run([binary, "cert", "new", "--cn", SNI, "--san", SNI, "--san", L7_HOST, "--key", kind,
                            "--out", prefix],
                           check=True, capture_output=True, timeout=60)
            certs[key] = prefix

        sink_port = free_port()
        sink = procs.start(["taskset", "-c", CLIENT_CPU, sys.executable, os.path.abspath(__file__),
                            "--sink", str(sink_port)], stdin=subprocess.DEVNULL)
        wait_port(sink_port, sink, "sink")

        if not args.skip_l7:
            backend = Backend(procs, work, CLIENT_CPU)
            try:
                backend.start(binary)
            except Exception as e:  # noqa: BLE001 - the handshake and bulk runs still make sense
                l7_skip = f"backend nginx did not start: {e}"
                log(f"L7: skipped: {l7_skip}")
                backend.stop()
                backend = None

        servers = make_servers(args, procs, work, certs, sink_port, backend, binary)
        if not args.skip_l7:
            tools = [("wrk", args.l7_seconds)] + ([("h2load", args.h2_seconds)] if args.h2_seconds > 0 else [])
            for tool, _ in tools:
                if not shutil.which(tool):
                    log(f"L7: {tool} not installed, skipped")
            tools = [(t, sec) for t, sec in tools if shutil.which(t)]
        for server in servers:
            if not start_server(server):
                continue
            handshake_cases(args, binary, work, server, results)
            if server.bulk_port and not args.skip_bulk:
                log(f"{server.name}: bulk {args.bulk_mib} MiB through TLS termination ...")
                bulks[server.name] = bulk(server, args.bulk_mib)
        # L7 in rounds, the three proxies in turn each round (all left running,
        # idle but for the one measured), so that a slow spell of the machine
        # does not fall on one proxy only; the report takes each one's median.
        for round_no in range(1, args.l7_rounds + 1):
            for tool, seconds in tools:
                for server in servers:
                    if server.skip or not server.l7_port:
                        continue
                    log(f"{server.name}: L7 keep-alive GETs through TLS on both sides, {tool} ({seconds}s), "
                        f"round {round_no} of {args.l7_rounds} ...")
                    r = l7(server, backend, tool, seconds, args.l7_connections)
                    l7s.setdefault((server.name, tool), []).append(r)
                    if r["problems"]:
                        log(f"*** {server.name} L7 {tool} FAILED: " + "; ".join(r["problems"]) + " ***")
        for server in servers:
            server.stop()
        # Scaling: each server again with N workers, free to use every CPU.
        for workers in args.worker_list[1:]:
            for server in make_servers(args, procs, work, certs, sink_port, None, binary, workers, pinned=False):
                if start_server(server):
                    handshake_cases(args, binary, work, server, results, pinned=False)
                server.stop()
    finally:
        if backend:
            backend.stop()
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    names = [s.name for s in servers]
    skipped = {s.name: s.skip for s in servers if s.skip}
    print()
    print(f"# Gatehouse vs HAProxy vs nginx — {stamp}")
    print()
    print_machine(machine)
    ratios = report_handshakes(args, names, skipped, results)
    report_floor(floor, floor_text, results)
    report_bulk(bulks)
    failed = report_l7(names, servers, l7s, tools, args, l7_skip)
    scaling = report_scaling(args, names, results) if len(args.worker_list) > 1 else []

    print()
    print("## Caveats")
    print()
    print("- All three run an HTTP frontend for the handshake cases, which waits after the handshake for a request "
          "that never comes: Gatehouse an **l7** listener (the one the L7 runs use), HAProxy a `mode http` "
          "frontend, nginx an HTTPS `server`. Bulk goes through Gatehouse's **l4** listener and HAProxy's "
          "`mode tcp` frontend.")
    print("- In the L7 runs the load generator and the backend nginx share CPU 1, so requests/s is bounded by CPU 1 "
          "as much as by the proxy; the proxy's CPU per request is the figure to compare.")
    print(f"- One run on a shared {os.cpu_count()}-CPU machine: other load on CPU 0 or 1 moves the figures (cells "
          f"flag ⚠ when processes other than the server and the client used ≥ {NOISY} CPU during a case); rerun "
          "to compare, and compare only ratios taken in one run.")
    print(f"- Whole run: {time.monotonic() - started:.0f} s. JSON summary: {json_path}")
    write_summary(json_path, args, machine, stamp, results, ratios, scaling, bulks, l7s, floor,
                  time.monotonic() - started)
    if failed:
        print()
        print("**L7 FAILED: " + "; ".join(failed) + "** (details above)")
        log("*** compare: L7 FAILED: " + "; ".join(failed) + " ***")
        return 1
    return 0


def report_handshakes(args, names, skipped, results):
    """The per-client tables at one worker and the side-by-side ratios; returns
    {case key: {client: (ratio, best peer)}}."""
    print()
    print(f"## Server CPU per TLS 1.3 handshake (µs; lower is better) — server on CPU {SERVER_CPU} (1 worker), "
          f"client on CPU {CLIENT_CPU}, {args.seconds}s per case and client")
    print()
    print("| case | client | " + " | ".join(names) + " | Gatehouse / best peer | target |")
    print("|---|---|" + "---|" * len(names) + "---|---|")
    ratios = {}
    for key, label, sig, resume, target in CASES:
        for client in args.client_list:
            values, texts = {}, []
            for n in names:
                if n in skipped:
                    texts.append(f"skipped ({skipped[n][:40]})")
                    continue
                v, t = cell(results.get((n, 1, client, key)), sig, resume)
                values[n] = v
                texts.append(t)
            ratio, best = ratio_to_best(values)
            ratios.setdefault(key, {})[client] = (ratio, best)
            shown = "—" if ratio is None else f"{ratio:.2f} ({best})" + (" ✔" if ratio <= target else " ✘")
            print(f"| {label} | {client} | " + " | ".join(texts) + f" | {shown} | ≤ {target:.2f} |")
    print()
    print("Cells: server CPU µs per handshake from /proc/PID/stat (utime+stime, all threads; 10 ms ticks), the "
          "handshakes/s the client reached, and how busy the server was (its CPU seconds over the run's seconds: "
          "well under 100% means the client, not the server, set the pace, and a server that is not saturated "
          f"pays more wake-ups per handshake). bssl: one BoringSSL process, {args.concurrency} connections; "
          f"openssl: {args.processes} Python/OpenSSL processes, one connection each. Both offer X25519 and only the "
          "case's signature algorithms, verify no certificate chain (the handshake signature is checked), and "
          "check every connection's key type and, for resumed, that it resumed.")
    if len(args.client_list) > 1:
        print()
        print("### Gatehouse / best peer, by client (the verdict must not depend on the client)")
        print()
        print("| case | " + " | ".join(CLIENTS[c] for c in args.client_list) + " | target | verdicts |")
        print("|---|" + "---|" * len(args.client_list) + "---|---|")
        for key, label, _sig, _resume, target in CASES:
            row = ratios.get(key, {})
            shown = []
            for c in args.client_list:
                r, best = row.get(c, (None, None))
                shown.append("—" if r is None else f"{r:.2f} vs {best}" + (" ✔" if r <= target else " ✘"))
            got = [row[c][0] for c in args.client_list if row.get(c, (None,))[0] is not None]
            if len(got) < len(args.client_list):
                verdict = "—"
            elif all(r <= target for r in got) or all(r > target for r in got):
                spread = max(got) / min(got)
                verdict = "agree" + (f" (ratios differ {spread:.2f}×)" if spread >= 1.15 else "")
            else:
                verdict = "**DISAGREE**"
            print(f"| {label} | " + " | ".join(shown) + f" | ≤ {target:.2f} | {verdict} |")
        print()
        print("A ratio is taken within one client's runs only (same client, same minute, same machine). When the "
              "clients disagree, the difference is in how the load is offered (connections in flight, the TLS "
              "stack's ClientHello, how the client closes), not in the server: read the cells' busy % first.")
    return ratios


def report_floor(floor, floor_text, results):
    def gatehouse(key):
        """(Gatehouse's µs per handshake, the client that measured it) or (None, None)."""
        for client in ("bssl", "openssl"):
            r = results.get(("Gatehouse", 1, client, key))
            if r and r.get("total") and r.get("server_cpu_us_per_handshake") is not None:
                return r["server_cpu_us_per_handshake"], client
        return None, None

    print()
    if not floor:
        print(f"Crypto floor: unavailable: {floor_text[:300]}")
        return
    ecdsa_floor = floor["p256_sign"] + floor["x25519_base"] + floor["x25519_arb"]
    rsa_floor = floor["rsa2048_sign"] + floor["x25519_base"] + floor["x25519_arb"]
    print("## Crypto floor (bssl speed on CPU 0, the BoringSSL Gatehouse links)")
    print()
    print(f"- ECDSA P-256 sign {floor['p256_sign']:.1f} µs, X25519 keygen {floor['x25519_base']:.1f} µs, "
          f"X25519 shared secret {floor['x25519_arb']:.1f} µs, RSA-2048 sign {floor['rsa2048_sign']:.1f} µs")
    g, client = gatehouse("full_ecdsa")
    print(f"- full ECDSA P-256 handshake floor = 1 signature + 2 X25519 operations = **{ecdsa_floor:.0f} µs**"
          + (f"; Gatehouse ({client} client) is at {g / ecdsa_floor:.2f}x the floor (target ≤ 1.4x)" if g else ""))
    g, client = gatehouse("full_rsa")
    print(f"- full RSA-2048 handshake floor = **{rsa_floor:.0f} µs**"
          + (f"; Gatehouse ({client} client) is at {g / rsa_floor:.2f}x" if g else ""))


def report_bulk(bulks):
    if not bulks:
        return
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
            print(f"| {name} | {b['mb_per_s']:.0f} | "
                  f"{with_kernel(format(b['cpu_us_per_mib'], '.0f'), b.get('kernel_share'))} |")
    print()
    print("The client (Python ssl) and the sink share CPU 1, so MB/s is bounded by them as much as by the "
          "proxy; the CPU per MiB is the proxy's own cost. nginx has no `stream` module here and is not run.")


def scaling_row(one, many):
    """The scaling figures of one case at 1 and at N workers, or None."""
    def ok(r):
        return r and r.get("total") and r.get("server_cpu_seconds") is not None

    if not ok(one) or not ok(many):
        return None

    def per_cpu_second(r):
        return r["total"] / (r["server_cpu_seconds"] + r["client_cpu_seconds"])

    return {
        "rate": (one["handshakes_per_second"], many["handshakes_per_second"]),
        "growth": many["handshakes_per_second"] / one["handshakes_per_second"],
        "server_us": (one["server_cpu_us_per_handshake"], many["server_cpu_us_per_handshake"]),
        "client_us": (one["client_cpu_us_per_handshake"], many["client_cpu_us_per_handshake"]),
        "per_cpu_second": (per_cpu_second(one), per_cpu_second(many)),
        "server_cpus": many["server_cpu_seconds"] / many["duration_seconds"],
        "client_cpus": many["client_cpu_seconds"] / many["duration_seconds"],
        "split": many.get("worker_split", []),
        "other_load": many.get("other_load"),
    }


def report_scaling(args, names, results):
    rows = []
    for workers in args.worker_list[1:]:
        print()
        print(f"## Scaling: 1 → {workers} workers (handshakes; 1 worker: server on CPU {SERVER_CPU}, client on CPU "
              f"{CLIENT_CPU}; {workers} workers: server and client unpinned)")
        print()
        print("| server | case | client | handshakes/s | growth | server µs/handshake | client µs/handshake "
              f"| handshakes per CPU-second (server+client) | CPUs used at {workers} (server + client) "
              f"| thread/worker split at {workers} |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for n in names:
            for key, label, *_ in CASES:
                for client in args.client_list:
                    row = scaling_row(results.get((n, 1, client, key)), results.get((n, workers, client, key)))
                    if row is None:
                        print(f"| {n} | {label} | {client} | failed or not run | | | | | | |")
                        continue
                    rows.append(dict(row, server=n, case=key, client=client, workers=workers))
                    noisy = " ⚠" if (row["other_load"] or 0) >= NOISY else ""
                    print(f"| {n} | {label} | {client} | {row['rate'][0]:.0f} → {row['rate'][1]:.0f}{noisy} "
                          f"| {row['growth']:.2f}× | {row['server_us'][0]:.0f} → {row['server_us'][1]:.0f} "
                          f"| {row['client_us'][0]:.0f} → {row['client_us'][1]:.0f} "
                          f"| {row['per_cpu_second'][0]:.0f} → {row['per_cpu_second'][1]:.0f} "
                          f"| {row['server_cpus']:.2f} + {row['client_cpus']:.2f} "
                          f"| {'/'.join(str(x) for x in row['split']) or '—'} % |")
    print()
    print(f"On {os.cpu_count()} CPUs the client needs CPU too: with 1 worker the server has CPU {SERVER_CPU} and the "
          f"client CPU {CLIENT_CPU}; with more workers all of them share every CPU, so handshakes/s can only grow "
          "as far as the client leaves room, and a growth near 1× does not mean the server does not scale. What "
          "this does show: whether the server's CPU per handshake stays flat with more workers (no locking or "
          "cache-line cost), whether the work spreads over the workers (the split), and the handshakes per CPU-second "
          "of server and client together. Linear scaling needs a machine with more CPUs than the server has workers "
          "plus the client's; ⚠ marks runs where other processes used a noticeable share of the machine.")
    return rows


def summary_result(r):
    return {k: v for k, v in r.items() if k not in ("stderr",)}


def write_summary(path, args, machine, stamp, results, ratios, scaling, bulks, l7s, floor, seconds):
    summary = {
        "date": stamp, "seconds": seconds, "machine": machine,
        "settings": {"seconds": args.seconds, "concurrency": args.concurrency, "processes": args.processes,
                     "clients": args.client_list, "servers": args.server_list, "workers": args.worker_list,
                     "server_cpu": SERVER_CPU, "client_cpu": CLIENT_CPU},
        "handshakes": [{**summary_result(r), "server": n, "workers": w, "client": c, "case": k}
                       for (n, w, c, k), r in results.items()],
        "ratios": {k: {c: {"ratio": r, "best_peer": b} for c, (r, b) in v.items()} for k, v in ratios.items()},
        "targets": {key: target for key, *_rest, target in CASES},
        "scaling": scaling,
        "bulk": bulks,
        "l7": {f"{n} {t}": [{k: v for k, v in r.items() if k not in ("output", "diagnostics")} for r in runs]
               for (n, t), runs in l7s.items()},
        "crypto_floor_us": floor,
    }
    with open(path, "w") as f:
        json.dump(summary, f, indent=1, ensure_ascii=False)
        f.write("\n")


def report_l7(names, servers, l7s, tools, args, l7_skip):
    """Prints the L7 section; returns the failed runs as "server tool" strings."""
    if l7_skip or not tools:
        print()
        print(f"## L7 keep-alive requests: not run ({l7_skip or 'neither wrk nor h2load installed'})")
        return []
    failed = []
    details = []
    for tool, seconds in tools:
        if tool == "wrk":
            title = (f"HTTP/1.1, `wrk -t1 -c{args.l7_connections} -d{seconds}s`")
        else:
            title = (f"HTTP/2, `h2load -c{args.l7_connections} -m{H2_STREAMS} -D{seconds}`")
        print()
        print(f"## L7 keep-alive requests through TLS on both sides — {title}")
        print()
        print("| server | requests/s | proxy CPU µs per request (median) | of which kernel | of which user space "
              "| all rounds, µs per request | backend TLS connections opened |")
        print("|---|---|---|---|---|---|---|")
        values = {}
        user_values = {}
        for s in servers:
            if s.skip:
                print(f"| {s.name} | skipped ({s.skip[:60]}) | | | | | |")
                continue
            runs = l7s.get((s.name, tool))
            if not runs:
                continue
            bad = [r for r in runs if r["problems"] or r.get("cpu_us_per_request") is None]
            if bad:
                failed.append(f"{s.name} {tool}")
                details.append((s.name, tool, bad[0]))
                print(f"| {s.name} | **FAILED** ({len(bad)} of {len(runs)} rounds): "
                      f"{'; '.join(bad[0]['problems'])[:160]} | | | | | |")
                continue
            ordered = sorted(runs, key=lambda r: r["cpu_us_per_request"])
            r = ordered[len(ordered) // 2]
            spread = ", ".join(f"{x['cpu_us_per_request']:.1f}" for x in runs)
            us = r.get("cpu_us_per_request")
            kernel = r.get("kernel_us_per_request")
            values[s.name] = us
            user_values[s.name] = us - kernel if us is not None and kernel is not None else None
            print(f"| {s.name} | {r['rate']:.0f} | {us:.1f} | {kernel:.1f} | {us - kernel:.1f} | {spread} "
                  f"| {r['backend_connections']} |")
        peers = [v for n, v in values.items() if n != "Gatehouse" and v]
        if values.get("Gatehouse") and peers:
            ratio = values["Gatehouse"] / min(peers)
            mark = "✔" if ratio <= L7_TARGET else "✘"
            print()
            print(f"Gatehouse / best peer, proxy CPU per request: **{ratio:.2f}** {mark} (target ≤ {L7_TARGET:.2f})")
            user_peers = [v for n, v in user_values.items() if n != "Gatehouse" and v]
            if user_values.get("Gatehouse") and user_peers:
                print(f"User space only: Gatehouse / best peer **{user_values['Gatehouse'] / min(user_peers):.2f}**")
    print()
    print(f"Each proxy (CPU {SERVER_CPU}, one worker) terminates TLS from the load generator (CPU {CLIENT_CPU}) and "
          f"re-encrypts over kept-alive HTTP/1.1 to the same backend: nginx on CPU {CLIENT_CPU} with a self-signed "
          f"RSA-2048 certificate (`gatehouse cert new --cn MBX01`) answering `200 ok`. Gatehouse pins it by "
          "thumbprint, HAProxy (`http-reuse always`) and nginx (`keepalive 32`) verify it with it as their CA. "
          "Proxy CPU is utime+stime of the whole process from /proc/PID/stat (nginx: its worker) over the "
          "requests completed. Backend TLS connections opened (the backend's stub_status) above the client's "
          f"{args.l7_connections} mean the proxy's idle pool did not keep enough connections for the concurrency "
          f"(HTTP/2: {args.l7_connections}×{H2_STREAMS} streams), and each is a full TLS handshake on both CPUs. "
          "Before the wrk run one GET checks the answer is the backend's 200. "
          f"Each proxy ran {args.l7_rounds} rounds per tool, the three in turn each round; the table shows each "
          "one's median round, and every round's CPU per request. The proxies stay up between rounds, so a "
          "proxy whose idle pool kept its backend connections opens none in later rounds.")
    for name, tool, r in details:
        print()
        print(f"### {name} {tool} FAILED")
        print()
        print("- " + "\n- ".join(r["problems"]))
        if r.get("command"):
            print(f"- command: `{r['command']}`")
        print()
        print("```")
        if r.get("output"):
            print(r["output"].strip()[-2000:])
        if r.get("diagnostics"):
            print(f"--- {name}'s log (tail)")
            print(r["diagnostics"].strip())
        print("```")
    return failed


if __name__ == "__main__":
    sys.exit(main())
