#!/usr/bin/env python3
"""Soak: keep-alive HTTP/1.1 and HTTP/2 load and checksummed l4 streams
through a proxy (TLS on both sides, all on 127.0.0.1) while the proxy is
reloaded every second and its backends are killed, health-flapped and
drained, one server at a time.

Usage: bench/soak.py [--short] [--seconds N] [--proxy gatehouse|haproxy|nginx|all]
                     [--gatehouse PATH] [--json FILE]

Set-up, per proxy (each with one worker / thread):
- three HTTPS backends mbx1..mbx3, each its own nginx (one master, one
  worker) answering 200 "NAME METHOD URI" on every path; its
  /owa/healthcheck.htm answers 503 while the flag file DIR/down exists;
- two TLS echo backends echo1, echo2 (a child process of this script), never
  disturbed (an l4 stream cannot outlive its backend);
- two proxy configs, A and B, that move routes and servers: /owa's pool
  changes order and membership, /ews and /mapi swap pools, the l4 pool
  changes order. Every pool has at least two servers in both.

Load (one request always in flight per client): 4 HTTP/1.1 clients, 2 HTTP/2
clients, GETs over /owa, /ews and /mapi with a unique path each, checked
against the backend's echo of it; 3 l4 clients that open TLS streams of 1-3 s
through the proxy to the echo backends and send random chunks, comparing each
echo and the SHA-256 of the whole stream end to end.

Chaos: a SIGHUP (HAProxy: SIGUSR2 to its master) every second alternating A
and B, and, one server at a time, in turns: SIGKILL of a backend nginx
(master and worker) then a restart, a health flap (the flag file for about
1.2 s), a drain then enable through the admin API (HAProxy: `set server
B/S state drain|ready` on its stats socket). After each disturbance the script
waits until the proxy reports every server up again before the next one, so
a healthy server always exists and every failed request counts.

A request fails when it gets a non-200 answer or a wrong body, when its
HTTP/1.1 connection closes without a `Connection: close` having been
announced, when an HTTP/2 stream is neither answered nor above a GOAWAY's
last-stream-id (those are retried on a new connection and not counted), on
a timeout (10 s), or when the client cannot connect.

Descriptors and RSS of the proxy (its whole process tree): a baseline after
a 2 s warm-up with the same load and no chaos (load stopped, 1 s wait), and
again after the soak's load stops; both must be back within 5 s: RSS within
baseline + 8 MiB; descriptors other than kept-alive backend connections at
the baseline (+2 for health probes in flight), and those connections within
one per L7 client per (pool, server) pair (see fd_check).

--short: a 16 s soak against Gatehouse (unless --proxy says otherwise) that
exits non-zero on any failed request, any lost or corrupted l4 byte, or
descriptors/RSS not back to the baseline. Long mode (60 s by default) with
--proxy all runs Gatehouse, HAProxy 2.6 and nginx 1.22 in turn and prints
them side by side. nginx OSS has no active health checks and no admin API:
those parts are skipped for it and the report says so.

Everything runs in a temporary directory; every process started is stopped
at the end, also on Ctrl-C or an error."""

import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import h2frames  # noqa: E402  (standard library only)
from compare import children, free_port, nginx_exe, nginx_paths, tail, wait_port  # noqa: E402  (bench/, beside this file)

HOST = "mail.contoso.test"
HTTP_BACKENDS = ["mbx1", "mbx2", "mbx3"]
ECHO_BACKENDS = ["echo1", "echo2"]
PATHS = ["/owa", "/ews", "/mapi"]
H1_CLIENTS = 4
H2_CLIENTS = 2
L4_CLIENTS = 3
# Under AddressSanitizer (CI's second pass sets GATEHOUSE_SANITIZED) the proxy
# is several times slower and freed memory waits in ASan's quarantine, so RSS
# says nothing about leaks there: only descriptors are checked, with more time.
SANITIZED = bool(os.environ.get("GATEHOUSE_SANITIZED"))
REQUEST_TIMEOUT = 40.0 if SANITIZED else 10.0
WARMUP_SECONDS = 2.0
RETURN_WITHIN = 20.0 if SANITIZED else 5.0
RSS_SLACK = (1 << 40) if SANITIZED else 8 << 20
LATER_WITHIN = 40.0  # after a miss: how much longer to watch (Gatehouse's default drain_timeout is 30 s)
# Descriptors once the load has stopped, against the baseline: every
# descriptor other than an established connection to an HTTP backend must be
# back (+ PROBE_SLACK for health probes in flight at the moment of the
# sample), and the kept-alive backend connections may differ from the
# baseline's but stay within what a proxy may legitimately keep: at most one
# per request that was in flight at once to a (pool, server) pair, i.e. one
# per L7 client per pair of the larger configuration.
PROBE_SLACK = 2
# Pool membership in the two configurations. Names are the same in both, so
# state (health, drain) can carry over; /ews and /mapi swap pools in B.
CONFIGS = {
    "A": {"pools": {"owa": ["mbx1", "mbx2", "mbx3"], "ews": ["mbx2", "mbx3"], "mapi": ["mbx3", "mbx1"]},
          "routes": {"/owa": "owa", "/ews": "ews", "/mapi": "mapi"},
          "echo": ["echo1", "echo2"]},
    "B": {"pools": {"owa": ["mbx3", "mbx1"], "ews": ["mbx1", "mbx2"], "mapi": ["mbx2", "mbx3"]},
          "routes": {"/owa": "owa", "/ews": "mapi", "/mapi": "ews"},
          "echo": ["echo2", "echo1"]},
}


BACKEND_BOUND = (H1_CLIENTS + H2_CLIENTS) * max(sum(len(v) for v in c["pools"].values()) for c in CONFIGS.values())


def fd_check(base, r):
    """None when R's descriptors are back within the allowances, else why not."""
    other_base = base["fds"] - base["backend_connections"]
    other = r["fds"] - r["backend_connections"]
    why = []
    if other > other_base + PROBE_SLACK:
        why.append(f"{other} descriptors other than backend connections > baseline {other_base} + {PROBE_SLACK}")
    if r["backend_connections"] > BACKEND_BOUND:
        why.append(f"{r['backend_connections']} kept-alive backend connections > {BACKEND_BOUND}")
    return "; ".join(why) or None


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# --- processes -------------------------------------------------------------------

def proc_stat(pid):
    """(state, pgrp, start time) of PID, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[2]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def group_members(pgid):
    """Live (not zombie) processes of process group PGID."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st and st[1] == pgid and st[0] != "Z":
                out.append(int(name))
    return out


