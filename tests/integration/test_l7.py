"""L7 (HTTP/1.1 and HTTP/2 by ALPN) listeners end to end: the real gatehouse
binary terminates TLS from real clients (curl, nghttp, h2load, Python's ssl),
routes by Host and path prefix to pools of loopback HTTPS backends that present
self-signed certificates (nginx like IIS on a Mailbox server, and small Python
backends where exact HTTP framing matters), and streams bodies both ways.

Covers routing (exact host > wildcard > any host, longest path prefix, case),
421 for a Host the SNI's certificate does not cover, 404, forwarded and
hop-by-hop headers, keep-alive backend reuse, 1 GiB uploads (RPC_IN_DATA) and
downloads in bounded memory, error mapping (502/503, 504, a backend dying
mid-response), HEAD/204/304, chunked bodies and trailers, streaming and
100-continue. Malformed requests and HTTP/2 abuse are test_l7_safety.py's."""

import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import unittest
import urllib.parse
import uuid

import harness as h
import nginx_backend

MAIL = "mail.contoso.test"
AUTODISCOVER = "autodiscover.contoso.test"
FABRIKAM = "other.fabrikam.test"
MIB = 1 << 20
BULK = (256 if h.SANITIZED else 1024) * MIB
RSS_LIMIT = 64 * MIB


# --- config pieces -------------------------------------------------------------

def q(items):
    return "[" + ", ".join('"' + x + '"' for x in items) + "]"


def listener(name="web", extra=""):
    return f'[[listener]]\nname = "{name}"\nbind = "127.0.0.1:0"\nmode = "l7"\n{extra}\n'


def route(pool_name, hosts=None, paths=None, listener_name="web", idle_timeout=None):
    text = f'[[route]]\nlistener = "{listener_name}"\npool = "{pool_name}"\n'
    if hosts is not None:
        text += f"hosts = {q(hosts)}\n"
    if paths is not None:
        text += f"paths = {q(paths)}\n"
    if idle_timeout is not None:
        text += f'idle_timeout = "{idle_timeout}"\n'
    return text


def server(name, address, pin=None):
    text = f'[[server]]\nname = "{name}"\naddress = "{address}"\n'
    if pin is not None:
        text += f'pin = "{pin}"\n'
    return text


def pool(name, servers, tls=None):
    text = f'[[pool]]\nname = "{name}"\nservers = {q(servers)}\n'
    if tls is not None:
        text += f'tls = "{tls}"\n'
    return text


def count_lines(sink, predicate):
    return sum(1 for o in list(sink) if predicate(o))


def wait_lines(g, sink, predicate, n, timeout=10):
    """Waits until `sink` (g.access or g.events) holds `n` lines matching
    `predicate`; returns them."""
    g.wait_for(lambda _: count_lines(sink, predicate) >= n, [None], timeout, what=f"{n} matching log lines")
    return [o for o in list(sink) if predicate(o)]


# --- deterministic bulk bytes ------------------------------------------------------

