"""L7 safety: what a hostile or broken client must not get through Gatehouse.

HTTP/1.1 (ALPN "http/1.1"): malformed framing and heads (CL+TE, conflicting
Content-Length, obs-fold, bad characters, oversized request line or head, too
many fields, unknown transfer codings) get 400 and a closed connection, a
`bad_request` event on stderr, and the backend receives nothing of them, not
even a valid request pipelined behind them. Valid pipelined requests are
answered in order.

HTTP/2 (ALPN "h2", frames written by hand with h2frames.py):
SETTINGS_MAX_CONCURRENT_STREAMS is 100; Rapid Reset (CVE-2023-44487) and the
CONTINUATION flood (CVE-2024-28182) end in GOAWAY, a closed connection and an
`h2_abuse` event while well-behaved clients on other connections keep getting
answers; oversized header lists are refused without reaching the backend.

The backend is a raw TLS HTTP/1.1 server that records every byte it reads, so
"the backend received nothing" is checked on the wire, not by a lenient
parser. Malformed requests carry "/bad-" in their path (and in any smuggled
part), which must never show up at the backend."""

import multiprocessing
import os
import queue
import threading
import time
import unittest

import h2frames as f
import harness as h
import nginx_backend

MAIL = "mail.contoso.test"
HOST = b"Host: mail.contoso.test\r\n"
MARKER = b"/bad-"

ATTACK_SECONDS = 10  # an attacking connection stops after this long or ATTACK_FRAMES frames
ATTACK_FRAMES = 100_000
MIN_ATTACK_SECONDS = 3  # attackers reconnect until then
SLOWEST = 0.5 if not h.SANITIZED else 3.0  # seconds any good answer may take during an attack


# --- the backend -----------------------------------------------------------------