def tree(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


class Processes:
    """Every process this script starts runs in its own process group (a new
    session); stopping one signals its group while the leader is still our
    unreaped child, so the group id cannot belong to anyone else."""

    def __init__(self):
        self.procs = []

    def start(self, args, **kw):
        p = subprocess.Popen(args, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, timeout=5.0):
        """SIG to P's group, then SIGKILL if anything of it is left after
        TIMEOUT; waits until the group is empty, then reaps the leader."""
        pgid = p.pid
        if p.returncode is None:
            for s in (sig, signal.SIGKILL):
                try:
                    os.killpg(pgid, s)
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + (timeout if s != signal.SIGKILL else 5.0)
                while group_members(pgid) and time.monotonic() < deadline:
                    time.sleep(0.02)
                if not group_members(pgid):
                    break
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in list(reversed(self.procs)):
            self.stop(p, timeout=3.0)


def nginx_head(d, modules=""):
    return f"""{modules}daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{nginx_paths(d)}"""


# --- resources of the proxy ---------------------------------------------------------

def tcp_table():
    """inode -> (local port, remote port, state hex) for IPv4 TCP sockets."""
    out = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    p = line.split()
                    out[int(p[9])] = (int(p[1].rsplit(":", 1)[1], 16), int(p[2].rsplit(":", 1)[1], 16), p[3])
        except (OSError, StopIteration):
            pass
    return out


TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
              "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def resources(pid, roles):
    """Descriptors and RSS (bytes) of PID and its descendants; how many
    descriptors are established TCP connections to the HTTP backends, how
    many sockets are in CLOSE_WAIT (the peer closed, the proxy still holds
    them), and every descriptor by kind. ROLES maps a port to a name."""
    fds = rss = 0
    inodes = []
    kinds = {}
    for p in tree(pid):
        try:
            names = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        fds += len(names)
        for n in names:
            try:
                target = os.readlink(f"/proc/{p}/fd/{n}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.append(int(target[8:-1]))
            else:
                kind = target.split(":", 1)[0] if ":" in target else f"file {os.path.basename(target)}"
                kinds[kind] = kinds.get(kind, 0) + 1
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
        except OSError:
            pass
    table = tcp_table()
    to_backends = close_wait = 0
    for i in inodes:
        t = table.get(i)
        if t is None:
            kind = "socket (not TCP)"
        else:
            local, remote, state = t
            state = TCP_STATES.get(state, state)
            if state == "LISTEN":
                kind = f"listen {roles.get(local, local)}"
            elif local in roles:
                kind = f"tcp {state} from client to {roles[local]}"
            else:
                role = roles.get(remote, str(remote))
                kind = f"tcp {state} to {role}"
                if role.startswith("mbx") and state == "ESTABLISHED":
                    to_backends += 1
            if state == "CLOSE_WAIT":
                close_wait += 1
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"fds": fds, "rss": rss, "backend_connections": to_backends, "close_wait": close_wait,
            "kinds": dict(sorted(kinds.items()))}


# --- backends ------------------------------------------------------------------------

class HttpBackend:
    """One nginx HTTPS backend in its own directory and process group."""

    def __init__(self, procs, work, name, cert):
        self.procs, self.name, self.cert = procs, name, cert
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.flag = os.path.join(self.dir, "down")
        self.port = free_port()
        self.proc = None
        self.kills = 0

    def config(self):
        d = self.dir
        return f"""{nginx_head(d)}
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {self.cert}.crt;
        ssl_certificate_key {self.cert}.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        location = /owa/healthcheck.htm {{
            if (-f {self.flag}) {{ return 503 "{self.name} down\\n"; }}
            return 200 "{self.name} up\\n";
        }}
        location / {{
            add_header X-Backend {self.name} always;
            return 200 "{self.name} $request_method $request_uri\\n";
        }}
    }}
}}
"""

    def start(self):
        cfg = os.path.join(self.dir, "nginx.conf")
        write_atomic(cfg, self.config())
        for attempt in range(3):
            self.proc = self.procs.start([nginx_exe(), "-c", cfg, "-p", self.dir, "-e", f"{self.dir}/error.log"],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            try:
                wait_port(self.port, self.proc, f"backend {self.name}")
                return
            except RuntimeError as e:
                self.procs.stop(self.proc)
                if attempt == 2 or "Address already in use" not in tail(f"{self.dir}/error.log", 500):
                    raise RuntimeError(f"{e}: {tail(f'{self.dir}/error.log', 300)}") from None
                time.sleep(0.2)

    def kill(self):
        """SIGKILL to master and worker (the whole group)."""
        self.kills += 1
        self.procs.stop(self.proc, sig=signal.SIGKILL)
        self.proc = None

    def set_down(self, down):
        if down:
            open(self.flag, "w").close()
        elif os.path.exists(self.flag):
            os.unlink(self.flag)

    def stop(self):
        if self.proc:
            self.procs.stop(self.proc)
            self.proc = None


def run_echo_server(port, cert, key):
    """A TLS echo server (asyncio): every byte read is written back."""
    import asyncio

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    async def handle(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError, ConnectionError):
            pass
        finally:
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=ctx, backlog=1024, reuse_address=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --- proxies -------------------------------------------------------------------------

class Proxy:
    name = "?"
    has_health = True
    has_admin = True
    reload_signal = signal.SIGHUP

    def __init__(self, procs, work, certs, backends, echo_ports):
        self.procs, self.certs, self.backends, self.echo_ports = procs, certs, backends, echo_ports
        self.dir = os.path.join(work, self.name.lower())
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.web_port = free_port()
        self.l4_port = free_port()
        self.proc = None
        self.variant = "A"

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def write_config(self, variant):
        self.variant = variant
        write_atomic(self.config_path, self.config(CONFIGS[variant]))

    def reload(self, variant):
        self.write_config(variant)
        os.kill(self.proc.pid, self.reload_signal)

    def states(self):
        """{(pool, server): "up" | "down" | "drained"} as the proxy sees it,
        or None when it cannot tell."""
        return None

    def drain(self, server, drain):
        pass

    def after_reload(self):
        pass

    def diagnostics(self):
        return ""

    def stop(self):
        if self.proc:
            self.procs.stop(self.proc, timeout=5.0)
            self.proc = None


class Gatehouse(Proxy):
    name = "Gatehouse"

    def __init__(self, *a, binary, access_log=True):
        super().__init__(*a)
        self.binary = binary
        self.admin_port = free_port()
        self.config_path = os.path.join(self.dir, "gatehouse.toml")
        self.stderr_path = os.path.join(self.dir, "gatehouse.stderr")
        self.access_path = os.path.join(self.dir, "access.log") if access_log else ""

    def config(self, c):
        front = self.certs["front"]
        health = ('{ kind = "http", path = "/owa/healthcheck.htm", interval = "300ms", timeout = "1s", '
                  'rise = 1, fall = 1 }')
        out = [f"""[global]
workers = 1
admin = "127.0.0.1:{self.admin_port}"
access_log = "{self.access_path}"
drain_timeout = "30s"

[[certificate]]
name = "front"
cert = "{front}.crt"
key = "{front}.key"

[[listener]]
name = "web"
bind = "127.0.0.1:{self.web_port}"
mode = "l7"

[[listener]]
name = "l4"
bind = "127.0.0.1:{self.l4_port}"
mode = "l4"
pool = "echo"
"""]
        for path, pool in c["routes"].items():
            out.append(f'[[route]]\nlistener = "web"\npaths = ["{path}"]\npool = "{pool}"\n')
        for b in self.backends:
            out.append(f'[[server]]\nname = "{b.name}"\naddress = "127.0.0.1:{b.port}"\n'
                       f'pin = "{self.certs["mbx_thumbprint"]}"\n')
        for name, port in self.echo_ports.items():
            out.append(f'[[server]]\nname = "{name}"\naddress = "127.0.0.1:{port}"\n'
                       f'pin = "{self.certs["mbx_thumbprint"]}"\n')
        for pool, servers in c["pools"].items():
            out.append(f'[[pool]]\nname = "{pool}"\nservers = {json.dumps(servers)}\ntls = "verify"\n'
                       f'health = {health}\n')
        out.append(f'[[pool]]\nname = "echo"\nservers = {json.dumps(c["echo"])}\ntls = "verify"\n')
        return "\n".join(out)

    def start(self):
        self.write_config("A")
        self.stderr = open(self.stderr_path, "w")
        self.proc = self.procs.start([self.binary, "run", "-c", self.config_path], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.stderr)
        for port in (self.web_port, self.l4_port, self.admin_port):
            try:
                wait_port(port, self.proc, "gatehouse")
            except RuntimeError as e:
                raise RuntimeError(f"{e}: {tail(self.stderr_path, 600)}") from None

    def admin(self, method, path):
        c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        try:
            c.request(method, path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def states(self):
        try:
            status, body = self.admin("GET", "/status.json")
            data = json.loads(body)
        except (OSError, ValueError, http.client.HTTPException):
            return None
        return {(p["name"], s["name"]): s["state"] for p in data["pools"] for s in p["servers"]}

    def drain(self, server, drain):
        for pool in CONFIGS["A"]["pools"]:
            try:  # 404 where the current configuration's pool lacks the server
                self.admin("POST", f"/pools/{pool}/servers/{server}/{'drain' if drain else 'enable'}")
            except (OSError, http.client.HTTPException):
                pass

    def events(self):
        out = []
        try:
            with open(self.stderr_path, errors="replace") as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        out.append({"event": "text", "text": line.rstrip("\n")})
        except OSError:
            pass
        return out

    def diagnostics(self):
        return tail(self.stderr_path)

    def stop(self):
        super().stop()
        if getattr(self, "stderr", None):
            self.stderr.close()
            self.stderr = None


class Haproxy(Proxy):
    name = "HAProxy"
    reload_signal = signal.SIGUSR2

    def __init__(self, *a):
        super().__init__(*a)
        self.config_path = os.path.join(self.dir, "haproxy.cfg")
        self.stats_sock = os.path.join(self.dir, "stats.sock")
        self.log_path = os.path.join(self.dir, "haproxy.log")
        self.drained = set()
        self.lock = threading.Lock()
        self.pem = os.path.join(self.dir, "front.pem")
        with open(self.pem, "w") as out:
            for ext in (".crt", ".key"):
                with open(self.certs["front"] + ext) as f:
                    out.write(f.read())

    def config(self, c):
        mbx = self.certs["mbx"]
        ports = {b.name: b.port for b in self.backends}
        out = [f"""global
    nbthread 1
    maxconn 4000
    hard-stop-after 60s
    stats socket {self.stats_sock} mode 600 level admin
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    timeout http-keep-alive 60s
    retries 3
    option redispatch 1

frontend web
    mode http
    bind 127.0.0.1:{self.web_port} ssl crt {self.pem} alpn h2,http/1.1
"""]
        for path, pool in c["routes"].items():
            out.append(f"    use_backend {pool} if {{ path_beg -i {path} }}\n")
        for pool, servers in c["pools"].items():
            out.append(f"""
backend {pool}
    mode http
    balance roundrobin
    retry-on all-retryable-errors
    option httpchk GET /owa/healthcheck.htm
    default-server ssl verify required ca-file {mbx}.crt verifyhost mbx check inter 300ms fall 1 rise 1
""")
            for s in servers:
                out.append(f"    server {s} 127.0.0.1:{ports[s]}\n")
        out.append(f"""
frontend l4
    mode tcp
    bind 127.0.0.1:{self.l4_port} ssl crt {self.pem}
    default_backend echo

backend echo
    mode tcp
""")
        for s in c["echo"]:
            out.append(f"    server {s} 127.0.0.1:{self.echo_ports[s]} ssl verify required ca-file {mbx}.crt "
                       f"verifyhost mbx\n")
        return "".join(out)

    def start(self):
        exe = shutil.which("haproxy")
        if not exe:
            raise RuntimeError("haproxy not installed")
        self.write_config("A")
        self.log = open(self.log_path, "w")
        self.proc = self.procs.start([exe, "-W", "-db", "-f", self.config_path],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        for port in (self.web_port, self.l4_port):
            try:
                wait_port(port, self.proc, "haproxy")
            except RuntimeError as e:
                raise RuntimeError(f"{e}: {tail(self.log_path, 600)}") from None

    def cli(self, command):
        """One command on the stats socket, which the newest worker binds."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.stats_sock)
            s.sendall(command.encode() + b"\n")
            out = b""
            while True:
                part = s.recv(65536)
                if not part:
                    break
                out += part
        return out.decode(errors="replace")

    def states(self):
        try:
            text = self.cli("show stat")
        except OSError:
            return None
        out = {}
        for line in text.splitlines():
            f = line.split(",")
            if len(f) > 17 and f[0] in CONFIGS["A"]["pools"] and f[1] not in ("BACKEND", "FRONTEND"):
                st = f[17]
                out[(f[0], f[1])] = "up" if st == "UP" else "drained" if st.startswith("DRAIN") else "down"
        return out or None

    def _set(self, server, state):
        for pool, servers in CONFIGS[self.variant]["pools"].items():
            if server in servers:
                try:
                    self.cli(f"set server {pool}/{server} state {state}")
                except OSError:
                    pass

    def drain(self, server, drain):
        with self.lock:
            (self.drained.add if drain else self.drained.discard)(server)
            self._set(server, "drain" if drain else "ready")

    def after_reload(self):
        # A new worker starts from the configuration: without a
        # server-state-file a drain does not survive the reload. Re-apply it,
        # as an operator's reload script would.
        with self.lock:
            for server in self.drained:
                self._set(server, "drain")

    def diagnostics(self):
        return tail(self.log_path)

    def stop(self):
        super().stop()
        if getattr(self, "log", None):
            self.log.close()
            self.log = None


STREAM_MODULE = "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n"


class Nginx(Proxy):
    name = "nginx"
    has_health = False
    has_admin = False

    def __init__(self, *a):
        super().__init__(*a)
        self.config_path = os.path.join(self.dir, "nginx.conf")

    def config(self, c):
        d = self.dir
        front, mbx = self.certs["front"], self.certs["mbx"]
        ports = {b.name: b.port for b in self.backends}
        certs = f"""        ssl_certificate {front}.crt;
        ssl_certificate_key {front}.key;
        ssl_protocols TLSv1.2 TLSv1.3;"""
        upstreams = ""
        for pool, servers in c["pools"].items():
            lines = "".join(f"        server 127.0.0.1:{ports[s]} max_fails=1 fail_timeout=1s;\n" for s in servers)
            upstreams += f"    upstream {pool} {{\n{lines}        keepalive 16;\n    }}\n"
        locations = ""
        for path, pool in c["routes"].items():
            locations += f"        location {path} {{ proxy_pass https://{pool}; }}\n"
        echo = "".join(f"        server 127.0.0.1:{self.echo_ports[s]};\n" for s in c["echo"])
        head = nginx_head(d, STREAM_MODULE)
        return f"""{head}
    keepalive_requests 1000000;
{upstreams}    server {{
        listen 127.0.0.1:{self.web_port} ssl http2;
{certs}
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_ssl_verify on;
        proxy_ssl_trusted_certificate {mbx}.crt;
        proxy_ssl_name mbx;
        proxy_ssl_session_reuse on;
        proxy_next_upstream error timeout;
{locations}    }}
}}
stream {{
    upstream echo {{
{echo}    }}
    server {{
        listen 127.0.0.1:{self.l4_port} ssl;
{certs}
        proxy_pass echo;
        proxy_ssl on;
        proxy_ssl_verify on;
        proxy_ssl_trusted_certificate {mbx}.crt;
        proxy_ssl_name mbx;
    }}
}}
"""

    def start(self):
        if not nginx_exe():
            raise RuntimeError("nginx not installed")
        if not os.path.exists("/usr/lib/nginx/modules/ngx_stream_module.so"):
            raise RuntimeError("nginx stream module missing (libnginx-mod-stream)")
        self.write_config("A")
        self.proc = self.procs.start([nginx_exe(), "-c", self.config_path, "-p", self.dir,
                                      "-e", f"{self.dir}/error.log"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in (self.web_port, self.l4_port):
            try:
                wait_port(port, self.proc, "nginx")
            except RuntimeError as e:
                raise RuntimeError(f"{e}: {tail(os.path.join(self.dir, 'error.log'), 300)}") from None

    def diagnostics(self):
        return tail(os.path.join(self.dir, "error.log"))


# --- clients ---------------------------------------------------------------------------

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = {}
        self.failures = []  # dicts

    def add(self, key, n=1):
        with self.lock:
            self.c[key] = self.c.get(key, 0) + n

    def fail(self, kind, what, **info):
        with self.lock:
            self.failures.append({"time": time.time(), "client": kind, "what": what, **info})
            key = f"{kind}_failed"
            self.c[key] = self.c.get(key, 0) + 1

    def get(self, key):
        return self.c.get(key, 0)


def client_ctx(alpn):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


class Load:
    """The clients, as threads; start() and stop() (which waits for every
    client to finish its request in flight)."""

    def __init__(self, proxy, stats):
        self.proxy, self.stats = proxy, stats
        self.stop_event = threading.Event()
        self.threads = []

    def start(self):
        self.stop_event.clear()
        self.threads = ([threading.Thread(target=self.h1, args=(n,), daemon=True) for n in range(H1_CLIENTS)]
                        + [threading.Thread(target=self.h2, args=(n,), daemon=True) for n in range(H2_CLIENTS)]
                        + [threading.Thread(target=self.l4, args=(n,), daemon=True) for n in range(L4_CLIENTS)])
        for t in self.threads:
            t.start()

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(REQUEST_TIMEOUT * 3)
        stuck = [t for t in self.threads if t.is_alive()]
        if stuck:
            raise RuntimeError(f"{len(stuck)} clients did not finish")

    # HTTP/1.1: sequential keep-alive GETs; a new connection only after a
    # response said Connection: close.
    def h1(self, n):
        st = self.stats
        ctx = client_ctx(["http/1.1"])
        sock, buf, i = None, b"", 0
        while not self.stop_event.is_set():
            if sock is None:
                try:
                    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.proxy.web_port),
                                                                    timeout=REQUEST_TIMEOUT), server_hostname=HOST)
                    buf = b""
                    st.add("h1_connections")
                except (OSError, ssl.SSLError) as e:
                    st.add("h1_sent")
                    st.fail("h1", f"connect failed: {e.__class__.__name__}: {e}")
                    time.sleep(0.05)
                    continue
                reqs_on_conn = 0
            i += 1
            path = f"{PATHS[(i + n) % len(PATHS)]}/soak-h1-{n}-{i}"
            st.add("h1_sent")
            sent_at = time.time()
            try:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        raise EOFError("closed")
                    buf += data
                head, _, rest = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                fields = {ln.split(":", 1)[0].strip().lower(): ln.split(":", 1)[1].strip()
                          for ln in lines[1:] if ":" in ln}
                length = int(fields.get("content-length", "0"))
                while len(rest) < length:
                    data = sock.recv(65536)
                    if not data:
                        raise EOFError("closed in the body")
                    rest += data
                body, buf = rest[:length], rest[length:]
            except (OSError, ssl.SSLError, EOFError, ValueError) as e:
                how = "timeout" if isinstance(e, socket.timeout) else f"{e.__class__.__name__}: {e}"
                st.fail("h1", "connection closed with the request unanswered, no Connection: close announced"
                        if isinstance(e, EOFError) or "reset" in str(e).lower() or "EOF" in str(e) else how,
                        path=path, request_on_connection=reqs_on_conn + 1, sent_at=sent_at, detail=how,
                        local=_local(sock))
                try:
                    sock.close()
                except OSError:
                    pass
                sock = None
                continue
            reqs_on_conn += 1
            status = lines[0]
            if not status.startswith("HTTP/1.1 200") or path.encode() not in body:
                st.fail("h1", f"answer {status!r}", path=path, body=body[:120].decode("latin-1"), sent_at=sent_at,
                        local=_local(sock))
            else:
                st.add("h1_answered")
            if "close" in fields.get("connection", "").lower():
                st.add("h1_closes_announced")
                sock.close()
                sock = None
        if sock is not None:
            sock.close()

    # HTTP/2: sequential requests on one connection; a new one after GOAWAY.
    def h2(self, n):
        st = self.stats
        conn = client = None
        i = 0
        retry_path = None
        while not self.stop_event.is_set() or retry_path:
            if client is None or client.goaway is not None or conn.closed:
                if client is not None:
                    if client.goaway is not None:
                        st.add("h2_goaways")
                    conn.close()
                try:
                    conn = h2frames.TlsConn(self.proxy.web_port, sni=HOST, alpn=["h2"], timeout=REQUEST_TIMEOUT)
                    client = h2frames.H2Client(conn)
                    if not client.handshake(REQUEST_TIMEOUT):
                        raise ConnectionError(f"no SETTINGS ({conn.how})")
                    st.add("h2_connections")
                except (OSError, ssl.SSLError, ConnectionError) as e:
                    if conn is not None:
                        conn.close()
                    client = None
                    if retry_path is None:
                        st.add("h2_sent")
                    st.fail("h2", f"connect failed: {e.__class__.__name__}: {e}", path=retry_path)
                    retry_path = None
                    time.sleep(0.05)
                    continue
            if retry_path:
                path, retry_path = retry_path, None
            else:
                i += 1
                path = f"{PATHS[(i + n) % len(PATHS)]}/soak-h2-{n}-{i}"
                st.add("h2_sent")
            sent_at = time.time()
            try:
                s = client.request(path, timeout=REQUEST_TIMEOUT, authority=HOST)
            except Exception as e:  # noqa: BLE001 - reported
                st.fail("h2", f"client error {e.__class__.__name__}: {e}", path=path, sent_at=sent_at)
                conn.close()
                client = None
                continue
            client.streams.pop(s.id, None)
            client.frames_in.clear()
            if s.status == 200 and s.ended and path.encode() in bytes(s.body):
                st.add("h2_answered")
                continue
            if s.status is None and s.reset is None and client.goaway is not None and client.goaway[0] < s.id:
                st.add("h2_retried_above_goaway")
                retry_path = path
                continue
            if s.status is not None and s.ended:
                what = f"answer {s.status}"
            elif s.reset is not None:
                what = f"RST_STREAM code {s.reset}"
            elif conn.closed:
                what = "connection closed with the stream unanswered"
            else:
                what = "timeout"
            st.fail("h2", what, path=path, stream=s.id, goaway=str(client.goaway), closed=conn.how,
                    body=bytes(s.body[:120]).decode("latin-1"), sent_at=sent_at, local=conn.client)
            if what != "timeout" or conn.closed:
                conn.close()
                client = None
        if conn is not None:
            conn.close()

    # l4: TLS streams of 1-3 s through the proxy to the echo backends; random
    # chunks sent and echoed back one at a time, compared chunk by chunk and
    # by SHA-256 over the whole stream.
    def l4(self, n):
        st = self.stats
        ctx = client_ctx(None)
        rnd = random.Random(n * 7919 + int(time.time()))
        while not self.stop_event.is_set():
            try:
                sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.proxy.l4_port),
                                                                timeout=REQUEST_TIMEOUT), server_hostname=HOST)
            except (OSError, ssl.SSLError) as e:
                st.add("l4_streams")
                st.fail("l4", f"connect failed: {e.__class__.__name__}: {e}")
                time.sleep(0.05)
                continue
            st.add("l4_streams")
            until = time.monotonic() + rnd.uniform(1.0, 3.0)
            sent_hash, got_hash = hashlib.sha256(), hashlib.sha256()
            sent = got = corrupt = 0
            problem = None
            started = time.time()
            try:
                while time.monotonic() < until and not self.stop_event.is_set():
                    chunk = rnd.randbytes(rnd.randint(1, 65536))
                    sock.sendall(chunk)
                    sent += len(chunk)
                    sent_hash.update(chunk)
                    back = bytearray()
                    while len(back) < len(chunk):
                        data = sock.recv(len(chunk) - len(back))
                        if not data:
                            raise EOFError("closed by the proxy")
                        back += data
                    got += len(back)
                    got_hash.update(back)
                    if back != chunk:
                        corrupt += sum(1 for a, b in zip(back, chunk) if a != b)
            except (OSError, ssl.SSLError, EOFError) as e:
                problem = f"{e.__class__.__name__}: {e}"
            finally:
                try:
                    sock.close()
                except OSError:
                    pass
            st.add("l4_bytes_sent", sent)
            st.add("l4_bytes_echoed", got)
            if sent_hash.digest() != got_hash.digest() or problem:
                st.add("l4_bytes_lost", sent - got)
                st.add("l4_bytes_corrupted", corrupt)
                st.fail("l4", f"stream broken: {problem or 'SHA-256 mismatch'}", sent=sent, echoed=got,
                        corrupted=corrupt, started=started)


def _local(sock):
    try:
        return "%s:%d" % sock.getsockname()[:2]
    except (OSError, AttributeError):
        return None


# --- chaos ------------------------------------------------------------------------------

class Chaos:
    """Reloads every second (one thread) and one disturbance at a time
    (another thread)."""

    ACTIONS = ["kill", "health", "drain"]

    def __init__(self, proxy, backends, journal):
        self.proxy, self.backends, self.journal = proxy, backends, journal
        self.stop_event = threading.Event()
        self.counts = {"reloads": 0, "kill": 0, "health": 0, "drain": 0, "seen_down": 0, "seen_drained": 0,
                       "settle_timeouts": 0, "reenabled": 0}
        self.errors = []

    def note(self, text):
        self.journal.append((time.time(), text))

    def start(self):
        self.threads = [threading.Thread(target=self.reloads, daemon=True),
                        threading.Thread(target=self.disturb, daemon=True)]
        for t in self.threads:
            t.start()

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(30)

    def reloads(self):
        variant = "A"
        next_at = time.monotonic() + 1.0
        while not self.stop_event.wait(max(0.0, next_at - time.monotonic())):
            next_at += 1.0
            variant = "B" if variant == "A" else "A"
            try:
                self.proxy.reload(variant)
                self.counts["reloads"] += 1
                self.note(f"reload to config {variant}")
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"reload: {e}")
                return
            if isinstance(self.proxy, Haproxy):
                time.sleep(0.2)
                self.proxy.after_reload()

    def settle(self, timeout=10.0):
        """Waits until the proxy sees every server up (nginx: cannot tell;
        waits past its 1 s fail_timeout)."""
        if not self.proxy.has_health:
            self.stop_event.wait(1.2)
            return True
        deadline = time.monotonic() + timeout
        last_enable = 0.0
        while time.monotonic() < deadline:
            states = self.proxy.states()
            if states and all(v == "up" for v in states.values()):
                return True
            if states and any(v == "drained" for v in states.values()) and time.monotonic() - last_enable > 0.5:
                # A drain that outlived its enable (a reload raced it): enable again.
                for (pool, server), v in states.items():
                    if v == "drained":
                        self.counts["reenabled"] += 1
                        self.note(f"{server} still drained in {pool} after enable; enabling again")
                        self.proxy.drain(server, False)
                last_enable = time.monotonic()
            time.sleep(0.05)
        self.counts["settle_timeouts"] += 1
        self.note(f"servers not all up after {timeout}s: {self.proxy.states()}")
        return False

    def disturb(self):
        step = 0
        while not self.stop_event.is_set():
            b = self.backends[step % len(self.backends)]
            action = self.ACTIONS[(step + step // len(self.backends)) % len(self.ACTIONS)]
            step += 1
            if action == "health" and not self.proxy.has_health:
                continue
            if action == "drain" and not self.proxy.has_admin:
                continue
            self.counts[action] += 1
            try:
                if action == "kill":
                    self.note(f"SIGKILL {b.name} (nginx master and worker)")
                    b.kill()
                    self.stop_event.wait(1.0)
                    b.start()
                    self.note(f"{b.name} restarted")
                elif action == "health":
                    self.note(f"{b.name} health check fails (503)")
                    b.set_down(True)
                    self.watch(b.name, "down", 1.2)
                    b.set_down(False)
                    self.note(f"{b.name} health check passes")
                else:
                    self.note(f"drain {b.name}")
                    self.proxy.drain(b.name, True)
                    self.watch(b.name, "drained", 1.2)
                    self.proxy.drain(b.name, False)
                    self.note(f"enable {b.name}")
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"{action} {b.name}: {e.__class__.__name__}: {e}")
                self.note(f"chaos error: {action} {b.name}: {e}")
            self.settle()
            self.note("all servers up")
            self.stop_event.wait(0.2)

    def watch(self, server, state, seconds):
        """Waits SECONDS; counts whether the proxy showed SERVER in STATE."""
        seen = False
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not seen:
                states = self.proxy.states() or {}
                if any(s == server and v == state for (_, s), v in states.items()):
                    seen = True
            time.sleep(0.1)
        if seen:
            self.counts["seen_" + state] += 1


# --- one proxy's run ---------------------------------------------------------------------

def wait_back(proxy, base, ports, budget):
    """Samples until descriptors and RSS are back within the allowances, or
    BUDGET seconds pass. Returns (sample, seconds taken or None)."""
    started = time.monotonic()
    while True:
        r = resources(proxy.pid, ports)
        ok = fd_check(base, r) is None and r["rss"] <= base["rss"] + RSS_SLACK
        if ok or time.monotonic() - started >= budget:
            return r, (time.monotonic() - started if ok else None)
        time.sleep(0.1)


def run_proxy(cls, kw, procs, work, certs, backends, echo_ports, seconds):
    proxy = cls(procs, work, certs, backends, echo_ports, **kw)
    result = {"proxy": proxy.name, "seconds": seconds, "problems": []}
    ports = {b.port: b.name for b in backends}
    ports.update({port: name for name, port in echo_ports.items()})
    ports.update({proxy.web_port: "web", proxy.l4_port: "l4"})
    if getattr(proxy, "admin_port", None):
        ports[proxy.admin_port] = "admin"
    try:
        proxy.start()
    except Exception as e:  # noqa: BLE001
        proxy.stop()
        result["skipped"] = str(e)
        log(f"{proxy.name}: skipped: {e}")
        return result
    try:
        for b in backends:
            b.set_down(False)
        if proxy.has_health:  # first probes
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                st = proxy.states()
                if st and all(v == "up" for v in st.values()):
                    break
                time.sleep(0.1)
        log(f"{proxy.name}: warm-up {WARMUP_SECONDS:.0f}s ...")
        warm = Stats()
        load = Load(proxy, warm)
        load.start()
        time.sleep(WARMUP_SECONDS)
        load.stop()
        if warm.failures:
            result["problems"].append(f"{len(warm.failures)} failures during the warm-up (no chaos): "
                                      f"{warm.failures[:3]}")
        time.sleep(1.0)
        base = resources(proxy.pid, ports)
        result["baseline"] = base
        log(f"{proxy.name}: baseline {base['fds']} descriptors ({base['backend_connections']} to backends), "
            f"RSS {base['rss'] / 2**20:.1f} MiB; soak {seconds}s ...")

        stats = Stats()
        journal = []
        chaos = Chaos(proxy, backends, journal)
        load = Load(proxy, stats)
        t0 = time.time()
        load.start()
        chaos.start()
        timeline = []
        result["timeline"] = timeline
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(min(1.0, max(0, end - time.monotonic())))
                if proxy.alive():
                    r = resources(proxy.pid, ports)
                    timeline.append((round(time.time() - t0, 1), r["fds"], r["rss"]))
                if not proxy.alive():
                    result["problems"].append(f"{proxy.name} DIED (exit {proxy.proc.returncode})")
                    break
        finally:
            chaos.stop()
            for b in backends:  # everything back up before the load stops
                b.set_down(False)
                if b.proc is None:
                    b.start()
            if proxy.alive():
                chaos.settle()
            load.stop()
        t1 = time.time()
        log(f"{proxy.name}: load stopped; waiting for descriptors and RSS ...")
        after, back_in = wait_back(proxy, base, ports, RETURN_WITHIN) if proxy.alive() else ({}, None)
        later = None
        if back_in is None and proxy.alive():
            # Not back in time: watch longer, to tell a slow return (e.g. old
            # configurations kept for a drain timeout) from a leak.
            log(f"{proxy.name}: not back within {RETURN_WITHIN:.0f}s; watching up to {LATER_WITHIN:.0f}s more ...")
            sample, took = wait_back(proxy, base, ports, LATER_WITHIN)
            later = {"sample": sample, "back_in": None if took is None else RETURN_WITHIN + took}
        result.update(stats=dict(stats.c), failures=stats.failures, chaos=dict(chaos.counts),
                      chaos_errors=chaos.errors, after=after, back_in=back_in, later=later, journal=journal,
                      started=t0, ended=t1)
        if chaos.errors:
            result["problems"].append("chaos errors: " + "; ".join(chaos.errors[:5]))
        if isinstance(proxy, Gatehouse):
            ev = proxy.events()
            result["events"] = ev
            result["reloaded_events"] = sum(1 for e in ev if e.get("event") == "reloaded")
            result["reload_failed_events"] = sum(1 for e in ev if e.get("event") == "reload_failed")
            counts = {}
            for e in ev:
                counts[e.get("event", "?")] = counts.get(e.get("event", "?"), 0) + 1
            result["event_counts"] = dict(sorted(counts.items()))
        else:
            result["diagnostics"] = proxy.diagnostics()
        if not proxy.alive():
            result["problems"].append(f"{proxy.name} not running at the end")
    finally:
        proxy.stop()
    return result


# --- report ------------------------------------------------------------------------------

def verdict(r):
    """Violations of the short mode's assertions."""
    if r.get("skipped"):
        return [f"skipped: {r['skipped']}"]
    s = r.get("stats", {})
    out = list(r["problems"])
    failed = s.get("h1_failed", 0) + s.get("h2_failed", 0)
    if failed:
        out.append(f"{failed} requests failed while a healthy server existed")
    if s.get("l4_failed", 0):
        out.append(f"{s.get('l4_failed')} l4 streams broken ({s.get('l4_bytes_lost', 0)} bytes lost, "
                   f"{s.get('l4_bytes_corrupted', 0)} corrupted)")
    if not s.get("h1_answered") or not s.get("h2_answered") or not s.get("l4_bytes_echoed"):
        out.append("some client kind got nothing through")
    if r.get("after") is not None and r.get("back_in") is None and "baseline" in r:
        b, a = r["baseline"], r["after"]
        why = fd_check(b, a)
        if why:
            out.append(f"descriptors not back within {RETURN_WITHIN:.0f}s: {why}")
        if a.get("rss", 0) > b["rss"] + RSS_SLACK:
            out.append(f"RSS not back within {RETURN_WITHIN:.0f}s: {a.get('rss', 0) / 2**20:.1f} MiB > baseline "
                       f"{b['rss'] / 2**20:.1f} MiB + 8 MiB")
    return out


def table(results):
    cols = [r["proxy"] for r in results]

    def row(label, fn):
        cells = []
        for r in results:
            if r.get("skipped"):
                cells.append("skipped")
                continue
            try:
                cells.append(str(fn(r)))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("—")
        print(f"| {label} | " + " | ".join(cells) + " |")

    def s(r, k):
        return r["stats"].get(k, 0)

    def mib(x):
        return f"{x / 2**20:.1f}"

    print("| | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    row("soak seconds", lambda r: f"{r['ended'] - r['started']:.0f}")
    row("reloads sent (every 1 s, configs A/B)", lambda r: str(r["chaos"]["reloads"])
        + (f" ({r['reloaded_events']} `reloaded` events, {r['reload_failed_events']} failed)"
           if "reloaded_events" in r else ""))
    row("backend kills (SIGKILL + restart)", lambda r: r["chaos"]["kill"])
    row("health flaps (seen down by the proxy)",
        lambda r: f"{r['chaos']['health']} ({r['chaos']['seen_down']})" if r["proxy"] != "nginx"
        else "n/a (no active health checks in nginx OSS)")
    row("drain/enable (seen drained)",
        lambda r: f"{r['chaos']['drain']} ({r['chaos']['seen_drained']})" if r["proxy"] != "nginx"
        else "n/a (no admin API in nginx OSS)")
    row("HTTP/1.1 requests sent / answered 200",
        lambda r: f"{s(r, 'h1_sent')} / {s(r, 'h1_answered')}")
    row("HTTP/1.1 failed", lambda r: f"**{s(r, 'h1_failed')}**")
    row("HTTP/1.1 connections / announced closes",
        lambda r: f"{s(r, 'h1_connections')} / {s(r, 'h1_closes_announced')}")
    row("HTTP/2 requests sent / answered 200", lambda r: f"{s(r, 'h2_sent')} / {s(r, 'h2_answered')}")
    row("HTTP/2 failed", lambda r: f"**{s(r, 'h2_failed')}**")
    row("HTTP/2 connections / GOAWAYs / retried above last-stream-id",
        lambda r: f"{s(r, 'h2_connections')} / {s(r, 'h2_goaways')} / {s(r, 'h2_retried_above_goaway')}")
    row("l4 streams / MiB echoed", lambda r: f"{s(r, 'l4_streams')} / {s(r, 'l4_bytes_echoed') / 2**20:.0f}")
    row("l4 streams broken / bytes lost / corrupted",
        lambda r: f"**{s(r, 'l4_failed')} / {s(r, 'l4_bytes_lost')} / {s(r, 'l4_bytes_corrupted')}**")
    row("descriptors: baseline → after (to backends)",
        lambda r: f"{r['baseline']['fds']} ({r['baseline']['backend_connections']}) → {r['after']['fds']} "
                  f"({r['after']['backend_connections']})" + (f", {r['after']['close_wait']} CLOSE_WAIT"
                                                              if r['after'].get('close_wait') else ""))
    row("RSS MiB: baseline → after", lambda r: f"{mib(r['baseline']['rss'])} → {mib(r['after']['rss'])}")
    row("during the soak: max descriptors / max RSS MiB",
        lambda r: f"{max(x[1] for x in r['timeline'])} / {mib(max(x[2] for x in r['timeline']))}")
    row(f"back to baseline within {RETURN_WITHIN:.0f}s (descriptors, RSS ≤ +8 MiB)",
        lambda r: f"yes, {r['back_in']:.1f}s" if r.get("back_in") is not None else "**NO**")
    row("if not: later",
        lambda r: "" if r.get("back_in") is not None else
        (f"back after {r['later']['back_in']:.0f}s" if r["later"]["back_in"] is not None else
         f"still {r['later']['sample']['fds']} fds, {mib(r['later']['sample']['rss'])} MiB after "
         f"{RETURN_WITHIN + LATER_WITHIN:.0f}s"))
    row("verdict", lambda r: "PASS" if not verdict(r) else "**FAIL**")


def failure_details(r, limit=15):
    """Failed requests with the chaos journal and Gatehouse's events around them."""
    if not r.get("failures"):
        return
    print()
    print(f"### {r['proxy']}: failed requests ({len(r['failures'])}; first {min(limit, len(r['failures']))})")
    for f in r["failures"][:limit]:
        t = f.get("sent_at") or f.get("started") or f["time"]
        stamp = time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"
        extra = {k: v for k, v in f.items() if k not in ("time", "client", "what", "sent_at", "started")}
        print(f"- {stamp} {f['client']}: {f['what']} {json.dumps(extra)}")
        near = [f"    chaos {time.strftime('%H:%M:%S', time.gmtime(jt))}.{int(jt * 1000) % 1000:03d}Z {text}"
                for jt, text in r.get("journal", []) if t - 2.0 <= jt <= f["time"] + 0.5]
        for line in near[-6:]:
            print(line)
        for e in r.get("events", []):
            et = e.get("time", "")
            try:
                ets = time.mktime(time.strptime(et[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone + float("0" + et[19:23])
            except (ValueError, TypeError):
                continue
            if t - 1.0 <= ets <= f["time"] + 1.0 and e.get("event") not in ("reloaded", "listening", "draining"):
                print(f"    event {json.dumps(e)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="16 s soak, assert, exit non-zero on any violation")
    ap.add_argument("--seconds", type=int, help="soak length per proxy (default 60; 16 with --short)")
    ap.add_argument("--proxy", choices=["gatehouse", "haproxy", "nginx", "all"],
                    help="default: all, or gatehouse with --short")
    ap.add_argument("--gatehouse", default=os.environ.get("GATEHOUSE") or os.path.join(ROOT, "build", "proxy",
                                                                                       "gatehouse"))
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--no-access-log", action="store_true",
                    help="run Gatehouse without its access log file (default: access_log = a file)")
    ap.add_argument("--echo-server", nargs=3, metavar=("PORT", "CERT", "KEY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo_server:
        return run_echo_server(int(args.echo_server[0]), args.echo_server[1], args.echo_server[2])
    seconds = args.seconds or (16 if args.short else 60)
    which = args.proxy or ("gatehouse" if args.short else "all")
    binary = os.path.abspath(args.gatehouse)
    if not os.access(binary, os.X_OK):
        sys.exit(f"soak: no gatehouse binary at {binary} (build first or pass --gatehouse)")
    if not nginx_exe():
        sys.exit("soak: nginx is needed for the backends")

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    procs = Processes()
    work = tempfile.mkdtemp(prefix="gatehouse-soak-")
    os.chmod(work, 0o755)  # nginx workers run unprivileged
    results = []
    backends = []
    try:
        certs = {}
        for key, cn in (("front", HOST), ("mbx", "mbx")):
            prefix = os.path.join(work, key)
            subprocess.run([binary, "cert", "new", "--cn", cn, "--san", cn, "--key", "ec256", "--out", prefix],
                           check=True, capture_output=True, timeout=60)
            os.chmod(prefix + ".key", 0o644)  # nginx and HAProxy read it
            certs[key] = prefix
        with open(certs["mbx"] + ".crt") as f:
            pem = f.read()
        der = ssl.PEM_cert_to_DER_cert(pem[:pem.index("-----END CERTIFICATE-----") + 25])
        certs["mbx_thumbprint"] = hashlib.sha1(der).hexdigest().upper()

        echo_ports = {}
        for name in ECHO_BACKENDS:
            port = free_port()
            p = procs.start([sys.executable, os.path.abspath(__file__), "--echo-server", str(port),
                             certs["mbx"] + ".crt", certs["mbx"] + ".key"], stdin=subprocess.DEVNULL)
            wait_port(port, p, f"echo backend {name}")
            echo_ports[name] = port
        backends = [HttpBackend(procs, work, n, certs["mbx"]) for n in HTTP_BACKENDS]
        for b in backends:
            b.start()

        plan = {"gatehouse": [(Gatehouse, {"binary": binary, "access_log": not args.no_access_log})], "haproxy": [(Haproxy, {})],
                "nginx": [(Nginx, {})]}
        order = plan["gatehouse"] + plan["haproxy"] + plan["nginx"] if which == "all" else plan[which]
        for cls, kw in order:
            results.append(run_proxy(cls, kw, procs, work, certs, backends, echo_ports, seconds))
            log(f"{cls.name}: done; " + ("; ".join(verdict(results[-1])) or "no violation"))
    finally:
        for b in backends:
            b.stop()
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"## Soak: {seconds}s per proxy, {time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} CPUs")
    print()
    print(f"Load: {H1_CLIENTS} HTTP/1.1 + {H2_CLIENTS} HTTP/2 keep-alive clients (one request in flight each) "
          f"and {L4_CLIENTS} l4 clients (TLS streams of 1-3 s, random data, SHA-256 end to end); chaos: reload "
          "every second alternating configs A/B, one backend at a time killed / health-flapped / drained. "
          "Every proxy has one worker (thread).")
    print()
    table(results)
    print()
    print("Failed = non-200 or wrong body, HTTP/1.1 connection closed without `Connection: close` announced, "
          "HTTP/2 stream neither answered nor above a GOAWAY's last-stream-id, timeout (10 s), or no connection. "
          "Descriptors and RSS are the proxy's whole process tree (HAProxy and nginx: master and workers, old "
          "ones still draining included). Descriptors are back when all but the established connections to the "
          f"HTTP backends are at the baseline (+{PROBE_SLACK} for health probes in flight) and the kept-alive backend "
          f"connections are at most {BACKEND_BOUND}: one per L7 client ({H1_CLIENTS + H2_CLIENTS}) per (pool, server) "
          "pair, the most a proxy keeps if it keeps one idle connection per request that was in flight at once. "
          "HAProxy: drains are re-applied after each reload (no server-state-file). nginx: no active health checks "
          "and no admin API in nginx OSS, so health flaps and drains are skipped; it fails over passively "
          "(max_fails=1 fail_timeout=1s, proxy_next_upstream error timeout).")
    for r in results:
        if r.get("after") and r.get("baseline") and r["after"].get("fds", 0) != r["baseline"]["fds"]:
            b, a = r["baseline"]["kinds"], r["after"].get("kinds", {})
            diff = {k: f"{b.get(k, 0)} → {a.get(k, 0)}" for k in sorted(set(b) | set(a)) if b.get(k, 0) != a.get(k, 0)}
            print()
            print(f"{r['proxy']}: descriptors that changed, baseline → after: " + json.dumps(diff, ensure_ascii=False))
        if r.get("event_counts"):
            print()
            print(f"{r['proxy']}: event lines on stderr by name: " + json.dumps(r["event_counts"]))
        if r.get("skipped"):
            print()
            print(f"### {r['proxy']}: skipped: {r['skipped']}")
        failure_details(r)
        if r.get("problems"):
            print()
            print(f"### {r['proxy']}: problems")
            for p in r["problems"]:
                print(f"- {p}")
    print()
    print(f"Whole run: {time.monotonic() - started:.0f} s.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seconds": seconds, "probe_slack": PROBE_SLACK, "backend_bound": BACKEND_BOUND,
                       "rss_slack": RSS_SLACK,
                       "results": [{k: v for k, v in r.items() if k not in ("events", "diagnostics")}
                                   for r in results]}, f, indent=2, default=str)
    bad = {r["proxy"]: verdict(r) for r in results}
    if args.short:
        violations = [f"{name}: {v}" for name, vs in bad.items() for v in vs]
        if violations:
            print()
            print("SOAK FAILED:\n- " + "\n- ".join(violations))
            log("*** soak FAILED: " + "; ".join(violations) + " ***")
            return 1
        print("SOAK PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