_BLOCK = b"".join(hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(MIB // 32))
_DOUBLE = memoryview(_BLOCK + _BLOCK)


def bulk_chunks(size):
    """`size` pseudo-random bytes in 1 MiB pieces: SHA-256 counter blocks,
    rotated differently per piece so that a lost, repeated or reordered piece
    changes the checksum."""
    i = 0
    while size > 0:
        k = (i * 4099) % MIB
        n = min(MIB, size)
        yield _DOUBLE[k:k + n]
        size -= n
        i += 1


# --- HTTP/1.1 on a socket, both ends ---------------------------------------------

class Headers:
    def __init__(self, pairs):
        self.pairs = pairs

    def get(self, name, default=None):
        for k, v in self.pairs:
            if k.lower() == name.lower():
                return v
        return default

    def all(self, name):
        return [v for k, v in self.pairs if k.lower() == name.lower()]

    def __contains__(self, name):
        return self.get(name) is not None


class HttpConn:
    """Buffered HTTP/1.1 reads on a (TLS) socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _recv(self):
        data = self.sock.recv(1 << 18)
        if not data:
            raise EOFError("connection closed")
        return data

    def read_line(self):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return line
            if len(self.buf) > 1 << 16:
                raise ValueError("line too long")
            self.buf += self._recv()

    def read_some(self, n):
        if self.buf:
            data, self.buf = self.buf[:n], self.buf[n:]
            return data
        data = self._recv()
        if len(data) > n:
            data, self.buf = data[:n], data[n:]
        return data

    def read_head(self):
        start = self.read_line()
        while start in (b"\r\n", b"\n"):  # tolerated before a request line
            start = self.read_line()
        pairs = []
        while True:
            line = self.read_line()
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            pairs.append((name.strip(), value.strip()))
        return start.decode("latin-1").rstrip("\r\n"), Headers(pairs)

    def read_body(self, headers, sink):
        """Reads a body framed by Transfer-Encoding: chunked or Content-Length
        (none: empty); feeds it to `sink`; returns the trailer pairs."""
        te = headers.get("transfer-encoding")
        if te and "chunked" in te.lower():
            while True:
                size = int(self.read_line().split(b";")[0].strip(), 16)
                if size == 0:
                    break
                while size:
                    data = self.read_some(min(size, MIB))
                    sink(data)
                    size -= len(data)
                if self.read_line() not in (b"\r\n", b"\n"):
                    raise ValueError("chunk not followed by CRLF")
            trailers = []
            while True:
                line = self.read_line()
                if line in (b"\r\n", b"\n"):
                    return trailers
                name, _, value = line.decode("latin-1").partition(":")
                trailers.append((name.strip(), value.strip()))
        n = int(headers.get("content-length") or 0)
        while n:
            data = self.read_some(min(n, MIB))
            sink(data)
            n -= len(data)
        return []

    def read_to_close(self, timeout):
        """Everything until the peer ends the connection; (data, closed)."""
        data = self.buf
        self.buf = b""
        deadline = time.monotonic() + timeout * h.SLOW
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return data, False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 18)
            except (socket.timeout, TimeoutError):
                return data, False
            except (ssl.SSLError, OSError):
                return data, True
            if not chunk:
                return data, True
            data += chunk


class Response:
    def __init__(self, status, headers, body, trailers, interim):
        self.status, self.headers, self.body, self.trailers, self.interim = status, headers, body, trailers, interim

    def json(self):
        return json.loads(self.body)


def read_response(conn, method="GET"):
    """One response (1xx interim responses collected) from an HttpConn."""
    interim = []
    while True:
        start, headers = conn.read_head()
        status = int(start.split(" ", 2)[1])
        if 100 <= status < 200:
            interim.append(status)
            continue
        break
    body = bytearray()
    trailers = []
    if method == "HEAD" or status in (204, 304):
        pass
    elif "content-length" in headers or "transfer-encoding" in headers:
        trailers = conn.read_body(headers, body.extend)
    else:
        data, _ = conn.read_to_close(10)
        body.extend(data)
    return Response(status, headers, bytes(body), trailers, interim)


# --- Python HTTPS backend where nginx cannot do it ------------------------------------

class PyBackend(h.LoopbackServer):
    """An HTTP/1.1 keep-alive backend on 127.0.0.1:0 (TLS with `cert`, or
    plain). What it does depends on the last path segment:

    /download?size=N  Content-Length N of bulk_chunks(); the SHA-256 of what
                      it sent goes to .sent[target]
    /status/204, /status/304  that status, no body
    /chunked          a chunked body of 40 odd-sized chunks, trailer X-Body-Sha256
    /stream           chunk "first", waits for .proceed (10 s), chunk "second"
    /hang             reads the request and never answers
    /die              Content-Length 1000000, 1000 bytes, then closes
    /case             OWA-like header names in mixed case (CASE_FIELDS);
                      ?unbound leaves out Persistent-Auth (which binds the
                      connection, so HTTP/2 clients would be sent to HTTP/1.1)
    anything else     reads the body (answers 100 Continue first when asked),
                      answers JSON: name, method, target, headers, body length
                      and SHA-256, trailers
    """

    # As Exchange sends them: older Outlook builds read these names only in
    # this case (haproxy#561).
    CASE_FIELDS = (("X-OWA-Version", "15.2.1118.7"), ("Persistent-Auth", "true"), ("X-FEServer", "MBX01"),
                   ("X-MiXeD-CaSe", "1"), ("Set-Cookie", "X-BackEndCookie=S-1-5-21=abc; path=/owa; secure"))

    def __init__(self, name, cert=None):
        self.name = name
        self.requests = []  # (method, target, Headers) as they arrive
        self.sent = {}
        self.chunked_body = b"".join(bytes([65 + i % 26]) * (i * 37 % 1000 + 1) for i in range(40))
        self.proceed = threading.Event()
        self.stream_timeouts = 0  # /stream answers that gave up waiting for .proceed
        self.released = threading.Event()
        super().__init__(cert)

    def _serve(self, raw):
        conn = raw
        try:
            raw.settimeout(60 * h.SLOW)
            if self.ctx is not None:
                conn = self.tls(raw)
            hc = HttpConn(conn)
            while True:
                try:
                    start, headers = hc.read_head()
                except (EOFError, OSError, ssl.SSLError, ValueError):
                    return
                method, target, _version = start.split(" ", 2)
                self.requests.append((method, target, headers))
                if not self._handle(hc, conn, method, target, headers):
                    return
                if "close" in (headers.get("connection") or "").lower():
                    return
        except (EOFError, OSError, ssl.SSLError, ValueError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass
            raw.close()

    def _head(self, conn, status, reason, fields):
        lines = [f"HTTP/1.1 {status} {reason}", f"X-Backend: {self.name}"] + [f"{k}: {v}" for k, v in fields]
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _handle(self, hc, conn, method, target, headers):
        url = urllib.parse.urlsplit(target)
        leaf = url.path.rstrip("/").rsplit("/", 1)[-1]
        if leaf in ("204", "304") and url.path.rstrip("/").endswith("/status/" + leaf):
            hc.read_body(headers, lambda d: None)
            if leaf == "204":
                self._head(conn, 204, "No Content", [])
            else:
                self._head(conn, 304, "Not Modified", [("ETag", '"v1"'), ("Cache-Control", "private")])
            return True
        if leaf == "download":
            size = int(urllib.parse.parse_qs(url.query)["size"][0])
            hc.read_body(headers, lambda d: None)
            self._head(conn, 200, "OK", [("Content-Type", "application/octet-stream"), ("Content-Length", size)])
            digest = hashlib.sha256()
            for piece in bulk_chunks(size):
                digest.update(piece)
                conn.sendall(piece)
            self.sent[target] = digest.hexdigest()
            return True
        if leaf == "chunked":
            hc.read_body(headers, lambda d: None)
            self._head(conn, 200, "OK", [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked"),
                                         ("Trailer", "X-Body-Sha256")])
            body, pos, i = self.chunked_body, 0, 0
            while pos < len(body):
                n = i * 37 % 1000 + 1
                conn.sendall(b"%x\r\n%s\r\n" % (n, body[pos:pos + n]))
                pos += n
                i += 1
            conn.sendall(b"0\r\nX-Body-Sha256: %s\r\n\r\n" % hashlib.sha256(body).hexdigest().encode())
            return True
        if leaf == "stream":
            hc.read_body(headers, lambda d: None)
            self._head(conn, 200, "OK", [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked")])
            conn.sendall(b"6\r\nfirst\n\r\n")
            if not self.proceed.wait(10 * h.SLOW):
                self.stream_timeouts += 1
            conn.sendall(b"7\r\nsecond\n\r\n0\r\n\r\n")
            return True
        if leaf == "hang":
            hc.read_body(headers, lambda d: None)
            self.released.wait(60 * h.SLOW)
            return False
        if leaf == "case":
            hc.read_body(headers, lambda d: None)
            body = b"case\n"
            fields = [f for f in self.CASE_FIELDS if url.query != "unbound" or f[0] != "Persistent-Auth"]
            self._head(conn, 200, "OK", fields + [("Content-Length", len(body))])
            if method != "HEAD":
                conn.sendall(body)
            return True
        if leaf == "die":
            hc.read_body(headers, lambda d: None)
            self._head(conn, 200, "OK", [("Content-Type", "application/octet-stream"), ("Content-Length", 1000000)])
            conn.sendall(b"x" * 1000)
            time.sleep(0.2)
            return False
        if "100-continue" in (headers.get("expect") or "").lower():
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        digest = hashlib.sha256()
        length = [0]

        def sink(data):
            digest.update(data)
            length[0] += len(data)

        trailers = hc.read_body(headers, sink)
        answer = json.dumps({"backend": self.name, "method": method, "target": target,
                             "headers": headers.pairs, "length": length[0], "sha256": digest.hexdigest(),
                             "trailers": trailers}).encode()
        self._head(conn, 200, "OK", [("Content-Type", "application/json"), ("Content-Length", len(answer))])
        if method != "HEAD":
            conn.sendall(answer)
        return True

    def stop(self):
        self.released.set()
        self.proceed.set()
        super().stop()


class RssSampler:
    """VmRSS of a process every 100 ms, in bytes."""

    def __init__(self, pid):
        self.pid = pid
        self.baseline = self.rss()
        self.peak = self.baseline
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def rss(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self._stop.wait(0.1):
            try:
                self.peak = max(self.peak, self.rss())
            except OSError:
                return

    def stop(self):
        self._stop.set()
        self.thread.join(5)
        return self.peak - self.baseline


# --- tests ---------------------------------------------------------------------------

class L7TestCase(h.GatehouseTestCase):
    """Certificates are made once per class with `gatehouse cert new`."""

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(h.GATEHOUSE):
            raise unittest.SkipTest(f"gatehouse binary not found at {h.GATEHOUSE}")
        cls.certs = h.TempDir()
        d = cls.certs.path
        cls.front = h.Cert(d, "front", MAIL, [MAIL, AUTODISCOVER, "*.contoso.test"])
        cls.fabrikam = h.Cert(d, "fabrikam", FABRIKAM, [FABRIKAM])
        # Like IIS on an Exchange Mailbox server: self-signed, the machine name, RSA 2048.
        cls.mbx = h.Cert(d, "mbx01", "MBX01", key="rsa2048")
        cls.py = h.Cert(d, "py", "mbx02.contoso.test", ["mbx02.contoso.test"])
        cls.py_pin = cls.py.pin()
        cls.bundle = os.path.join(d, "clients-trust.pem")
        with open(cls.bundle, "w") as out:
            for c in (cls.front, cls.fabrikam):
                with open(c.cert) as f:
                    out.write(f.read())

    @classmethod
    def tearDownClass(cls):
        cls.certs.cleanup()

    def need(self, binary):
        if shutil.which(binary) is None:
            self.skipTest(f"{binary} is not installed (apt-get install "
                          f"{'nginx-light' if binary == 'nginx' else 'nghttp2-client'})")

    def gatehouse(self, *sections, workers=1, env=None):
        text = h.config(h.server_section(workers), h.certificate_section("front", self.front),
                        h.certificate_section("fabrikam", self.fabrikam), *sections)
        return self.start(text, env=env)

    def nginx(self, names):
        self.need("nginx")
        return self.backend(nginx_backend.NginxBackend(self.dir.path, self.mbx, names))

    def nginx_sections(self, ngx):
        """One pool per nginx backend name, pinned by thumbprint (as Get-ExchangeCertificate shows it)."""
        out = []
        for n in ngx.names:
            out.append(server(n, ngx.address(n), pin=self.mbx.thumbprint))
            out.append(pool(n, [n]))
        return out

    def py_backend(self, name="py"):
        b = self.backend(PyBackend(name, self.py))
        return b, [server(name, b.address, pin=self.py_pin), pool(name, [name])]

    # clients

    def curl(self, port, path, name=MAIL, http="1.1", extra=(), timeout=20):
        """curl through gatehouse with SNI and Host `name`; returns a dict:
        rc, code, version, headers (final response, lower-case names), body,
        stderr, seconds."""
        tag = uuid.uuid4().hex
        body_file, head_file = self.dir.file(tag + ".body"), self.dir.file(tag + ".head")
        args = ["curl", "-sS", "--max-time", str(timeout * h.SLOW), "--cacert", self.bundle,
                "--resolve", f"{name}:{port}:127.0.0.1", "--http2" if http == "2" else "--http1.1",
                "-o", body_file, "-D", head_file, "-w", "%{http_code} %{http_version}", *extra,
                f"https://{name}:{port}{path}"]
        started = time.monotonic()
        p = subprocess.run(args, capture_output=True, timeout=(timeout + 10) * h.SLOW)
        seconds = time.monotonic() - started
        code, _, version = p.stdout.decode().partition(" ")
        headers = {}
        if os.path.exists(head_file):
            with open(head_file, "rb") as f:
                blocks = [b for b in f.read().decode("latin-1").split("\r\n\r\n") if b.strip()]
            if blocks:
                for line in blocks[-1].split("\r\n")[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
        body = b""
        if os.path.exists(body_file):
            with open(body_file, "rb") as f:
                body = f.read()
        return {"rc": p.returncode, "code": int(code) if code.isdigit() else 0, "version": version,
                "headers": headers, "body": body, "stderr": p.stderr.decode(errors="replace"), "seconds": seconds}

    def tls(self, port, sni=MAIL, alpn=("http/1.1",), source=None, timeout=30):
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout * h.SLOW,
                                       source_address=(source, 0) if source else None)
        ctx = h.client_context(self.bundle) if sni else h.client_context()
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        try:
            return ctx.wrap_socket(raw, server_hostname=sni)
        except BaseException:
            raw.close()
            raise

    @staticmethod
    def send_request(sock, method, target, host=MAIL, fields=(), body=b""):
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"] + [f"{k}: {v}" for k, v in fields]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def assert_short_text(self, body, headers, what):
        self.assertLess(len(body), 1024, f"{what}: error bodies are short: {body[:200]!r}")
        ctype = headers.get("content-type")
        self.assertTrue(ctype and ctype.startswith("text/plain"), f"{what}: content-type {ctype!r}")


class Routing(L7TestCase):
    """One nginx, one server block per pool. Routes are listed least specific
    first, so that file order cannot be what makes the right one win."""

    NAMES = ["owa", "owaauth", "mapi", "ews", "eas", "wild", "any"]

    def setUp(self):
        super().setUp()
        self.ngx = self.nginx(self.NAMES)
        self.g = self.gatehouse(
            listener(),
            route("any", paths=["/owa"]),
            route("wild", hosts=["*.contoso.test"]),
            route("owa", hosts=[MAIL], paths=["/owa", "/ecp"]),
            route("owaauth", hosts=[MAIL], paths=["/owa/auth"]),
            route("mapi", hosts=[MAIL], paths=["/mapi"]),
            route("ews", hosts=[MAIL], paths=["/EWS"]),
            route("eas", hosts=[MAIL], paths=["/Microsoft-Server-ActiveSync"]),
            *self.nginx_sections(self.ngx))
        self.port = self.g.port("web")

    CASES = [
        (MAIL, "/owa/", "owa"),
        (MAIL, "/OWA/Default.aspx", "owa"),
        (MAIL, "/owa", "owa"),
        (MAIL, "/owa?realm=contoso", "owa"),
        (MAIL, "/ecp/", "owa"),
        (MAIL, "/owa/auth/logon.aspx?url=x", "owaauth"),
        (MAIL, "/OWA/Auth/15.2/themes/x.css", "owaauth"),
        (MAIL, "/mapi/emsmdb/?MailboxId=a@contoso.test", "mapi"),
        (MAIL, "/ews/exchange.asmx", "ews"),
        (MAIL, "/EWS/Exchange.asmx", "ews"),
        (MAIL, "/Microsoft-Server-ActiveSync?Cmd=Ping&User=a", "eas"),
        (MAIL, "/microsoft-server-activesync/", "eas"),
        (AUTODISCOVER, "/autodiscover/autodiscover.xml", "wild"),
        (AUTODISCOVER, "/owa/", "wild"),  # a wildcard host beats a route without hosts
        (FABRIKAM, "/owa/", "any"),
    ]

    def test_paths_and_hosts_route_to_pools_over_http1_and_http2(self):
        for http in ("1.1", "2"):
            for host, path, expected in self.CASES:
                with self.subTest(http=http, host=host, path=path):
                    r = self.curl(self.port, path, name=host, http=http)
                    self.assertEqual(r["rc"], 0, r["stderr"])
                    self.assertEqual(r["code"], 200, r["body"])
                    self.assertEqual(r["version"], http)
                    got = nginx_backend.parse_answer(r["body"].decode())
                    self.assertEqual(got["backend"], expected, r["body"])
                    self.assertEqual(r["headers"].get("x-backend"), expected)
                    self.assertEqual(got["uri"], path, "the path and query must reach the backend unchanged")
                    self.assertEqual(got["method"], "GET")
                    self.assertIn(got["host"], (host, f"{host}:{self.port}"), "Host must be passed through")

    def test_prefix_matches_whole_segments_only(self):
        # "/owa" covers /owa, /owa/, /owa/x and /owa?x, never /owax.
        for path in ("/owax", "/owa.aspx", "/mapix/emsmdb"):
            with self.subTest(path=path):
                r = self.curl(self.port, path)
                self.assertEqual(r["rc"], 0, r["stderr"])
                if r["code"] == 200:
                    got = nginx_backend.parse_answer(r["body"].decode())["backend"]
                    self.assertNotIn(got, ("owa", "mapi", "any"), f"{path} matched a prefix it does not start with")
                else:
                    self.assertEqual(r["code"], 404, r["body"])

    def test_access_log_fields(self):
        marks = {}
        for http in ("1.1", "2"):
            marks[http] = "/owa/log-" + uuid.uuid4().hex
            r = self.curl(self.port, marks[http], http=http)
            self.assertEqual((r["rc"], r["code"]), (0, 200), r["stderr"])
        for http, protocol in (("1.1", "HTTP/1.1"), ("2", "HTTP/2")):
            line = self.g.wait_for(lambda o, m=marks[http]: m in str(o.get("path", "")), self.g.access,
                                   what=f"access log line of {marks[http]}")
            with self.subTest(protocol=protocol):
                for key in ("time", "client", "duration_ms", "bytes_in", "bytes_out", "backend_reused", "resumed"):
                    self.assertIn(key, line)
                self.assertEqual(line["mode"], "l7")
                self.assertEqual(line["listener"], "web")
                self.assertEqual(line["protocol"], protocol)
                self.assertEqual(line["sni"], MAIL)
                self.assertEqual(line["certificate"], "front")
                self.assertIn(line["tls_version"], ("TLSv1.2", "TLSv1.3"))
                self.assertIn(line["host"], (MAIL, f"{MAIL}:{self.port}"))
                self.assertEqual(line["method"], "GET")
                self.assertEqual(line["status"], 200)
                self.assertEqual((line["pool"], line["server"]), ("owa", "owa"))
                self.assertTrue(line["client"].startswith("127.0.0.1:"), line["client"])
                self.assertGreater(line["bytes_out"], 50)
                self.assertNotIn("error", line)
                self.assertIsInstance(line["backend_reused"], bool)

    def test_nghttp_multiplexes_routes_on_one_connection(self):
        self.need("nghttp")
        # nghttp has no --resolve: it connects to the address (no SNI), :authority names the host.
        base = f"https://127.0.0.1:{self.port}"
        paths = ["/owa/", "/mapi/emsmdb/", "/EWS/Exchange.asmx", "/Microsoft-Server-ActiveSync"]
        p = subprocess.run(["nghttp", "-H", f":authority: {MAIL}", "-H", "x-forwarded-for: 203.0.113.9"]
                           + [base + x for x in paths], capture_output=True, text=True, timeout=30 * h.SLOW)
        self.assertEqual(p.returncode, 0, p.stderr)
        answers = {}
        for line in p.stdout.splitlines():
            got = nginx_backend.parse_answer(line)
            answers[got["uri"]] = got
        self.assertEqual({x: answers.get(x, {}).get("backend") for x in paths},
                         dict(zip(paths, ["owa", "mapi", "ews", "eas"])), p.stdout)
        for got in answers.values():
            self.assertEqual(got["xff"], "127.0.0.1")
            self.assertEqual(got["host"], MAIL)
        lines = wait_lines(self.g, self.g.access, lambda o: o.get("protocol") == "HTTP/2", 4)
        self.assertEqual(len({o["client"] for o in lines}), 1, "nghttp used one connection for all four")
        self.assertEqual({o["pool"] for o in lines}, {"owa", "mapi", "ews", "eas"})

    def _h2load(self, extra, n, expect_protocol):
        self.need("h2load")
        args = ["h2load", "-n", str(n), *extra, "--connect-to", f"127.0.0.1:{self.port}",
                f"https://{MAIL}:{self.port}/mapi/emsmdb/"]
        p = subprocess.run(args, capture_output=True, text=True, timeout=60 * h.SLOW)
        out = p.stdout + p.stderr
        self.assertEqual(p.returncode, 0, out)
        self.assertIn(f"Application protocol: {expect_protocol}", out)
        m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                      r"(\d+) errored", out)
        self.assertIsNotNone(m, out)
        self.assertEqual(m.groups(), (str(n), str(n), str(n), str(n), "0", "0"), out)
        self.assertRegex(out, rf"status codes: {n} 2xx")
        wait_lines(self.g, self.g.access, lambda o: o.get("pool") == "mapi", n, timeout=20)
        log = self.ngx.log("mapi")
        self.assertEqual(len(log), n)
        return log

    def test_h2load_http2_multiplexed_onto_pooled_backend_connections(self):
        log = self._h2load(["-c", "4", "-m", "10"], 2000, "h2")
        connections = {x["connection"] for x in log}
        # 4 clients x 10 streams: at most ~40 requests in flight at once.
        self.assertLessEqual(len(connections), 200, "backend connections are not kept alive and reused")
        self.assertGreaterEqual(max(x["requests"] for x in log), 20)
        lines = [o for o in list(self.g.access) if o.get("pool") == "mapi"]
        self.assertTrue(all(o["protocol"] == "HTTP/2" and o["status"] == 200 for o in lines))

    def test_h2load_http1(self):
        log = self._h2load(["-c", "2", "--h1"], 500, "http/1.1")
        self.assertLessEqual(len({x["connection"] for x in log}), 20)

    def test_misdirected_request_421(self):
        before = len(self.ngx.log("any"))
        for http in ("1.1", "2"):
            with self.subTest(http=http):
                # SNI mail.contoso.test chose "front", which does not cover other.fabrikam.test
                # (another certificate of the listener does: that must not matter).
                r = self.curl(self.port, "/owa/", http=http, extra=("-H", f"Host: {FABRIKAM}"))
                self.assertEqual(r["rc"], 0, r["stderr"])
                self.assertEqual(r["code"], 421, r["body"])
                self.assert_short_text(r["body"], r["headers"], "421")
        self.assertEqual(len(self.ngx.log("any")), before, "a misdirected request reached a backend")
        line = self.g.wait_access(status=421)
        self.assertEqual((line["sni"], line["certificate"]), (MAIL, "front"))
        self.assertIn(line["host"], (FABRIKAM, f"{FABRIKAM}:{self.port}"))
        # Controls: the same Host with its own SNI, and another Host the SNI's certificate covers.
        r = self.curl(self.port, "/owa/", name=FABRIKAM)
        self.assertEqual((r["code"], nginx_backend.parse_answer(r["body"].decode())["backend"]), (200, "any"))
        r = self.curl(self.port, "/owa/", extra=("-H", f"Host: {AUTODISCOVER}"))
        self.assertEqual((r["code"], nginx_backend.parse_answer(r["body"].decode())["backend"]), (200, "wild"))
        # Without SNI there is nothing to be misdirected from.
        with self.tls(self.port, sni=None) as s:
            self.send_request(s, "GET", "/owa/nosni", host=FABRIKAM)
            resp = read_response(HttpConn(s))
        self.assertEqual(resp.status, 200, resp.body)
        self.assertEqual(resp.headers.get("x-backend"), "any")

    def test_no_route_404(self):
        for http in ("1.1", "2"):
            with self.subTest(http=http):
                # other.fabrikam.test has only the any-host /owa route.
                r = self.curl(self.port, "/ecp/", name=FABRIKAM, http=http)
                self.assertEqual(r["rc"], 0, r["stderr"])
                self.assertEqual(r["code"], 404, r["body"])
                self.assert_short_text(r["body"], r["headers"], "404")
        self.assertEqual(sum(len(self.ngx.log(n)) for n in self.NAMES), 0,
                         "a request without a route reached a backend")
        line = self.g.wait_access(status=404)
        self.assertEqual(line["path"].split("?")[0], "/ecp/")
        # The connection stays usable after a 404.
        with self.tls(self.port, sni=FABRIKAM) as s:
            hc = HttpConn(s)
            self.send_request(s, "GET", "/nothing-here", host=FABRIKAM)
            self.assertEqual(read_response(hc).status, 404)
            self.send_request(s, "GET", "/owa/", host=FABRIKAM)
            resp = read_response(hc)
            self.assertEqual((resp.status, resp.headers.get("x-backend")), (200, "any"))


class Forwarding(L7TestCase):
    def setUp(self):
        super().setUp()
        self.ngx = self.nginx(["owa"])
        self.g = self.gatehouse(listener(), route("owa"), *self.nginx_sections(self.ngx))
        self.port = self.g.port("web")

    def test_forwarded_headers_replace_what_the_client_sent(self):
        for http in ("1.1", "2"):
            with self.subTest(http=http):
                r = self.curl(self.port, "/owa/", http=http, extra=(
                    "--interface", "127.0.0.5",
                    "-H", "X-Forwarded-For: 203.0.113.66",
                    "-H", "X-Forwarded-Proto: http",
                    "-H", "X-Forwarded-Host: evil.example"))
                self.assertEqual((r["rc"], r["code"]), (0, 200), r["stderr"])
                got = nginx_backend.parse_answer(r["body"].decode())
                self.assertEqual(got["xff"], "127.0.0.5", "X-Forwarded-For must be the real client, not appended")
                self.assertEqual(got["proto"], "https")
                hosts = (MAIL, f"{MAIL}:{self.port}")
                self.assertIn(got["xfh"], hosts)
                self.assertIn(got["host"], hosts)
                fwd = got["fwd"].replace('"', "")
                self.assertIn("for=127.0.0.5", fwd)
                self.assertIn("proto=https", fwd)
                self.assertIn(f"host={MAIL}", fwd)
                self.assertNotIn("203.0.113.66", r["body"].decode())
                self.assertNotIn("evil.example", r["body"].decode())
        line = self.g.wait_access(protocol="HTTP/2")
        self.assertTrue(line["client"].startswith("127.0.0.5:"), line)

    def test_hop_by_hop_headers_are_removed(self):
        r = self.curl(self.port, "/owa/", http="1.1", extra=(
            "-H", "Connection: keep-alive, X-Hop",
            "-H", "X-Hop: secret",
            "-H", "Keep-Alive: timeout=5, max=100",
            "-H", "Proxy-Connection: keep-alive",
            "-H", "TE: trailers",
            "-H", "Upgrade: example/1",
            "-H", "X-End-To-End: kept"))
        self.assertEqual((r["rc"], r["code"]), (0, 200), r["stderr"])
        got = nginx_backend.parse_answer(r["body"].decode())
        self.assertEqual(got["x_end_to_end"], "kept")
        for key in ("x_hop", "keep_alive", "proxy_connection", "te", "upgrade"):
            self.assertEqual(got[key], "", f"{key} reached the backend: {r['body']!r}")
        self.assertNotIn("x-hop", got["connection"].lower())


class KeepAlive(L7TestCase):
    def test_thousand_requests_on_one_client_connection_reuse_backend_connections(self):
        ngx = self.nginx(["owa"])
        g = self.gatehouse(listener(), route("owa"), *self.nginx_sections(ngx))
        port = g.port("web")
        ctx = h.client_context(self.bundle)
        conn = http.client.HTTPSConnection(MAIL, port, context=ctx, timeout=20 * h.SLOW)
        conn._create_connection = lambda address, *a, **kw: socket.create_connection(("127.0.0.1", port), *a, **kw)
        sockets = set()
        try:
            for i in range(1000):
                conn.request("GET", f"/owa/service.svc?n={i}")
                resp = conn.getresponse()
                body = resp.read().decode()
                self.assertEqual(resp.status, 200, body)
                self.assertTrue(body.startswith(f"owa GET /owa/service.svc?n={i}|"), body)
                sockets.add(id(conn.sock))
        finally:
            conn.close()
        self.assertEqual(len(sockets), 1, "the client connection was not kept alive")
        lines = wait_lines(g, g.access, lambda o: o.get("pool") == "owa", 1000)
        self.assertEqual(len({o["client"] for o in lines}), 1)
        log = ngx.log("owa")
        self.assertEqual(len(log), 1000)
        connections = {}
        for x in log:
            connections.setdefault(x["connection"], []).append(x)
        full = sum(1 for reqs in connections.values() if not reqs[0]["reused"])
        self.assertLessEqual(len(connections), 3,
                             f"{len(connections)} backend connections for 1000 sequential requests")
        self.assertLessEqual(full, len(connections))
        self.assertGreaterEqual(max(x["requests"] for x in log), 300)
        reused = sum(1 for o in lines if o.get("backend_reused") is True)
        self.assertGreaterEqual(reused, 990, "access log backend_reused must be true for pooled connections")
        self.assertFalse(lines[0]["backend_reused"], "the very first request cannot have reused a connection")


class Bulk(L7TestCase):
    """Bodies stream both ways without buffering whole messages: Outlook
    Anywhere's RPC_IN_DATA sends a 1 GiB Content-Length."""

    def _gatehouse(self):
        backend, sections = self.py_backend("mbx02")
        env = dict(os.environ)
        if h.SANITIZED:
            # ASan keeps freed memory in quarantine (256 MiB by default); that is not the proxy's RSS.
            env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "")
                                   + ":quarantine_size_mb=8:thread_local_quarantine_size_kb=64")
        g = self.gatehouse(listener(), route("mbx02", paths=["/rpc", "/owa"]), *sections, env=env)
        return backend, g, g.port("web")

    def _warm_up(self, port):
        with self.tls(port) as s:
            self.send_request(s, "POST", "/rpc/warmup", fields=[("Content-Length", "5")], body=b"hello")
            resp = read_response(HttpConn(s))
            self.assertEqual(resp.status, 200, resp.body)

    def test_rpc_in_data_1gib_upload_streams_in_bounded_memory(self):
        backend, g, port = self._gatehouse()
        self._warm_up(port)
        rss = RssSampler(g.proc.pid)
        target = "/rpc/rpcproxy.dll?mbx01.contoso.test:6001"
        digest = hashlib.sha256()
        started = time.monotonic()
        try:
            with self.tls(port, timeout=120) as s:
                self.send_request(s, "RPC_IN_DATA", target, fields=[
                    ("Content-Length", str(BULK)), ("Content-Type", "application/rpc"),
                    ("User-Agent", "MSRPC"), ("Cache-Control", "no-cache")])
                for piece in bulk_chunks(BULK):
                    digest.update(piece)
                    s.sendall(piece)
                resp = read_response(HttpConn(s))
        finally:
            growth = rss.stop()
        elapsed = time.monotonic() - started
        self.assertEqual(resp.status, 200, resp.body[:300])
        got = resp.json()
        self.assertEqual(got["method"], "RPC_IN_DATA")
        self.assertEqual(got["target"], target)
        self.assertEqual(got["length"], BULK)
        self.assertEqual(got["sha256"], digest.hexdigest(), "the body was corrupted on the way")
        self.assertLess(growth, RSS_LIMIT, f"gatehouse RSS grew by {growth / MIB:.0f} MiB for a "
                        f"{BULK // MIB} MiB upload: the body is buffered (took {elapsed:.1f}s)")
        line = g.wait_access(method="RPC_IN_DATA")
        self.assertEqual(line["status"], 200)
        self.assertGreaterEqual(line["bytes_in"], BULK)

    def test_1gib_download_streams_in_bounded_memory(self):
        backend, g, port = self._gatehouse()
        self._warm_up(port)
        rss = RssSampler(g.proc.pid)
        target = f"/owa/download?size={BULK}"
        digest = hashlib.sha256()
        received = 0
        started = time.monotonic()
        try:
            with self.tls(port, timeout=120) as s:
                self.send_request(s, "GET", target)
                hc = HttpConn(s)
                start, headers = hc.read_head()
                self.assertTrue(start.startswith("HTTP/1.1 200"), start)
                if "content-length" in headers:
                    self.assertEqual(int(headers.get("content-length")), BULK)

                def sink(data):
                    nonlocal received
                    digest.update(data)
                    received += len(data)

                hc.read_body(headers, sink)
        finally:
            growth = rss.stop()
        elapsed = time.monotonic() - started
        self.assertEqual(received, BULK)
        self.assertEqual(digest.hexdigest(), backend.sent.get(target), "the body was corrupted on the way")
        self.assertLess(growth, RSS_LIMIT, f"gatehouse RSS grew by {growth / MIB:.0f} MiB for a "
                        f"{BULK // MIB} MiB download: the body is buffered (took {elapsed:.1f}s)")
        line = g.wait_for(lambda o: "/owa/download" in str(o.get("path", "")), g.access, what="download log line")
        self.assertEqual(line["status"], 200)
        self.assertGreaterEqual(line["bytes_out"], BULK)


