"""Shared pieces of the integration tests: the real gatehouse binary on
loopback, certificates made by its own `cert new`, TLS backends, and clients.

Everything listens on 127.0.0.1 with port 0 (the kernel picks), and every
process a test starts is stopped by the test itself."""

import hashlib
import http.server
import json
import os
import queue
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
GATEHOUSE = os.environ.get("GATEHOUSE") or os.path.join(HERE, "..", "..", "build", "proxy", "gatehouse")
SANITIZED = bool(os.environ.get("GATEHOUSE_SANITIZED"))
# Generous deadlines: sanitizer builds are several times slower.
SLOW = 4 if SANITIZED else 1


def run(args, timeout=60, check=True, **kw):
    """Runs gatehouse with `args`; returns CompletedProcess with text output."""
    p = subprocess.run([GATEHOUSE] + list(args), capture_output=True, text=True, timeout=timeout * SLOW, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"gatehouse {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


class TempDir:
    """A world-readable temporary directory (nginx workers run unprivileged)."""

    def __init__(self):
        self.path = tempfile.mkdtemp(prefix="gatehouse-test-")
        os.chmod(self.path, 0o755)

    def file(self, name):
        return os.path.join(self.path, name)

    def write(self, name, text):
        with open(self.file(name), "w") as f:
            f.write(text)
        return self.file(name)

    def cleanup(self):
        shutil.rmtree(self.path, ignore_errors=True)


class Cert:
    """A certificate and key written by `gatehouse cert new`."""

    def __init__(self, directory, stem, cn, sans=(), key="ec256", days=None, not_before=None):
        args = ["cert", "new", "--cn", cn, "--key", key, "--out", os.path.join(directory, stem)]
        for s in sans:
            args += ["--san", s]
        if days is not None:
            args += ["--days", str(days)]
        if not_before is not None:
            args += ["--not-before", not_before]
        run(args)
        self.stem = stem
        self.cert = os.path.join(directory, stem + ".crt")
        self.key = os.path.join(directory, stem + ".key")
        with open(self.cert) as f:
            pem = f.read()
        first = pem[: pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
        self.der = ssl.PEM_cert_to_DER_cert(first)
        self.thumbprint = hashlib.sha1(self.der).hexdigest().upper()
        self.sha256 = hashlib.sha256(self.der).hexdigest()

    def pin(self):
        """The sha256/BASE64 SPKI pin, as `gatehouse cert inspect --json` reports it."""
        out = json.loads(run(["cert", "inspect", "--json", self.cert]).stdout)
        return out[0]["certificates"][0]["Sha256Pin"]


class Gatehouse:
    """`gatehouse run -c FILE` as a child process. Events (stderr) and access
    log lines (stdout) are collected as parsed JSON objects."""

    def __init__(self, config_path, expect_ready=True, env=None, wrapper=()):
        self.config_path = config_path
        self.events = []
        self.access = []
        self.raw_stderr = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [*wrapper, GATEHOUSE, "run", "-c", config_path],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.events, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.access, False), daemon=True),
        ]
        for t in self._threads:
            t.start()
        if expect_ready:
            self.wait_event("ready", timeout=30)

    def _pump(self, stream, sink, is_stderr):
        for line in stream:
            line = line.rstrip("\n")
            if is_stderr:
                self.raw_stderr.append(line)
            try:
                obj = json.loads(line)
            except ValueError:
                obj = {"event": "text", "text": line}
            with self._cond:
                sink.append(obj)
                self._cond.notify_all()

    def wait_for(self, predicate, sink, timeout=10, what="log line"):
        deadline = time.monotonic() + timeout * SLOW
        with self._cond:
            while True:
                for obj in sink:
                    if predicate(obj):
                        return obj
                if self.proc.poll() is not None and not any(t.is_alive() for t in self._threads):
                    raise AssertionError(f"gatehouse exited ({self.proc.returncode}) before {what}:\n" + "\n".join(self.raw_stderr))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {timeout * SLOW}s; stderr:\n" + "\n".join(self.raw_stderr))
                self._cond.wait(min(left, 0.2))

    def wait_event(self, name, timeout=10, **fields):
        def match(obj):
            return obj.get("event") == name and all(obj.get(k) == v for k, v in fields.items())

        return self.wait_for(match, self.events, timeout, f"event {name} {fields}")

    def wait_access(self, timeout=10, **fields):
        return self.wait_for(lambda o: all(o.get(k) == v for k, v in fields.items()), self.access, timeout,
                             f"access log line {fields}")

    def port(self, listener):
        ev = self.wait_event("listening", listener=listener)
        return int(ev["address"].rsplit(":", 1)[1])

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._threads:
            t.join(5)
        if not any(t.is_alive() for t in self._threads):
            for f in (self.proc.stdout, self.proc.stderr):
                f.close()
        return self.proc.returncode