class RecordingBackend(h.LoopbackServer):
    """A TLS HTTP/1.1 server (keep-alive) presenting `cert`. Every byte read
    is kept in `received`; every request head in `heads`. Answers 200 with
    "<name> <METHOD> <path>\\n" as a text/plain body."""

    def __init__(self, name, cert):
        self.name = name
        self.received = bytearray()
        self.heads = []
        super().__init__(cert, join_connections=True)

    @property
    def count(self):
        with self.lock:
            return len(self.heads)

    def saw(self, needle):
        with self.lock:
            return needle in self.received

    def paths(self):
        with self.lock:
            out = []
            for head in self.heads:
                parts = head.split(b"\r\n", 1)[0].split(b" ")
                out.append(parts[1].decode("latin-1") if len(parts) > 1 else "?")
            return out

    def _serve(self, raw):
        conn = raw
        try:
            raw.settimeout(30 * h.SLOW)
            conn = self.tls(raw)
            reader = _Reader(conn, self)
            while not self._stopped.is_set():
                head = reader.until(b"\r\n\r\n")
                if head is None:
                    return
                with self.lock:
                    self.heads.append(head)
                lines = head.split(b"\r\n")
                parts = lines[0].split(b" ")
                method = parts[0].decode("latin-1")
                path = parts[1].decode("latin-1") if len(parts) > 1 else "?"
                fields = {}
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    fields.setdefault(name.strip().lower(), []).append(value.strip())
                if b"chunked" in b",".join(fields.get(b"transfer-encoding", [])).lower():
                    while True:
                        size_line = reader.until(b"\r\n")
                        if size_line is None:
                            return
                        size = int(size_line.split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while True:  # trailers up to the empty line
                                trailer = reader.until(b"\r\n")
                                if not trailer:
                                    break
                            break
                        if reader.exactly(size + 2) is None:
                            return
                elif b"content-length" in fields:
                    if reader.exactly(int(fields[b"content-length"][0])) is None:
                        return
                body = f"{self.name} {method} {path}\n".encode()
                if path.startswith("/big"):
                    body = b"x" * (256 << 10)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                             b"X-Backend: %s\r\n\r\n" % (len(body), self.name.encode()) + (b"" if method == "HEAD" else body))
                if b"close" in b",".join(fields.get(b"connection", [])).lower():
                    return
        except (OSError, ValueError, IndexError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass


class _Reader:
    def __init__(self, conn, backend):
        self.conn = conn
        self.backend = backend
        self.buf = b""

    def _fill(self):
        chunk = self.conn.recv(65536)
        if not chunk:
            return False
        with self.backend.lock:
            self.backend.received += chunk
        self.buf += chunk
        return True

    def until(self, sep):
        while sep not in self.buf:
            if not self._fill():
                return None
        out, self.buf = self.buf.split(sep, 1)
        return out

    def exactly(self, n):
        while len(self.buf) < n:
            if not self._fill():
                return None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


# --- HTTP/1.1 responses ------------------------------------------------------------

def parse_responses(buf, eof=False):
    """Complete HTTP/1.1 responses at the front of `buf` (bytes) as a list of
    (status, {lower-case name: value}, body). With eof, a response without
    framing ends at the end of the data."""
    out = []
    pos = 0
    while True:
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            return out
        lines = buf[pos:end].split(b"\r\n")
        try:
            status = int(lines[0].split(b" ")[1])
        except (IndexError, ValueError):
            out.append((None, {}, buf[pos:]))
            return out
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        start = end + 4
        if "content-length" in fields:
            stop = start + int(fields["content-length"])
            if stop > len(buf):
                return out
            body = buf[start:stop]
        elif "chunked" in fields.get("transfer-encoding", "").lower():
            body, p = b"", start
            while True:
                eol = buf.find(b"\r\n", p)
                if eol < 0:
                    return out
                size = int(buf[p:eol].split(b";")[0] or b"0", 16)
                if size == 0:
                    trailer_end = buf.find(b"\r\n\r\n", eol)
                    if buf[eol:eol + 4] == b"\r\n\r\n":
                        stop = eol + 4
                    elif trailer_end >= 0:
                        stop = trailer_end + 4
                    else:
                        return out
                    break
                if eol + 2 + size + 2 > len(buf):
                    return out
                body += buf[eol + 2:eol + 2 + size]
                p = eol + 2 + size + 2
        elif status in (204, 304) or 100 <= status < 200:
            stop, body = start, b""
        elif eof:
            stop, body = len(buf), buf[start:]
        else:
            return out
        out.append((status, fields, body))
        pos = stop


def vm_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- well-behaved clients that run during an attack -----------------------------------

class WellBehavedClients:
    """Two threads: an h2 client doing sequential GETs on one connection, and
    an HTTP/1.1 client opening a new connection per GET. Each result is
    (kind, finished_at, ok, detail)."""

    def __init__(self, port, backend_name):
        self.port = port
        self.backend_name = backend_name
        self.results = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._h2_loop, daemon=True),
                        threading.Thread(target=self._h1_loop, daemon=True)]
        self._conns = []
        for t in self.threads:
            t.start()

    def _answered(self, body, path):
        """The backend's answer to this very request ("NAME GET PATH", then
        a newline or, from an nginx backend, what it echoes)."""
        expected = f"{self.backend_name} GET {path}".encode()
        return body.startswith(expected) and body[len(expected):len(expected) + 1] in (b"\n", b"|")

    def _record(self, kind, ok, detail, started=None):
        now = time.monotonic()
        with self.lock:
            self.results.append((kind, now, ok, detail, now - started if started is not None else 0.0))

    def _h2_loop(self):
        conn = None
        try:
            conn = f.TlsConn(self.port, alpn=["h2"], timeout=10 * h.SLOW)
            self._conns.append(conn)
            client = f.H2Client(conn)
            if not client.handshake(10 * h.SLOW):
                self._record("h2", False, f"no SETTINGS from the server ({conn.how})")
                return
            n = 0
            while not self.stopping.is_set():
                n += 1
                path = f"/victim-h2-{n}"
                began = time.monotonic()
                s = client.request(path, timeout=5 * h.SLOW)
                if s.status == 200 and self._answered(bytes(s.body), path):
                    self._record("h2", True, path, began)
                else:
                    self._record("h2", False, f"{path}: status {s.status} reset {s.reset} body {bytes(s.body)[:80]!r} "
                                              f"goaway {client.goaway} closed {conn.how}")
                    return
                self.stopping.wait(0.05)
        except Exception as e:  # noqa: BLE001 - reported as a failed answer
            self._record("h2", False, f"{e.__class__.__name__}: {e}")
        finally:
            if conn:
                conn.close()

    def _h1_loop(self):
        n = 0
        while not self.stopping.is_set():
            n += 1
            path = f"/victim-h1-{n}"
            began = time.monotonic()
            conn = None
            try:
                conn = f.TlsConn(self.port, alpn=["http/1.1"], timeout=5 * h.SLOW)
                conn.queue(b"GET %s HTTP/1.1\r\n%sConnection: close\r\n\r\n" % (path.encode(), HOST))
                conn.wait(lambda: parse_responses(bytes(conn.inbuf)), 5 * h.SLOW)
                got = parse_responses(bytes(conn.inbuf), eof=conn.closed)
                if got and got[0][0] == 200 and self._answered(got[0][2], path):
                    self._record("http/1.1", True, path, began)
                else:
                    self._record("http/1.1", False, f"{path}: {bytes(conn.inbuf)[:200]!r} closed {conn.how}")
                    return
            except Exception as e:  # noqa: BLE001
                self._record("http/1.1", False, f"{path}: {e.__class__.__name__}: {e}")
                return
            finally:
                if conn:
                    conn.close()
            self.stopping.wait(0.05)

    def wait_first_answers(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                kinds = {r[0] for r in self.results}
                if any(not r[2] for r in self.results) or kinds >= {"h2", "http/1.1"}:
                    return
            time.sleep(0.05)

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(15 * h.SLOW)
        for c in self._conns:
            c.close()


class VictimProcess:
    """WellBehavedClients in a process of their own, so that the attacker's
    work in this process (and its interpreter lock) never delays them: what
    they measure is Gatehouse."""

    def __init__(self, port, backend_name):
        ctx = multiprocessing.get_context("fork")
        self._stop = ctx.Event()
        self._first = ctx.Event()
        self._queue = ctx.Queue()
        self._proc = ctx.Process(target=self._main, args=(port, backend_name), daemon=True)
        self._proc.start()
        self._results = None

    def _main(self, port, backend_name):
        # The attacker, this process's backends and the victims share two
        # cores: let the victims run first (where allowed), so that their
        # waits are Gatehouse's, not the scheduler's.
        try:
            os.setpriority(os.PRIO_PROCESS, 0, -10)
        except OSError:
            pass
        victims = WellBehavedClients(port, backend_name)
        victims.wait_first_answers(10 * h.SLOW)
        self._first.set()
        self._stop.wait(300)
        victims.stop()
        self._queue.put(list(victims.results))

    def wait_first_answers(self, timeout):
        self._first.wait(timeout)

    @property
    def results(self):
        if self._results is not None:
            return self._results
        return [("started", time.monotonic(), self._first.is_set(), "first answers", 0.0)]

    def stop(self):
        if self._results is not None:
            return
        self._stop.set()
        try:
            self._results = self._queue.get(timeout=30 * h.SLOW)
        except queue.Empty:
            self._results = [("stop", time.monotonic(), False, "the victim process did not report", 0.0)]
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()


# --- tests ------------------------------------------------------------------------------

class L7SafetyCase(h.GatehouseTestCase):
    LISTENER_EXTRA = ""
    # Access log lines to a file instead of the pipe this process reads: an
    # attack's thousands of lines must not wait on this busy interpreter.
    ACCESS_LOG_FILE = False

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(h.GATEHOUSE):
            raise unittest.SkipTest(f"gatehouse binary not found at {h.GATEHOUSE}")
        cls.certs = h.TempDir()
        cls.front = h.Cert(cls.certs.path, "front", MAIL, [MAIL])
        cls.mbx01 = h.Cert(cls.certs.path, "mbx01", "mbx01.contoso.test", ["mbx01.contoso.test"])

    @classmethod
    def tearDownClass(cls):
        cls.certs.cleanup()

    def setUp(self):
        super().setUp()
        self.web = self.backend(RecordingBackend("mbx01", self.mbx01))
        self.g = self.start(h.config(
            h.server_section(1, drain_timeout="1s").replace(
                'access_log = "-"', f'access_log = "{self.dir.file("access.log")}"' if self.ACCESS_LOG_FILE else 'access_log = "-"'),
            h.certificate_section("front", self.front),
            f'[[listener]]\nname = "web"\nbind = "127.0.0.1:0"\nmode = "l7"\ncertificates = ["front"]\n'
            f'{self.LISTENER_EXTRA}\n',
            f'[[server]]\nname = "mbx01"\naddress = "{self.web.address}"\npin = "{self.mbx01.thumbprint}"\n',
            '[[pool]]\nname = "owa"\nservers = ["mbx01"]\n',
            '[[route]]\nlistener = "web"\nhosts = ["mail.contoso.test"]\npaths = ["/"]\npool = "owa"\n',
            self.extra_config(),
        ))
        self.port = self.g.port("web")

    def extra_config(self):
        """More servers, pools and routes for a test class."""
        return ""

    def connect(self, alpn):
        conn = f.TlsConn(self.port, alpn=[alpn], timeout=10 * h.SLOW)
        self._stops.append(conn.close)
        self.assertEqual(conn.alpn, alpn, f"ALPN {alpn} was not chosen")
        return conn

    def h2(self):
        conn = self.connect("h2")
        client = f.H2Client(conn)
        self.assertTrue(client.handshake(10 * h.SLOW), f"no SETTINGS from the server ({conn.how})")
        return conn, client

    def h1_get(self, path, extra=b""):
        """One GET on a new HTTP/1.1 connection; returns (status, fields, body)."""
        conn = self.connect("http/1.1")
        conn.queue(b"GET %s HTTP/1.1\r\n%s%sConnection: close\r\n\r\n" % (path.encode(), HOST, extra))
        conn.wait(lambda: parse_responses(bytes(conn.inbuf)), 10 * h.SLOW)
        got = parse_responses(bytes(conn.inbuf), eof=conn.closed)
        conn.close()
        self.assertTrue(got, f"no answer to GET {path}: {bytes(conn.inbuf)[:300]!r} ({conn.how})")
        return got[0]

    def assert_backend_clean(self, before):
        """Nothing but a barrier request reached the backend since `before`
        requests: a valid request on a new connection is answered, and it is
        the only new request the backend saw."""
        time.sleep(0.2 * h.SLOW)  # a wrongly forwarded request would be on its way by now
        status, _, body = self.h1_get("/barrier")
        self.assertEqual(status, 200, body)
        self.assertEqual(body, b"mbx01 GET /barrier\n")
        self.assertEqual(self.web.paths()[before:], ["/barrier"],
                         "the backend received more than the barrier request")
        self.assertFalse(self.web.saw(MARKER), "bytes of a refused request reached the backend:\n"
                         + bytes(self.web.received)[:2000].decode("latin-1"))

    def wait_abuse(self, conn, word, timeout=10):
        ev = self.g.wait_event("h2_abuse", timeout=timeout, client=conn.client)
        self.assertEqual(ev.get("listener"), "web", ev)
        self.assertIn(word, str(ev.get("reason", "")).lower(), ev)
        return ev


class Http1Malformed(L7SafetyCase):
    """Each case: the request (in one write), then the statuses accepted. The
    contract says 400; 414 and 431 are accepted where a server may prefer the
    more precise code for the same refusal."""

    def expect_refused(self, request, statuses=(400,), pieces=1):
        """Sends `request` (in `pieces` writes, each flushed to the socket
        before the next), expects one refusal and a close."""
        before = self.web.count
        conn = self.connect("http/1.1")
        step = -(-len(request) // pieces)
        for i in range(0, len(request), step):
            conn.send(request[i:i + step], timeout=5 * h.SLOW)
            if conn.closed:
                break
            if pieces > 1:
                conn.pump(0.01)
        closed = conn.wait_closed(10 * h.SLOW)
        data = bytes(conn.inbuf)
        got = parse_responses(data, eof=True)
        self.assertTrue(got, f"no response; the connection {'closed' if closed else 'stayed open'} ({conn.how}), "
                             f"got {data[:300]!r}")
        status, fields, body = got[0]
        self.assertIn(status, statuses, f"got {data[:300]!r}")
        self.assertEqual(len(got), 1, f"more than one response: {data[:600]!r}")
        self.assertTrue(fields.get("content-type", "").startswith("text/plain"), fields)
        self.assertLess(len(body), 1024)
        self.assertTrue(closed, "the connection was not closed after the 400")
        ev = self.g.wait_event("bad_request", client=conn.client)
        self.assertEqual(ev.get("listener"), "web", ev)
        self.assertTrue(isinstance(ev.get("reason"), str) and ev["reason"], ev)
        self.assertEqual(self.web.count, before, f"the backend received {self.web.paths()[before:]}")
        self.assert_backend_clean(before)


def _smuggle(path):
    return b"GET %s HTTP/1.1\r\n%s\r\n" % (path, HOST)


_CHUNKED_BODY = b"0\r\n\r\n" + _smuggle(b"/bad-smuggled")

MALFORMED = {
    "content_length_then_chunked": (
        b"POST /bad-cl-te HTTP/1.1\r\n" + HOST + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n"
        % len(_CHUNKED_BODY) + _CHUNKED_BODY, (400,)),
    "chunked_then_content_length": (
        b"POST /bad-te-cl HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n"
        % len(_CHUNKED_BODY) + _CHUNKED_BODY, (400,)),
    "chunked_then_content_length_zero": (
        b"POST /bad-te-cl0 HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n", (400,)),
    "two_different_content_lengths": (
        b"POST /bad-cl-cl HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", (400,)),
    "content_length_list_of_different_values": (
        b"POST /bad-cl-list HTTP/1.1\r\n" + HOST + b"Content-Length: 5, 6\r\n\r\nhello!", (400,)),
    "obs_fold_space": (
        b"GET /bad-fold-sp HTTP/1.1\r\n" + HOST + b"X-Folded: a\r\n b\r\n\r\n", (400,)),
    "obs_fold_tab": (
        b"GET /bad-fold-tab HTTP/1.1\r\n" + HOST + b"X-Folded: a\r\n\tb\r\n\r\n", (400,)),
    "obs_fold_of_transfer_encoding": (
        b"POST /bad-fold-te HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"
        b"0\r\n\r\n", (400,)),
    "space_in_header_name": (
        b"GET /bad-name-sp HTTP/1.1\r\n" + HOST + b"Bad Header: x\r\n\r\n", (400,)),
    "control_character_in_header_name": (
        b"GET /bad-name-ctl HTTP/1.1\r\n" + HOST + b"X-A\x01: y\r\n\r\n", (400,)),
    "whitespace_before_colon": (
        b"POST /bad-name-ws HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n"
        b"0\r\n\r\n", (400,)),
    "nul_in_header_value": (
        b"GET /bad-value-nul HTTP/1.1\r\n" + HOST + b"X-V: a\x00b\r\n\r\n", (400,)),
    "del_in_header_value": (
        b"GET /bad-value-del HTTP/1.1\r\n" + HOST + b"X-V: a\x7fb\r\n\r\n", (400,)),
    "request_line_over_64k": (
        b"GET /bad-long?" + b"a" * (64 * 1024 + 100) + b" HTTP/1.1\r\n" + HOST + b"\r\n", (400, 414)),
    "headers_over_64k": (
        b"GET /bad-big-head HTTP/1.1\r\n" + HOST
        + b"".join(b"X-Big-%02d: %s\r\n" % (i, b"a" * 4000) for i in range(20)) + b"\r\n", (400, 431)),
    "101_header_fields": (
        b"GET /bad-fields HTTP/1.1\r\n" + HOST
        + b"".join(b"X-F-%03d: v\r\n" % i for i in range(100)) + b"\r\n", (400, 431)),
    "transfer_encoding_gzip": (
        b"POST /bad-te-gzip HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip\r\n\r\n" + _smuggle(b"/bad-after-gzip"),
        (400,)),
    "transfer_encoding_chunked_then_gzip": (
        b"POST /bad-te-chunked-gzip HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked, gzip\r\n\r\n"
        b"0\r\n\r\n" + _smuggle(b"/bad-after-chunked-gzip"), (400,)),
    "transfer_encoding_chunked_then_gzip_in_two_fields": (
        b"POST /bad-te-two HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"
        b"0\r\n\r\n", (400,)),
    "valid_request_after_malformed_one_in_the_same_write": (
        b"POST /bad-first HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n" + _smuggle(b"/bad-pipelined-after"), (400,)),
}

for _name, (_request, _statuses) in MALFORMED.items():
    def _test(self, request=_request, statuses=_statuses):
        self.expect_refused(request, statuses)

    _test.__name__ = f"test_{_name}"
    _test.__doc__ = f"{_name.replace('_', ' ')} -> {'/'.join(map(str, _statuses))} and close"
    setattr(Http1Malformed, _test.__name__, _test)
del _name, _request, _statuses, _test


def _big_head(path, fields, size):
    return (b"GET %s HTTP/1.1\r\n" % path + HOST
            + b"".join(b"X-Big-%02d: %s\r\n" % (i, b"a" * size) for i in range(fields)) + b"\r\n")


def test_headers_over_64k_in_20_writes(self):
    """80 KB of head (20 fields of 4,000 bytes), one field per write: the
    limit is on the whole head, not on what one read brings."""
    self.expect_refused(_big_head(b"/bad-big-head-pieces", 20, 4000), (400, 431), pieces=20)


def test_header_block_of_few_large_fields_over_64k(self):
    self.expect_refused(_big_head(b"/bad-big-fields", 2, 40000), (400, 431))


Http1Malformed.test_headers_over_64k_in_20_writes = test_headers_over_64k_in_20_writes
Http1Malformed.test_header_block_of_few_large_fields_over_64k = test_header_block_of_few_large_fields_over_64k
del test_headers_over_64k_in_20_writes, test_header_block_of_few_large_fields_over_64k


class Http1Valid(L7SafetyCase):
    def test_valid_get_reaches_backend(self):
        status, fields, body = self.h1_get("/owa/")
        self.assertEqual(status, 200)
        self.assertEqual(body, b"mbx01 GET /owa/\n")
        self.assertEqual(self.web.paths(), ["/owa/"])

    def test_90_header_fields_are_fine(self):
        extra = b"".join(b"X-F-%03d: v%d\r\n" % (i, i) for i in range(89))  # + Host = 90 fields
        status, _, body = self.h1_get("/ninety", extra)
        self.assertEqual(status, 200, body)
        self.assertEqual(body, b"mbx01 GET /ninety\n")
        head = self.web.heads[-1].lower()
        self.assertIn(b"x-f-000: v0\r\n", head)
        self.assertIn(b"x-f-088: v88", head)

    def test_pipelined_pair_answered_in_order(self):
        conn = self.connect("http/1.1")
        conn.queue(b"GET /first HTTP/1.1\r\n%s\r\nGET /second HTTP/1.1\r\n%s\r\n" % (HOST, HOST))
        conn.wait(lambda: len(parse_responses(bytes(conn.inbuf))) >= 2, 10 * h.SLOW)
        got = parse_responses(bytes(conn.inbuf))
        self.assertEqual([(s, b) for s, _, b in got], [(200, b"mbx01 GET /first\n"), (200, b"mbx01 GET /second\n")],
                         f"{bytes(conn.inbuf)[:600]!r} ({conn.how})")
        self.assertFalse(conn.closed, "a keep-alive connection was closed after pipelined requests")
        # And the connection still works afterwards.
        conn.queue(b"GET /third HTTP/1.1\r\n%sConnection: close\r\n\r\n" % HOST)
        conn.wait(lambda: len(parse_responses(bytes(conn.inbuf))) >= 3, 10 * h.SLOW)
        got = parse_responses(bytes(conn.inbuf), eof=conn.closed)
        self.assertEqual(len(got), 3, bytes(conn.inbuf)[:600])
        self.assertEqual(got[2][2], b"mbx01 GET /third\n")
        self.assertEqual(self.web.paths(), ["/first", "/second", "/third"])

    def test_pipelined_post_with_body_then_get(self):
        conn = self.connect("http/1.1")
        conn.queue(b"POST /post HTTP/1.1\r\n%sContent-Length: 11\r\n\r\nhello worldGET /after-post HTTP/1.1\r\n%s"
                   b"Connection: close\r\n\r\n" % (HOST, HOST))
        conn.wait_closed(10 * h.SLOW)
        got = parse_responses(bytes(conn.inbuf), eof=True)
        self.assertEqual([(s, b) for s, _, b in got],
                         [(200, b"mbx01 POST /post\n"), (200, b"mbx01 GET /after-post\n")], bytes(conn.inbuf)[:600])


class H2AttackCase(L7SafetyCase):
    """Attacks on one HTTP/2 connection while well-behaved clients run beside it."""

    ACCESS_LOG_FILE = True

    def extra_config(self):
        # The good clients are answered by nginx, in a process of its own, and
        # the attacks' big answers by a backend of their own: what the good
        # clients wait for is Gatehouse, not a Python test server busy with
        # the attack's streams.
        self.victim_backend = nginx_backend.NginxBackend(self.dir.path, self.mbx01, ["mbx01"])
        self._stops.append(self.victim_backend.stop)
        self.big = self.backend(RecordingBackend("mbx02", self.mbx01))
        return (f'[[server]]\nname = "mbx02"\naddress = "{self.big.address}"\npin = "{self.mbx01.thumbprint}"\n'
                '[[pool]]\nname = "big"\nservers = ["mbx02"]\n'
                '[[route]]\nlistener = "web"\nhosts = ["mail.contoso.test"]\npaths = ["/big"]\npool = "big"\n'
                f'[[server]]\nname = "victims"\naddress = "{self.victim_backend.address("mbx01")}"\n'
                f'pin = "{self.mbx01.thumbprint}"\n'
                '[[pool]]\nname = "victims"\nservers = ["victims"]\n'
                '[[route]]\nlistener = "web"\nhosts = ["mail.contoso.test"]\npaths = ["/victim-h1", "/victim-h2"]\n'
                'pool = "victims"\n')


    # -- attacks --

    def run_attack(self, conn, client, next_batch, what):
        """Queues batches from next_batch() (bytes and frame count, or None when
        the budget is spent) while reading, until GOAWAY, close, or the
        budget of frames or time; then waits for the close. Returns a dict of
        what happened; samples Gatehouse's RSS all along."""
        pid = self.g.proc.pid
        result = {"frames": 0, "goaway_at": None, "closed_at": None, "rss_peak": vm_rss_kib(pid)}
        started = time.monotonic()
        last_sample = started
        spent = False
        while not conn.closed and client.goaway is None:
            now = time.monotonic()
            if now - started > ATTACK_SECONDS:
                break
            if not spent and len(conn.outbuf) < 256 * 1024:
                batch = next_batch(result["frames"])
                if batch is None:
                    spent = True
                else:
                    conn.queue(batch[0])
                    result["frames"] += batch[1]
            if spent and not conn.outbuf:
                client.wait(lambda: client.goaway is not None, 3 * h.SLOW)  # the last frames are out: a grace period
                break
            client.pump(0.005)
            if now - last_sample > 0.05:
                result["rss_peak"] = max(result["rss_peak"], vm_rss_kib(pid))
                last_sample = now
        client.process()
        if client.goaway is not None:
            result["goaway_at"] = time.monotonic() - started
            conn.outbuf.clear()  # nothing more to say
            deadline = time.monotonic() + 5 * h.SLOW
            while not conn.closed and time.monotonic() < deadline:
                client.pump(0.05)
                result["rss_peak"] = max(result["rss_peak"], vm_rss_kib(pid))
        if conn.closed:
            result["closed_at"] = time.monotonic() - started
        result["rss_peak"] = max(result["rss_peak"], vm_rss_kib(pid))
        result["seconds"] = time.monotonic() - started
        result["bytes"] = conn.bytes_sent
        summary = (f"{what}: sent {result['frames']} frames ({result['bytes']} bytes) in {result['seconds']:.2f}s; "
                   f"GOAWAY {client.goaway} at {result['goaway_at']}; closed ({conn.how}) at {result['closed_at']}")
        result["summary"] = summary
        return result

    def attack(self, start, what):
        """Runs run_attack on one connection after another (an attacker
        reconnects after a short pause) until MIN_ATTACK_SECONDS have passed
        or 4 * ATTACK_FRAMES frames were sent, so that the
        well-behaved clients have a window to be served in even when each
        connection is cut at once. `start()` returns (conn, client,
        next_batch). Stops at the first connection that is not ended by
        GOAWAY and close. Returns [(conn, client, result)]."""
        runs = []
        started = time.monotonic()
        frames = 0
        while True:
            conn, client, next_batch = start()
            result = self.run_attack(conn, client, next_batch, f"{what} (connection {len(runs) + 1})")
            conn.close()
            runs.append((conn, client, result))
            frames += result["frames"]
            if result["goaway_at"] is None or result["closed_at"] is None:
                break
            if time.monotonic() - started >= MIN_ATTACK_SECONDS or frames >= 4 * ATTACK_FRAMES:
                break
            time.sleep(0.2)  # then reconnect
        return runs

    def check_attack_runs(self, runs, word):
        for conn, client, result in runs:
            self.assertIsNotNone(client.goaway, result["summary"])
            self.assertIsNotNone(result["closed_at"], "connection not closed after GOAWAY: " + result["summary"])
            self.assertLessEqual(result["closed_at"] - result["goaway_at"], 5 * h.SLOW, result["summary"])
        codes = sorted({client.goaway[1] for _, client, _ in runs})
        print(f"\n  {len(runs)} attacking connection(s), GOAWAY codes {codes}, {self.web.count} requests reached the "
              f"backend; first: {runs[0][2]['summary']}")
        self.wait_abuse(runs[0][0], word)

    def check_victims(self, victims, attack_started, attack_ended):
        victims.stop()
        results = list(victims.results)
        failures = [r for r in results if not r[2]]
        self.assertFalse(failures, f"well-behaved clients failed: {failures[:5]}")
        during = [r for r in results if attack_started <= r[1] <= attack_ended + 0.5]
        kinds = {r[0] for r in during}
        self.assertGreaterEqual(len(during), 3, f"only {len(during)} answers during the attack: {results[-5:]}")
        self.assertEqual(kinds, {"h2", "http/1.1"}, f"answers during the attack by kind: {during}")
        slowest = max(r[4] for r in during)
        by_kind = ", ".join(f"{k} {max(r[4] for r in during if r[0] == k) * 1000:.0f} ms" for k in sorted(kinds))
        worst = max(during, key=lambda r: r[4])
        print(f"  well-behaved clients: {len(during)} answers during the attack, slowest {by_kind} "
              f"(ended {worst[1] - attack_started:.2f} s into the attack)")
        return slowest

    def start_victims(self):
        victims = VictimProcess(self.port, "mbx01")
        self._stops.append(victims.stop)
        victims.wait_first_answers(10 * h.SLOW)
        self.assertTrue(victims.results and all(r[2] for r in victims.results),
                        f"well-behaved clients failed before the attack: {victims.results[:3]}")
        return victims


class Http2(H2AttackCase):
    def test_settings_max_concurrent_streams_is_100(self):
        conn, client = self.h2()
        self.assertEqual(client.frames_in[0][0], f.SETTINGS, "the server's first frame is not SETTINGS")
        self.assertEqual(client.server_settings.get(f.SETTINGS_MAX_CONCURRENT_STREAMS), 100, client.server_settings)

    def test_get_over_h2(self):
        conn, client = self.h2()
        for i in range(3):
            s = client.request(f"/h2-{i}", timeout=10 * h.SLOW)
            self.assertEqual(s.status, 200, (s.headers, s.reset, client.goaway, conn.how))
            self.assertEqual(bytes(s.body), f"mbx01 GET /h2-{i}\n".encode())
        self.assertEqual(self.web.paths(), ["/h2-0", "/h2-1", "/h2-2"])

    # -- header lists over the limit --

    def expect_header_list_refused(self, fields, path):
        before = self.web.count
        conn, client = self.h2()
        bad = client.send_request(path, extra=fields)
        good = client.send_request("/h2-after-bad")
        client.wait(lambda: (client.streams[bad].done and client.streams[good].done)
                    or client.goaway is not None, 10 * h.SLOW)
        client.wait(lambda: client.streams[good].done, 2 * h.SLOW)  # a GOAWAY may still let it finish
        s = client.streams[bad]
        print(f"\n  refused stream: status {s.status} reset {s.reset} goaway {client.goaway} closed {conn.how}")
        refused = (s.reset is not None or (s.status is not None and s.status >= 400)
                   or (client.goaway is not None and not s.ended))
        self.assertTrue(refused, f"stream {bad} not refused: status {s.status} body {bytes(s.body)[:100]!r} "
                                 f"reset {s.reset} goaway {client.goaway} closed {conn.how}")
        if s.status is not None:
            self.assertIn(s.status, (400, 431), s.headers)
        self.assertNotIn(path, self.web.paths())
        g = client.streams[good]
        if client.goaway is None or client.goaway[0] >= good:
            self.assertEqual(g.status, 200, f"the next stream on the connection failed: status {g.status} "
                                            f"reset {g.reset} goaway {client.goaway} closed {conn.how}")
            self.assertEqual(bytes(g.body), b"mbx01 GET /h2-after-bad\n")
        # Another connection is unaffected.
        conn2, client2 = self.h2()
        s2 = client2.request("/h2-other-connection", timeout=10 * h.SLOW)
        self.assertEqual(s2.status, 200, (s2.headers, s2.reset, client2.goaway, conn2.how))
        self.assertEqual(bytes(s2.body), b"mbx01 GET /h2-other-connection\n")
        self.assertFalse(self.web.saw(b"x-many-"), "fields of the refused stream reached the backend")
        self.assertFalse(self.web.saw(MARKER), "the refused stream reached the backend")
        return client

    def test_200_header_fields_refused(self):
        fields = [(f"x-many-{i:03d}", f"v{i}") for i in range(200)]
        self.expect_header_list_refused(fields, "/bad-h2-200-fields")

    def test_100_kib_header_list_refused(self):
        fields = [(f"x-many-{i:02d}", "a" * 4096) for i in range(25)]  # HEADERS + CONTINUATION frames
        self.expect_header_list_refused(fields, "/bad-h2-100k")

    def test_rapid_reset_gets_goaway(self):
        victims = self.start_victims()
        block = f.encode_headers(f.request_fields("/rapid-reset"))
        per_batch = 500  # streams

        def next_batch(frames):
            if frames >= ATTACK_FRAMES:
                return None
            first = 1 + frames  # two frames per stream, stream ids 1, 3, 5, ...
            ids = range(first, first + 2 * per_batch, 2)
            return b"".join(f.headers(sid, block) + f.rst_stream(sid, f.CANCEL) for sid in ids), 2 * per_batch

        def start():
            conn, client = self.h2()
            return conn, client, next_batch

        started = time.monotonic()
        runs = self.attack(start, "rapid reset")
        ended = time.monotonic()
        self.check_attack_runs(runs, "reset")
        slowest = self.check_victims(victims, started, ended)
        self.assertLess(slowest, SLOWEST, f"a good request took {slowest:.2f} s during the rapid reset")
        # Gatehouse is fine afterwards.
        status, _, body = self.h1_get("/after-attack")
        self.assertEqual((status, body), (200, b"mbx01 GET /after-attack\n"))
        self.assertIsNone(self.g.proc.poll())

    def test_continuation_flood_gets_goaway(self):
        victims = self.start_victims()
        baseline = vm_rss_kib(self.g.proc.pid)
        # HEADERS without END_HEADERS, then CONTINUATION frames without end,
        # each with three literal fields of ~120 bytes.
        first = f.headers(1, f.encode_headers(f.request_fields("/bad-continuation")), end_stream=True,
                          end_headers=False)
        cont = f.continuation(1, f.encode_headers([(f"x-flood-{i}", "c" * 110) for i in range(3)]))
        per_batch = 200

        def next_batch(frames):
            if frames >= ATTACK_FRAMES:
                return None
            return (first if frames == 0 else b"") + cont * per_batch, per_batch

        def start():
            conn, client = self.h2()
            return conn, client, next_batch

        started = time.monotonic()
        runs = self.attack(start, "CONTINUATION flood")
        ended = time.monotonic()
        self.check_attack_runs(runs, "continuation")
        peak = max(result["rss_peak"] for _, _, result in runs)
        growth_mib = (peak - baseline) / 1024
        limit_mib = 300 if h.SANITIZED else 16
        self.assertLess(growth_mib, limit_mib, f"Gatehouse RSS grew by {growth_mib:.1f} MiB; {runs[0][2]['summary']}")
        slowest = self.check_victims(victims, started, ended)
        self.assertLess(slowest, SLOWEST, f"a good request took {slowest:.2f} s during the CONTINUATION flood")
        self.assertFalse(self.web.saw(MARKER), "the flooded stream reached the backend")
        self.assertFalse(self.web.saw(b"x-flood-"), "the flooded stream reached the backend")
        self.assertIsNone(self.g.proc.poll())


class IdleTimeout(L7SafetyCase):
    LISTENER_EXTRA = 'idle_timeout = "2s"\n'

    def test_half_request_head_is_closed_after_idle_timeout(self):
        conn = self.connect("http/1.1")
        conn.send(b"GET /bad-stalled HTTP/1.1\r\nHost: mail.con")
        started = time.monotonic()
        closed = conn.wait_closed(10 * h.SLOW)
        elapsed = time.monotonic() - started
        self.assertTrue(closed, "a stalled half request head was not closed")
        self.assertGreaterEqual(elapsed, 1.5, "closed before idle_timeout")
        self.assertLessEqual(elapsed, 2 + 3 * h.SLOW)
        got = parse_responses(bytes(conn.inbuf), eof=True)
        if got:
            self.assertIn(got[0][0], (400, 408), bytes(conn.inbuf)[:300])
        self.assertEqual(self.web.count, 0)
        self.assertFalse(self.web.saw(MARKER))


if __name__ == "__main__":
    unittest.main()