class Errors(L7TestCase):
    def test_all_servers_refusing_gives_502_or_503(self):
        dead = [f"127.0.0.1:{h.free_port()}" for _ in range(2)]
        g = self.gatehouse(listener(), route("dead"), server("dead0", dead[0]), server("dead1", dead[1]),
                           pool("dead", ["dead0", "dead1"], tls="insecure"))
        port = g.port("web")
        for http in ("1.1", "2"):
            with self.subTest(http=http):
                r = self.curl(port, "/owa/", http=http)
                self.assertEqual(r["rc"], 0, r["stderr"])
                self.assertIn(r["code"], (502, 503), r["body"])
                self.assert_short_text(r["body"], r["headers"], str(r["code"]))
        lines = wait_lines(g, g.access, lambda o: o.get("status") in (502, 503), 2)
        for line in lines:
            self.assertEqual(line["pool"], "dead")
            self.assertTrue(line.get("error"), line)
        g.wait_event("backend_connect_failed", pool="dead")
        self.assertIsNone(g.proc.poll())

    def test_refused_server_is_retried_on_another(self):
        live, sections = self.py_backend("live")
        dead = f"127.0.0.1:{h.free_port()}"
        g = self.gatehouse(listener(), route("p"), server("live", live.address, pin=self.py_pin),
                           server("dead", dead, pin=self.py_pin), pool("p", ["dead", "live"]))
        port = g.port("web")
        for i in range(6):  # round robin starts on the dead one for some of them
            r = self.curl(port, f"/owa/{i}", http="2" if i % 2 else "1.1")
            self.assertEqual((r["rc"], r["code"]), (0, 200), r)
            self.assertEqual(r["headers"].get("x-backend"), "live")
        g.wait_event("backend_connect_failed", server="dead")

    def test_backend_silent_after_request_gives_504_after_route_idle_timeout(self):
        backend, sections = self.py_backend()
        g = self.gatehouse(listener(), route("py", paths=["/slow"], idle_timeout="1s"), route("py"), *sections)
        port = g.port("web")
        for http in ("1.1", "2"):
            with self.subTest(http=http):
                r = self.curl(port, "/slow/hang", http=http)
                self.assertEqual(r["rc"], 0, r["stderr"])
                self.assertEqual(r["code"], 504, r["body"])
                self.assert_short_text(r["body"], r["headers"], "504")
                self.assertGreater(r["seconds"], 0.8, "504 before the route's idle_timeout")
                self.assertLess(r["seconds"], 4 * h.SLOW, "the route's idle_timeout = 1s was not applied")
        line = g.wait_access(status=504)
        self.assertTrue(line.get("error"), line)
        self.assertEqual(line["pool"], "py")
        # Another request on the same gatehouse still works.
        r = self.curl(port, "/slow/echo")
        self.assertEqual(r["code"], 200)

    def answer_until_close(self, port, method, target, **request):
        """Sends one HTTP/1.1 request; returns the answer's status line, what
        followed its head until the connection ended, whether it did end (in
        10 s), and the seconds from the request to the end."""
        with self.tls(port) as s:
            self.send_request(s, method, target, **request)
            hc = HttpConn(s)
            started = time.monotonic()
            start, _headers = hc.read_head()
            data, closed = hc.read_to_close(10)
            return start, data, closed, time.monotonic() - started

    def test_backend_stalling_mid_response_is_cut_off_after_route_idle_timeout(self):
        backend, sections = self.py_backend()
        g = self.gatehouse(listener(), route("py", paths=["/slow"], idle_timeout="1s"), route("py"), *sections)
        port = g.port("web")
        # /stream sends its head and a first chunk, then nothing until .proceed
        # (never set here): after 1 s idle the response must end as a failure.
        start, data, closed, elapsed = self.answer_until_close(port, "GET", "/slow/stream")
        self.assertTrue(start.startswith("HTTP/1.1 200"), start)
        self.assertTrue(closed, "a response stalled past the route's idle_timeout was left open")
        self.assertIn(b"first", data)
        self.assertFalse(data.endswith(b"0\r\n\r\n"), "a cut-off response was ended as if complete")
        self.assertGreater(elapsed, 0.8, "cut off before the route's idle_timeout")
        self.assertLess(elapsed, 4 * h.SLOW, "the route's idle_timeout = 1s was not applied")
        r = self.curl(port, "/slow/stream", http="2")
        self.assertNotEqual(r["rc"], 0, "curl --http2 saw a cut-off response as a success")
        lines = wait_lines(g, g.access, lambda o: "stream" in str(o.get("path", "")), 2)
        for line in lines:
            self.assertIn("sent nothing for 1 s", line.get("error", ""), line)
        r = self.curl(port, "/slow/echo")
        self.assertEqual((r["rc"], r["code"]), (0, 200), r["stderr"])

    def test_client_stalling_mid_upload_gets_504_and_a_close(self):
        backend, sections = self.py_backend()
        g = self.gatehouse(listener(), route("py", paths=["/slow"], idle_timeout="1s"), route("py"), *sections)
        port = g.port("web")
        # 10 of the 1000 bytes announced, then silence: the backend waits for
        # the rest and so does Gatehouse, for the route's idle_timeout.
        start, body, closed, elapsed = self.answer_until_close(
            port, "POST", "/slow/upload", fields=[("Content-Length", "1000")], body=b"x" * 10)
        self.assertTrue(start.startswith("HTTP/1.1 504"), start)
        self.assertTrue(closed, "the connection of a timed-out upload must close (its body is unread)")
        self.assertIn(b"504", body)
        self.assertGreater(elapsed, 0.8, "504 before the route's idle_timeout")
        self.assertLess(elapsed, 4 * h.SLOW)
        line = g.wait_access(status=504)
        self.assertEqual(line["method"], "POST")
        r = self.curl(port, "/slow/echo")
        self.assertEqual((r["rc"], r["code"]), (0, 200), r["stderr"])

    def test_http2_stream_stalling_mid_upload_gets_504_while_the_connection_serves_others(self):
        import h2frames as f
        backend, sections = self.py_backend()
        g = self.gatehouse(listener(), route("py", paths=["/slow"], idle_timeout="1s"), route("py"), *sections)
        conn = f.TlsConn(g.port("web"), alpn=["h2"], timeout=10 * h.SLOW)
        try:
            client = f.H2Client(conn)
            self.assertTrue(client.handshake(10 * h.SLOW), f"no SETTINGS ({conn.how})")
            sid = client.new_stream_id()
            block = f.encode_headers(f.request_fields("/slow/upload", MAIL, "POST", extra=[("content-length", "1000")]))
            conn.queue(f.header_frames(sid, block, end_stream=False) + f.data(sid, b"x" * 10))
            client._stream(sid)
            started = time.monotonic()
            # Meanwhile another stream on the same connection is answered.
            other = client.request("/owa/echo", timeout=5 * h.SLOW)
            self.assertEqual(other.status, 200)
            client.wait(lambda: client.streams[sid].done, 10 * h.SLOW)
            elapsed = time.monotonic() - started
            stalled = client.streams[sid]
            self.assertEqual(stalled.status, 504, f"headers {stalled.headers}, reset {stalled.reset}")
            self.assertGreater(elapsed, 0.8, "504 before the route's idle_timeout")
            self.assertLess(elapsed, 4 * h.SLOW)
            again = client.request("/owa/echo2", timeout=5 * h.SLOW)
            self.assertEqual(again.status, 200, "the connection must outlive one stream's timeout")
        finally:
            conn.close()
        line = g.wait_access(status=504)
        self.assertEqual((line["method"], line["protocol"]), ("POST", "HTTP/2"))

    def test_idle_keep_alive_connection_closes_with_close_notify_after_listener_idle_timeout(self):
        backend, sections = self.py_backend()
        g = self.gatehouse(listener(extra='idle_timeout = "2s"'), route("py"), *sections)
        port = g.port("web")
        raw = socket.create_connection(("127.0.0.1", port), timeout=10 * h.SLOW)
        ctx = h.client_context(self.bundle)
        ctx.set_alpn_protocols(["http/1.1"])
        # A close without close_notify raises SSLEOFError here instead of returning b"".
        with ctx.wrap_socket(raw, server_hostname=MAIL, suppress_ragged_eofs=False) as s:
            for i in range(3):  # activity keeps it open past the 2 s
                self.send_request(s, "GET", f"/owa/{i}")
                hc = HttpConn(s)
                start, headers = hc.read_head()
                self.assertTrue(start.startswith("HTTP/1.1 200"), start)
                hc.read_body(headers, lambda d: None)
                time.sleep(1)
            started = time.monotonic()
            s.settimeout(10 * h.SLOW)
            self.assertEqual(s.recv(100), b"", "expected close_notify, then the end")
            elapsed = time.monotonic() - started
        self.assertGreater(elapsed, 0.8)
        self.assertLess(elapsed, 2 + 3 * h.SLOW)
        self.assertEqual(len(backend.requests), 3)

    def test_backend_dying_mid_response_is_not_a_success(self):
        backend, sections = self.py_backend()
        g = self.gatehouse(listener(), route("py"), *sections)
        port = g.port("web")
        # HTTP/1.1: the head comes through, then the client connection ends before the body does.
        with self.tls(port) as s:
            self.send_request(s, "GET", "/owa/die")
            hc = HttpConn(s)
            start, headers = hc.read_head()
            self.assertTrue(start.startswith("HTTP/1.1 200"), start)
            data, closed = hc.read_to_close(10)
        self.assertTrue(closed, "client connection left open after the backend died mid-body")
        if "content-length" in headers:
            self.assertEqual(headers.get("content-length"), "1000000")
            self.assertLess(len(data), 1000000)
        else:
            self.assertIn("chunked", (headers.get("transfer-encoding") or "").lower())
            self.assertFalse(data.endswith(b"0\r\n\r\n"), "a truncated body was ended as if complete")
        # HTTP/2: the stream must end in an error, not END_STREAM.
        r = self.curl(port, "/owa/die", http="2")
        self.assertNotEqual(r["rc"], 0, "curl --http2 saw a truncated body as a success")
        self.assertLess(len(r["body"]), 1000000)
        lines = wait_lines(g, g.access, lambda o: "die" in str(o.get("path", "")), 2)
        for line in lines:
            self.assertTrue(line.get("error"), f"a truncated response is logged as an error: {line}")
        # Gatehouse keeps serving.
        r = self.curl(port, "/owa/echo", http="2")
        self.assertEqual((r["rc"], r["code"]), (0, 200), r["stderr"])