def free_port():
    """A port nobody listens on (for 'connection refused' backends)."""
    return free_ports(1)[0]


def free_ports(n):
    """`n` different ports free on 127.0.0.1, for a server that binds them
    itself. All are held until the last is chosen: a port given back at once
    may be the next one the kernel picks, the more so while other tests hold
    most of the range."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = f"{self.server.name} {self.command} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Backend", self.server.name)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, *args):
        pass


class _ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class HttpsBackend:
    """An HTTPS server on 127.0.0.1:0 presenting `cert` (self-signed, like an
    Exchange Mailbox server); answers 200 with its name in the body and in
    X-Backend. Counts TLS handshakes, full and resumed."""

    def __init__(self, name, cert, tls=True):
        self.name = name
        self.httpd = _ThreadingServer(("127.0.0.1", 0), _Handler)
        self.httpd.name = name
        self.handshakes = []  # session_reused per connection
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert.cert, cert.key)
            backend = self

            class Wrapped(_ThreadingServer):
                pass

            orig_get_request = self.httpd.get_request

            def get_request():
                sock, addr = orig_get_request()
                tls_sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                tls_sock.settimeout(10)
                try:
                    tls_sock.do_handshake()
                    backend.handshakes.append(tls_sock.session_reused)
                except (ssl.SSLError, OSError):
                    tls_sock.close()
                    raise OSError("handshake failed")
                return tls_sock, addr

            self.httpd.get_request = get_request
        self.port = self.httpd.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class LoopbackServer:
    """A threaded TCP server on 127.0.0.1 for the test backends: one thread
    accepts, one thread per connection runs the subclass's `_serve(raw)` with
    the accepted socket (TLS: `self.tls(raw)`, with `self.ctx` made from `cert`).
    `connections` counts accepts. Subclasses set their own fields before
    calling this __init__, since connections may arrive as soon as it returns.

    stop() ends the accept thread BEFORE closing the listening socket.
    Closing first frees the descriptor number while that thread is blocked in
    accept() on it, or about to call it. A blocked accept() is not woken by the
    close, and when the process is stopped and continued (a VM or cgroup
    freezer, a debugger) the kernel restarts it with the same number: it then
    accepts, and serves with its own certificate, the connections meant for
    the next listening socket that got the number. Every test backend that
    accepts in a thread is a LoopbackServer for that reason. With
    `close_connections` it also shuts down every open connection (a stopped
    mailbox server); with `join_connections` it then waits for their threads."""

    def __init__(self, cert=None, backlog=256, close_connections=True, join_connections=False):
        self.ctx = None
        if cert is not None:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(cert.cert, cert.key)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.connections = 0
        self.lock = threading.Lock()
        self._close_connections = close_connections
        self._join_connections = join_connections
        self._open = {}  # accepted socket -> the socket that now owns its descriptor
        self._threads = []
        self._stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self._stopped.is_set():
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            if self._stopped.is_set():
                raw.close()
                return
            with self.lock:
                self.connections += 1
                self._open[raw] = raw
            t = threading.Thread(target=self._run, args=(raw,), daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, raw):
        try:
            self._serve(raw)
        finally:
            with self.lock:
                self._open.pop(raw, None)
            raw.close()

    def _serve(self, raw):
        raise NotImplementedError

    def tls(self, raw):
        """The server side of TLS on an accepted socket. Wrapping detaches
        `raw`, so stop() is told to shut the TLS socket down instead; the
        handshake runs after that, so stop() also ends one that stalls."""
        conn = self.ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        with self.lock:
            if raw in self._open:
                self._open[raw] = conn
        try:
            conn.do_handshake()
        except BaseException:
            conn.close()
            raise
        return conn

    def stop(self):
        if self._stopped.is_set():
            return
        self._stopped.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.thread is not threading.current_thread():
            self.thread.join(5)
        self.sock.close()
        if not self._close_connections:
            return
        with self.lock:
            conns = list(self._open.values())
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if not self._join_connections:
            return
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(5)


class EchoBackend(LoopbackServer):
    """A TLS (or plain) echo server: every byte read is written back; EOF from
    the client half-closes back after the echo. Stopping it leaves open
    connections be."""

    def __init__(self, cert=None, greeting=b"", handshake_delay=0.0):
        self.greeting = greeting
        self.handshake_delay = handshake_delay  # seconds between accept and the TLS handshake
        super().__init__(cert, backlog=1024, close_connections=False)

    def _serve(self, conn):
        try:
            conn.settimeout(30)
            time.sleep(self.handshake_delay)
            if self.ctx:
                conn = self.tls(conn)
            if self.greeting:
                conn.sendall(self.greeting)
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
            if self.ctx:
                try:
                    conn = conn.unwrap()
                except (ssl.SSLError, OSError):
                    pass
            try:
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        except (ssl.SSLError, OSError):
            pass
        finally:
            conn.close()


def client_context(cafile=None):
    """A TLS client context for tests; verification off unless cafile."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def served_certificate(port, sni=None, extra=()):
    """SHA-256 of the certificate served to `openssl s_client`, or None when the
    handshake failed; the second value is s_client's combined output."""
    args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-showcerts"]
    args += ["-servername", sni] if sni is not None else ["-noservername"]
    args += list(extra)
    p = subprocess.run(args, input="", capture_output=True, text=True, timeout=20 * SLOW)
    out = p.stdout + p.stderr
    begin = p.stdout.find("-----BEGIN CERTIFICATE-----")
    if begin < 0:
        return None, out
    end = p.stdout.index("-----END CERTIFICATE-----", begin) + len("-----END CERTIFICATE-----")
    der = ssl.PEM_cert_to_DER_cert(p.stdout[begin:end])
    return hashlib.sha256(der).hexdigest(), out