class HttpDetails(L7TestCase):
    def setUp(self):
        super().setUp()
        self.py, sections = self.py_backend()
        self.g = self.gatehouse(listener(), route("py"), *sections)
        self.port = self.g.port("web")

    def test_head_204_304_have_no_body_and_keep_the_connection_in_step(self):
        with self.tls(self.port) as s:
            hc = HttpConn(s)
            for method, target, status in (("HEAD", "/owa/echo", 200), ("GET", "/owa/status/204", 204),
                                           ("GET", "/owa/status/304", 304), ("GET", "/owa/echo", 200)):
                with self.subTest(method=method, target=target):
                    self.send_request(s, method, target, fields=[("If-None-Match", '"v1"')] if status == 304 else [])
                    resp = read_response(hc, method)
                    self.assertEqual(resp.status, status)
                    self.assertEqual(resp.headers.get("x-backend"), "py")
                    if method == "HEAD":
                        self.assertGreater(int(resp.headers.get("content-length") or 0), 0,
                                           "HEAD must keep the Content-Length of the GET")
                    if status == 304:
                        self.assertEqual(resp.headers.get("etag"), '"v1"')
                    if status == 200 and method == "GET":
                        # Had anything followed the bodiless answers, it would show up here.
                        self.assertEqual(resp.json()["method"], "GET", resp.body)
            s.settimeout(0.3)
            try:
                extra = s.recv(100)
            except (socket.timeout, TimeoutError):
                extra = b""
            self.assertEqual(extra, b"", "bytes after the last response")
        for http in ("1.1", "2"):
            with self.subTest(http=http, method="HEAD"):
                r = self.curl(self.port, "/owa/echo", http=http, extra=("-I",))
                self.assertEqual((r["rc"], r["code"], r["body"].split(b"\r\n\r\n", 1)[-1].strip()), (0, 200, b""),
                                 r["stderr"])
            for status in (204, 304):
                with self.subTest(http=http, status=status):
                    r = self.curl(self.port, f"/owa/status/{status}", http=http)
                    self.assertEqual((r["rc"], r["code"], r["body"]), (0, status, b""), r["stderr"])

    def test_chunked_response_passes_through_intact(self):
        expected = self.py.chunked_body
        with self.tls(self.port) as s:
            hc = HttpConn(s)
            self.send_request(s, "GET", "/owa/chunked")
            resp = read_response(hc)
            self.assertEqual(resp.status, 200)
            self.assertEqual(resp.body, expected)
            self.send_request(s, "GET", "/owa/echo")  # framing kept in step
            self.assertEqual(read_response(hc).json()["target"], "/owa/echo")
        r = self.curl(self.port, "/owa/chunked", http="2")
        self.assertEqual((r["rc"], r["code"]), (0, 200), r["stderr"])
        self.assertEqual(r["body"], expected)

    def test_response_trailers_reach_http1_client(self):
        expected = hashlib.sha256(self.py.chunked_body).hexdigest()
        with self.tls(self.port) as s:
            self.send_request(s, "GET", "/owa/chunked", fields=[("TE", "trailers")])
            resp = read_response(HttpConn(s))
        self.assertEqual(resp.body, self.py.chunked_body)
        self.assertIn(("X-Body-Sha256", expected), [(k.title(), v) for k, v in resp.trailers] +
                      [(k.title(), v) for k, v in resp.headers.pairs if k.lower() == "x-body-sha256"])

    def test_response_streams_before_backend_finishes(self):
        # ActiveSync Ping / long polls: the first chunk must reach the client while the backend still holds the rest.
        with self.tls(self.port) as s:
            self.send_request(s, "GET", "/Microsoft-Server-ActiveSync/stream")
            hc = HttpConn(s)
            start, headers = hc.read_head()
            self.assertTrue(start.startswith("HTTP/1.1 200"), start)
            s.settimeout(5 * h.SLOW)
            got = b""
            try:
                while b"first\n" not in got:
                    got += hc.read_some(65536)
            except (socket.timeout, TimeoutError):
                self.fail(f"the first chunk did not arrive while the backend held the rest: {got!r}")
            self.py.proceed.set()
            while b"0\r\n\r\n" not in got:
                got += hc.read_some(65536)
            self.assertIn(b"second\n", got)
        # HTTP/2 the same way: curl's --no-buffer output shows the first chunk early.
        self.py.proceed.clear()
        p = subprocess.Popen(["curl", "-sS", "-N", "--http2", "--cacert", self.bundle, "--resolve",
                              f"{MAIL}:{self.port}:127.0.0.1", f"https://{MAIL}:{self.port}/eas/h2/stream"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            first = p.stdout.readline()  # blocks until the first chunk, or the end
            self.assertEqual(first, b"first\n")
            self.py.proceed.set()
            self.assertEqual(p.stdout.read(), b"second\n")
            self.assertEqual(p.wait(10 * h.SLOW), 0, p.stderr.read())
            self.assertEqual(self.py.stream_timeouts, 0, "the first chunk was held back until the backend gave up")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()

    def test_request_bodies_streamed_with_content_length_and_chunked(self):
        payload = os.urandom(3 * MIB + 12345)
        digest = hashlib.sha256(payload).hexdigest()
        with self.tls(self.port) as s:
            hc = HttpConn(s)
            self.send_request(s, "PUT", "/ews/upload-cl", fields=[("Content-Length", str(len(payload)))], body=payload)
            got = read_response(hc).json()
            self.assertEqual((got["length"], got["sha256"]), (len(payload), digest))
            self.send_request(s, "POST", "/ews/upload-chunked", fields=[("Transfer-Encoding", "chunked")])
            for i in range(0, len(payload), 100000):
                piece = payload[i:i + 100000]
                s.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            s.sendall(b"0\r\n\r\n")
            got = read_response(hc).json()
            self.assertEqual((got["length"], got["sha256"]), (len(payload), digest))
        # HTTP/2 with no content-length: the backend needs chunked framing.
        path = self.dir.write("payload.bin", "")
        with open(path, "wb") as f:
            f.write(payload)
        with open(path, "rb") as f:
            p = subprocess.run(["curl", "-sS", "--http2", "--cacert", self.bundle, "--resolve",
                                f"{MAIL}:{self.port}:127.0.0.1", "-T", "-", "-X", "POST",
                                f"https://{MAIL}:{self.port}/ews/h2-no-length"],
                               stdin=f, capture_output=True, timeout=30 * h.SLOW)
        self.assertEqual(p.returncode, 0, p.stderr)
        got = json.loads(p.stdout)
        self.assertEqual((got["length"], got["sha256"]), (len(payload), digest))

    def test_expect_100_continue(self):
        payload = os.urandom(2 * MIB)
        path = self.dir.file("upload.bin")
        with open(path, "wb") as f:
            f.write(payload)
        for http in ("1.1", "2"):
            with self.subTest(http=http):
                # curl waits --expect100-timeout for the 100 before it sends the body.
                r = self.curl(self.port, f"/owa/expect-{http}", http=http, extra=(
                    "-H", "Expect: 100-continue", "--expect100-timeout", "10", "--data-binary", "@" + path))
                self.assertEqual((r["rc"], r["code"]), (0, 200), r["stderr"])
                got = json.loads(r["body"])
                self.assertEqual(got["length"], len(payload))
                self.assertEqual(got["sha256"], hashlib.sha256(payload).hexdigest())
                self.assertLess(r["seconds"], 5 * h.SLOW, "no 100 Continue reached curl: it waited for its timeout")


class HeaderCase(L7TestCase):
    """Header names keep the case they were written in towards HTTP/1.1 peers
    (older Outlook builds read X-OWA-Version, Persistent-Auth... in no other
    case); HTTP/2 clients get them lower-case, as HTTP/2 requires."""

    def setUp(self):
        super().setUp()
        self.py, sections = self.py_backend()
        self.g = self.gatehouse(listener(), route("py") + 'affinity = "cookie"\n', *sections)
        self.port = self.g.port("web")

    @staticmethod
    def raw_response(sock, buf=b""):
        """One response with a Content-Length body, as the bytes on the wire:
        (head, body, what followed)."""
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                raise EOFError(f"connection closed before the head ended: {buf!r}")
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
        n = int(length.group(1)) if length else 0
        while len(rest) < n:
            data = sock.recv(65536)
            if not data:
                raise EOFError("connection closed before the body ended")
            rest += data
        return head + b"\r\n", rest[:n], rest[n:]

    def test_http1_client_gets_response_names_as_the_backend_wrote_them(self):
        with self.tls(self.port) as s:
            self.send_request(s, "GET", "/owa/case")
            head, body, rest = self.raw_response(s)
            self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"), head)
            self.assertEqual(body, b"case\n")
            for name, value in PyBackend.CASE_FIELDS + (("X-Backend", "py"), ("Content-Length", "5")):
                self.assertIn(f"\r\n{name}: {value}\r\n".encode(), head, f"{name} lost its case:\n{head!r}")
            # What Gatehouse adds itself is capitalised the conventional way.
            self.assertRegex(head, rb"\r\nSet-Cookie: GatehouseAffinity=[^\r]+\r\n")
            self.send_request(s, "GET", "/owa/case", fields=[("Connection", "close")])
            head, body, _ = self.raw_response(s, rest)
            self.assertEqual(body, b"case\n")
            self.assertIn(b"\r\nConnection: close\r\n", head)
            self.assertIn(b"\r\nX-OWA-Version: 15.2.1118.7\r\n", head)

    def test_http1_backend_gets_request_names_as_the_client_wrote_them(self):
        sent = [("X-Client-MiXeD", "1"), ("cookie", "a=b"), ("USER-AGENT", "Microsoft Office/16.0"),
                ("X-AnchorMailbox", "alice@contoso.test")]
        with self.tls(self.port) as s:
            self.send_request(s, "GET", "/owa/echo", fields=sent)
            got = read_response(HttpConn(s)).json()
        pairs = [tuple(p) for p in got["headers"]]
        for field in sent:
            self.assertIn(field, pairs)
        # The ones Gatehouse writes itself.
        names = [k for k, _ in pairs]
        for name in ("Host", "X-Forwarded-For", "X-Forwarded-Proto", "Forwarded"):
            self.assertIn(name, names)

    def test_http2_client_gets_lower_case_names(self):
        self.need("nghttp")
        # nghttp has no --resolve: it connects to the address (no SNI), :authority names the host.
        # Without Persistent-Auth: it binds the connection, which HTTP/2 cannot have.
        p = subprocess.run(["nghttp", "-v", "-H", f":authority: {MAIL}",
                            f"https://127.0.0.1:{self.port}/owa/case?unbound"],
                           capture_output=True, text=True, timeout=30 * h.SLOW)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("case\n", p.stdout)
        received = re.findall(r"recv \(stream_id=\d+\) ([^:\s][^:]*|:[a-z]+): (.*)", p.stdout)
        names = [n for n, _ in received]
        self.assertIn(":status", names, p.stdout)
        for name, value in PyBackend.CASE_FIELDS:
            if name != "Persistent-Auth":
                self.assertIn((name.lower(), value), received, p.stdout)
        self.assertTrue(any(n == "set-cookie" and v.startswith("GatehouseAffinity=") for n, v in received), p.stdout)
        self.assertEqual([n for n in names if n != n.lower()], [], p.stdout)


if __name__ == "__main__":
    unittest.main()