def config(*sections):
    """Joins TOML sections."""
    return "\n".join(sections) + "\n"


def server_section(workers=1, extra="", drain_timeout="5s"):
    """The [global] settings table (older files call it [server])."""
    return f'[global]\nworkers = {workers}\nadmin = ""\naccess_log = "-"\ndrain_timeout = "{drain_timeout}"\n{extra}\n'


def certificate_section(name, cert):
    return f'[[certificate]]\nname = "{name}"\ncert = "{cert.cert}"\nkey = "{cert.key}"\n'


class GatehouseTestCase(unittest.TestCase):
    """Gives each test a temp dir and stops what it started."""

    def setUp(self):
        if not os.path.exists(GATEHOUSE):
            self.fail(f"gatehouse binary not found at {GATEHOUSE}: build first (bash .ci/test)")
        self.dir = TempDir()
        self._stops = []
        self._started = []

    def _failed(self):
        result = getattr(getattr(self, "_outcome", None), "result", None)
        if result is None:
            return False
        return any(test is self for test, _ in result.failures + result.errors)

    def tearDown(self):
        if self._failed():
            # What each Gatehouse said, so a failure seen only in CI can be read.
            for g in self._started:
                tail = g.raw_stderr[-60:]
                print(f"\n--- {self.id()}: gatehouse {g.config_path} stderr (last {len(tail)} lines)", file=sys.stderr)
                print("\n".join(tail), file=sys.stderr)
        for fn in reversed(self._stops):
            try:
                fn()
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass
        self.dir.cleanup()

    def start(self, text, name="gatehouse.toml", **kw):
        path = self.dir.write(name, text)
        g = Gatehouse(path, **kw)
        self._stops.append(g.stop)
        self._started.append(g)
        return g

    def backend(self, obj):
        self._stops.append(obj.stop)
        return obj
