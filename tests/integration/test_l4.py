"""L4 (TCP stream) listeners end to end: the real gatehouse binary terminates
TLS from real clients (curl, openssl s_client, Python's ssl), re-encrypts to
loopback backends that present self-signed certificates (pinned by thumbprint
or SPKI, or verified against a CA file and server_name), and copies bytes both
ways. Covers routing by SNI, retry on another server, half-close, backend
session resumption, handshake and idle timeouts, reload (SIGHUP) and drain
(SIGTERM)."""

import os
import select
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import unittest

import harness as h

MAIL = "mail.contoso.test"
GREETING = b"HELLO-FROM-BACKEND\r\n"


# --- config pieces ---------------------------------------------------------

def listener(name="l4", pool="", extra=""):
    return f'[[listener]]\nname = "{name}"\nbind = "127.0.0.1:0"\nmode = "l4"\npool = "{pool}"\n{extra}\n'


def server(name, address, pin=None, server_name=None):
    text = f'[[server]]\nname = "{name}"\naddress = "{address}"\n'
    if pin is not None:
        text += f'pin = "{pin}"\n'
    if server_name is not None:
        text += f'server_name = "{server_name}"\n'
    return text


def pool(name, servers, tls=None, ca=None):
    text = f'[[pool]]\nname = "{name}"\nservers = [{", ".join(chr(34) + s + chr(34) for s in servers)}]\n'
    if tls is not None:
        text += f'tls = "{tls}"\n'
    if ca is not None:
        text += f'ca = "{ca}"\n'
    return text


def route(listener_name, hosts, pool_name):
    return (f'[[route]]\nlistener = "{listener_name}"\nhosts = [{", ".join(chr(34) + x + chr(34) for x in hosts)}]\n'
            f'pool = "{pool_name}"\n')


def wait_count(g, sink, predicate, n, timeout=10):
    """Waits until `sink` (g.events or g.access) holds `n` lines matching `predicate`."""
    g.wait_for(lambda _: sum(1 for o in list(sink) if predicate(o)) >= n, [None], timeout,
               what=f"{n} matching log lines")


# --- clients ---------------------------------------------------------------

def read_until_closed(sock, timeout):
    """Reads until the peer ends the connection or `timeout` passes.
    Returns (data, closed): closed is True for FIN, close_notify, reset or a
    TLS alert, False when the connection was still open at the deadline."""
    data = b""
    deadline = time.monotonic() + timeout * h.SLOW
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return data, False
        except (ssl.SSLError, ConnectionError, OSError):
            return data, True
        if not chunk:
            return data, True
        data += chunk


def recv_exactly(sock, n, timeout=10):
    data = b""
    deadline = time.monotonic() + timeout * h.SLOW
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"got {len(data)} of {n} bytes within {timeout}s: {data[:200]!r}")
        sock.settimeout(left)
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {len(data)} of {n} bytes: {data[:200]!r}")
        data += chunk
    return data


def client_hello(sni=MAIL):
    """The bytes of a real TLS ClientHello (for clients that stop half way)."""
    ctx = h.client_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


class HalfCloseClient:
    """A TLS client over memory BIOs, so that it can send close_notify and a
    TCP FIN (a real half-close) and still read what comes back."""

    def __init__(self, port, sni=MAIL, cafile=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10 * h.SLOW)
        ctx = h.client_context(cafile)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=sni)
        self._retry(self.obj.do_handshake)

    def _flush(self):
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _fill(self):
        data = self.sock.recv(65536)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    def _retry(self, fn, *args):
        while True:
            try:
                result = fn(*args)
                self._flush()
                return result
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()

    def send(self, data):
        view = memoryview(data)
        while view:
            n = self._retry(self.obj.write, view)
            view = view[n:]

    def close_write(self):
        """close_notify, then FIN; the read side stays open."""
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # the peer's close_notify has not come yet: that is the point
        self._flush()
        self.sock.shutdown(socket.SHUT_WR)

    def read_all(self, timeout=10):
        """Reads to the end. Returns (data, how): "close_notify", "eof" (FIN
        without close_notify), "reset", "timeout" or "error: ..."."""
        data = b""
        deadline = time.monotonic() + timeout * h.SLOW
        while True:
            try:
                chunk = self.obj.read(65536)
                if not chunk:
                    return data, "close_notify"
                data += chunk
                continue
            except ssl.SSLZeroReturnError:
                return data, "close_notify"
            except ssl.SSLEOFError:
                return data, "eof"
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as e:
                return data, f"error: {e}"
            left = deadline - time.monotonic()
            if left <= 0:
                return data, "timeout"
            self.sock.settimeout(left)
            try:
                self._fill()
            except (socket.timeout, TimeoutError):
                return data, "timeout"
            except ConnectionError:
                return data, "reset"

    def close(self):
        self.sock.close()


class CollectThenReplyBackend(h.LoopbackServer):
    """A TLS backend that answers only after the client's half-close: it reads
    to EOF, then sends b"GOT <n>:" + everything reversed, then closes. A proxy
    that tears a connection down on the first EOF loses the reply."""

    def __init__(self, cert):
        self.eofs = []  # how each connection's client side ended
        super().__init__(cert, backlog=64, close_connections=False)

    def _serve(self, raw):
        conn = raw
        try:
            raw.settimeout(20)
            conn = self.tls(raw)
            data = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            self.eofs.append("eof")
            conn.sendall(b"GOT %d:" % len(data) + data[::-1])
            try:
                conn.unwrap()  # close_notify; conn is a plain socket from here on
            except (ssl.SSLError, OSError):
                pass
            conn.shutdown(socket.SHUT_WR)
        except (ssl.SSLError, OSError) as e:
            self.eofs.append(f"error: {e}")
        finally:
            conn.close()


class SpeakFirstThenListenBackend(h.LoopbackServer):
    """A plain TCP backend that sends `banner`, half-closes (FIN) at once,
    then still reads what the client sends until its EOF. The other
    direction of half-close: the server is done talking, the client is not."""

    def __init__(self, banner):
        self.banner = banner
        self.received = []  # per connection: (bytes read after the half-close, how it ended)
        self.done = threading.Event()
        super().__init__(None, backlog=64, close_connections=False)

    def _serve(self, conn):
        data, how = b"", "eof"
        try:
            conn.settimeout(20)
            conn.sendall(self.banner)
            conn.shutdown(socket.SHUT_WR)
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            how = f"error: {e}"
        finally:
            conn.close()
            self.received.append((data, how))
            self.done.set()


# --- tests -------------------------------------------------------------------

class L4TestCase(h.GatehouseTestCase):
    """Certificates are made once per class with `gatehouse cert new`."""

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(h.GATEHOUSE):
            raise unittest.SkipTest(f"gatehouse binary not found at {h.GATEHOUSE}")
        cls.certs = h.TempDir()
        d = cls.certs.path
        cls.front = h.Cert(d, "front", MAIL, [MAIL, "autodiscover.contoso.test", "*.contoso.test"])
        cls.mbx01 = h.Cert(d, "mbx01", "mbx01.contoso.test", ["mbx01.contoso.test"])
        cls.mbx02 = h.Cert(d, "mbx02", "mbx02.contoso.test", ["mbx02.contoso.test"])
        # Same names as mbx01, another key: what an impostor would present.
        cls.rogue = h.Cert(d, "rogue", "mbx01.contoso.test", ["mbx01.contoso.test"])

    @classmethod
    def tearDownClass(cls):
        cls.certs.cleanup()

    def gatehouse(self, *sections, workers=1, drain_timeout="5s", server_extra=""):
        text = h.config(h.server_section(workers, server_extra, drain_timeout=drain_timeout),
                        h.certificate_section("front", self.front), *sections)
        return self.start(text)

    def connect(self, port, sni=MAIL, timeout=10):
        """A verifying TLS client (the front certificate must cover `sni`)."""
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout * h.SLOW)
        if sni is None:
            ctx = h.client_context()
        else:
            ctx = h.client_context(self.front.cert)
        try:
            return ctx.wrap_socket(raw, server_hostname=sni)
        except BaseException:
            raw.close()
            raise

    def echo_roundtrip(self, sock, payload):
        sock.sendall(payload)
        self.assertEqual(recv_exactly(sock, len(payload)), payload)

    def access_for(self, g, sock_name, timeout=10):
        """The access log line of the client connection from `sock_name`."""
        client = "%s:%d" % sock_name
        return g.wait_access(timeout=timeout, client=client)

    def curl(self, port, name=MAIL, path="/owa/", extra=()):
        args = ["curl", "-sS", "--max-time", str(15 * h.SLOW), "--resolve", f"{name}:{port}:127.0.0.1",
                "--cacert", self.front.cert, "-o", "-", "-w", "\\n%{http_code}", *extra,
                f"https://{name}:{port}{path}"]
        p = subprocess.run(args, capture_output=True, text=True, timeout=30 * h.SLOW)
        body, _, code = p.stdout.rpartition("\n")
        return p.returncode, code, body, p.stderr


class RealClients(L4TestCase):
    def test_curl_reaches_https_backend_through_l4(self):
        web = self.backend(h.HttpsBackend("mbx01", self.mbx01))
        g = self.gatehouse(listener(pool="owa"), server("mbx01", web.address, pin=self.mbx01.thumbprint),
                           pool("owa", ["mbx01"]))
        port = g.port("l4")
        rc, code, body, err = self.curl(port)
        self.assertEqual(rc, 0, err)
        self.assertEqual(code, "200")
        self.assertEqual(body, "mbx01 GET /owa/\n")
        line = g.wait_access(pool="owa")
        self.assertEqual(line["mode"], "l4")
        self.assertEqual(line["listener"], "l4")
        self.assertEqual(line["sni"], MAIL)
        self.assertEqual(line["certificate"], "front")
        self.assertEqual(line["server"], "mbx01")
        self.assertIn(line["tls_version"], ("TLSv1.2", "TLSv1.3"))
        self.assertGreater(line["bytes_in"], 0)
        self.assertGreater(line["bytes_out"], len(body))
        self.assertNotIn("error", line)

    def test_openssl_s_client_gets_greeting_and_echo(self):
        # Like an IMAP-over-TLS backend: the server speaks first.
        echo = self.backend(h.EchoBackend(self.mbx01, greeting=b"* OK mbx01 IMAP4rev1 ready\r\n"))
        g = self.gatehouse(listener(pool="imap"), server("mbx01", echo.address, pin=self.mbx01.thumbprint),
                           pool("imap", ["mbx01"]))
        port = g.port("l4")
        p = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", MAIL,
                              "-CAfile", self.front.cert, "-verify_return_error", "-verify_hostname", MAIL,
                              "-quiet", "-no_ign_eof"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            expected = b"* OK mbx01 IMAP4rev1 ready\r\n"
            got = self._read_stdout(p, expected, 15)
            self.assertEqual(got, expected)
            p.stdin.write(b"a1 CAPABILITY through gatehouse\n")
            p.stdin.flush()
            got = self._read_stdout(p, b"a1 CAPABILITY through gatehouse\n", 15)
            self.assertEqual(got, b"a1 CAPABILITY through gatehouse\n")
            p.stdin.close()  # s_client sends close_notify and exits
            self.assertEqual(p.wait(15 * h.SLOW), 0, p.stderr.read().decode(errors="replace"))
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            for f in (p.stdout, p.stderr):
                f.close()
        line = g.wait_access(pool="imap")
        self.assertEqual(line["server"], "mbx01")
        self.assertEqual(line["bytes_in"], len(b"a1 CAPABILITY through gatehouse\n"))
        self.assertEqual(line["bytes_out"], len(expected) + len(b"a1 CAPABILITY through gatehouse\n"))

    @staticmethod
    def _read_stdout(p, expected, timeout):
        got = b""
        deadline = time.monotonic() + timeout * h.SLOW
        fd = p.stdout.fileno()
        while len(got) < len(expected):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            got += chunk
        return got


class BackendVerification(L4TestCase):
    def expect_greeting(self, g, s):
        try:
            self.assertEqual(recv_exactly(s, len(GREETING)), GREETING)
        except AssertionError as e:
            refused = [x for x in g.events if x.get("event", "").startswith("backend_")]
            raise AssertionError(f"{e}\nbackend events: {refused}") from None

    def _echo_through(self, echo, server_text, pool_text):
        g = self.gatehouse(listener(pool="p"), server_text, pool_text)
        port = g.port("l4")
        with self.connect(port) as s:
            self.expect_greeting(g, s)
            self.echo_roundtrip(s, b"ping through gatehouse\n")
            name = s.getsockname()
        line = self.access_for(g, name)
        self.assertEqual(line["server"], "mbx01")
        self.assertNotIn("error", line)
        self.assertEqual(echo.connections, 1)
        return g

    def _assert_rejected(self, g, echo, expected_pin=None, presented=None):
        """The client is closed without one byte of the backend, and the
        rejection is logged with what the backend presented."""
        port = g.port("l4")
        with self.connect(port) as s:
            data, closed = read_until_closed(s, 10)
            name = s.getsockname()
        self.assertTrue(closed, "client connection left open after the backend was rejected")
        self.assertEqual(data, b"", "bytes of a rejected backend reached the client")
        self.assertGreaterEqual(echo.connections, 1, "gatehouse never reached the backend to check it")
        ev = g.wait_event("backend_certificate_rejected", server="mbx01")
        self.assertEqual(ev["pool"], "p")
        self.assertTrue(ev.get("reason"), ev)
        if presented is not None:
            self.assertEqual(ev["presented_thumbprint"], presented.thumbprint)
            self.assertIn("mbx01.contoso.test", ev["presented_subject"])
        if expected_pin is not None:
            self.assertEqual(ev["expected_pin"], expected_pin)
        g.wait_event("no_backend", pool="p")
        line = self.access_for(g, name)
        self.assertEqual(line.get("error"), "no server reachable")
        self.assertNotIn("server", line)

    def test_thumbprint_pin(self):
        echo = self.backend(h.EchoBackend(self.mbx01, greeting=GREETING))
        self._echo_through(echo, server("mbx01", echo.address, pin=self.mbx01.thumbprint), pool("p", ["mbx01"]))

    def test_thumbprint_pin_as_exchange_shows_it(self):
        # Get-ExchangeCertificate prints upper case; people paste lower case and colons too.
        echo = self.backend(h.EchoBackend(self.mbx01, greeting=GREETING))
        t = self.mbx01.thumbprint.lower()
        spaced = ":".join(t[i:i + 2] for i in range(0, len(t), 2))
        self._echo_through(echo, server("mbx01", echo.address, pin=spaced), pool("p", ["mbx01"]))

    def test_sha256_pin(self):
        echo = self.backend(h.EchoBackend(self.mbx01, greeting=GREETING))
        self._echo_through(echo, server("mbx01", echo.address, pin=self.mbx01.pin()), pool("p", ["mbx01"]))

    def test_thumbprint_pin_mismatch_closes_client_without_backend_bytes(self):
        echo = self.backend(h.EchoBackend(self.rogue, greeting=GREETING))
        g = self.gatehouse(listener(pool="p"), server("mbx01", echo.address, pin=self.mbx01.thumbprint),
                           pool("p", ["mbx01"]))
        self._assert_rejected(g, echo, expected_pin=self.mbx01.thumbprint, presented=self.rogue)

    def test_sha256_pin_mismatch_closes_client_without_backend_bytes(self):
        echo = self.backend(h.EchoBackend(self.rogue, greeting=GREETING))
        pin = self.mbx01.pin()
        g = self.gatehouse(listener(pool="p"), server("mbx01", echo.address, pin=pin), pool("p", ["mbx01"]))
        self._assert_rejected(g, echo, expected_pin=pin, presented=self.rogue)

    def test_ca_and_server_name(self):
        echo = self.backend(h.EchoBackend(self.mbx01, greeting=GREETING))
        seen_sni = []
        echo.ctx.sni_callback = lambda sslobj, name, ctx: seen_sni.append(name)
        self._echo_through(echo, server("mbx01", echo.address, server_name="mbx01.contoso.test"),
                           pool("p", ["mbx01"], ca=self.mbx01.cert))
        self.assertEqual(seen_sni, ["mbx01.contoso.test"], "SNI sent to the backend must be its server_name")

    def _ca_control_and_rejected(self, echo, bad_server_name):
        """One gatehouse, two listeners to the same backend: "good" with the
        right server_name (the control: CA verification does work), "l4"
        with a wrong one or a CA that does not fit."""
        g = self.gatehouse(listener("good", pool="good"), listener(pool="p"),
                           server("mbx01-good", echo.address, server_name="mbx01.contoso.test"),
                           server("mbx01", echo.address, server_name=bad_server_name),
                           pool("good", ["mbx01-good"], ca=self.mbx01.cert),
                           pool("p", ["mbx01"], ca=self.mbx01.cert))
        with self.connect(g.port("good")) as s:
            self.expect_greeting(g, s)  # control: the right server_name verifies
        return g

    def test_ca_with_wrong_server_name_is_rejected(self):
        echo = self.backend(h.EchoBackend(self.mbx01, greeting=GREETING))
        g = self._ca_control_and_rejected(echo, "mbx09.contoso.test")
        self._assert_rejected(g, echo, presented=self.mbx01)
        ev = g.wait_event("backend_certificate_rejected", server="mbx01")
        self.assertIn("mbx09.contoso.test", ev["reason"])

    def test_ca_that_did_not_issue_the_certificate_is_rejected(self):
        good = self.backend(h.EchoBackend(self.mbx01, greeting=GREETING))
        impostor = self.backend(h.EchoBackend(self.rogue, greeting=GREETING))
        g = self.gatehouse(listener("good", pool="good"), listener(pool="p"),
                           server("mbx01-good", good.address, server_name="mbx01.contoso.test"),
                           server("mbx01", impostor.address, server_name="mbx01.contoso.test"),
                           pool("good", ["mbx01-good"], ca=self.mbx01.cert),
                           pool("p", ["mbx01"], ca=self.mbx01.cert))
        with self.connect(g.port("good")) as s:
            self.expect_greeting(g, s)  # control: the right certificate verifies
        self._assert_rejected(g, impostor, presented=self.rogue)

    def test_pin_sends_server_name_as_sni_and_none_for_an_address(self):
        named = self.backend(h.EchoBackend(self.mbx01, greeting=GREETING))
        bare = self.backend(h.EchoBackend(self.mbx02, greeting=GREETING))
        seen = {"named": [], "bare": []}
        named.ctx.sni_callback = lambda sslobj, name, ctx: seen["named"].append(name)
        bare.ctx.sni_callback = lambda sslobj, name, ctx: seen["bare"].append(name)
        g = self.gatehouse(listener("a", pool="named"), listener("b", pool="bare"),
                           server("mbx01", named.address, pin=self.mbx01.thumbprint, server_name="mbx01.contoso.test"),
                           server("mbx02", bare.address, pin=self.mbx02.thumbprint),
                           pool("named", ["mbx01"]), pool("bare", ["mbx02"]))
        for lst in ("a", "b"):
            with self.connect(g.port(lst)) as s:
                self.assertEqual(recv_exactly(s, len(GREETING)), GREETING)
        self.assertEqual(seen["named"], ["mbx01.contoso.test"])
        self.assertEqual(seen["bare"], [None], "an IP address must not be sent as SNI")

    def test_insecure_pool_accepts_any_certificate(self):
        echo = self.backend(h.EchoBackend(self.rogue, greeting=GREETING))
        self._echo_through(echo, server("mbx01", echo.address), pool("p", ["mbx01"], tls="insecure"))

    def test_plain_pool(self):
        echo = self.backend(h.EchoBackend(None, greeting=GREETING))
        self._echo_through(echo, server("mbx01", echo.address), pool("p", ["mbx01"], tls="plain"))


class Retry(L4TestCase):
    def test_dead_server_is_retried_on_the_live_one(self):
        live = self.backend(h.EchoBackend(self.mbx01, greeting=GREETING))
        dead = f"127.0.0.1:{h.free_port()}"
        g = self.gatehouse(listener(pool="p"), server("mbx-dead", dead), server("mbx-live", live.address),
                           pool("p", ["mbx-dead", "mbx-live"], tls="insecure"))
        port = g.port("l4")
        names = []
        for i in range(8):
            with self.connect(port) as s:
                self.assertEqual(recv_exactly(s, len(GREETING)), GREETING, f"connection {i}")
                self.echo_roundtrip(s, b"attempt %d\n" % i)
                names.append(s.getsockname())
        for name in names:
            line = self.access_for(g, name)
            self.assertEqual(line["server"], "mbx-live")
            self.assertNotIn("error", line)
        ev = g.wait_event("backend_connect_failed", server="mbx-dead")
        self.assertEqual(ev["pool"], "p")
        self.assertEqual(ev["address"], dead)
        self.assertFalse([e for e in g.events if e.get("event") == "no_backend"])

    def test_rejected_certificate_is_retried_on_another_server(self):
        good = self.backend(h.EchoBackend(self.mbx02, greeting=GREETING))
        impostor = self.backend(h.EchoBackend(self.rogue, greeting=GREETING))
        g = self.gatehouse(listener(pool="p"),
                           server("mbx01", impostor.address, pin=self.mbx01.thumbprint),
                           server("mbx02", good.address, pin=self.mbx02.thumbprint),
                           pool("p", ["mbx01", "mbx02"]))
        port = g.port("l4")
        for i in range(4):
            with self.connect(port) as s:
                self.assertEqual(recv_exactly(s, len(GREETING)), GREETING, f"connection {i}")
                self.echo_roundtrip(s, b"x")
                name = s.getsockname()
            self.assertEqual(self.access_for(g, name)["server"], "mbx02")
        g.wait_event("backend_certificate_rejected", server="mbx01")

    def test_silent_server_times_out_and_is_retried(self):
        # Accepts TCP (the kernel does, from the backlog) but never answers the ClientHello.
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        self.addCleanup(silent.close)
        silent_address = "127.0.0.1:%d" % silent.getsockname()[1]
        live = self.backend(h.EchoBackend(self.mbx01, greeting=GREETING))
        g = self.gatehouse(listener(pool="p"),
                           server("mbx-silent", silent_address), server("mbx-live", live.address),
                           pool("p", ["mbx-silent", "mbx-live"], tls="insecure") + 'connect_timeout = "1s"\n')
        port = g.port("l4")
        for i in range(2):  # round robin: one of the two starts with the silent server
            started = time.monotonic()
            with self.connect(port) as s:
                self.assertEqual(recv_exactly(s, len(GREETING), timeout=8), GREETING, f"connection {i}")
                name = s.getsockname()
            self.assertLess(time.monotonic() - started, 4 * h.SLOW)
            self.assertEqual(self.access_for(g, name)["server"], "mbx-live")
        ev = g.wait_event("backend_tls_failed", server="mbx-silent")
        self.assertEqual(ev["pool"], "p")

    def test_pool_of_dead_servers_closes_client_after_one_retry(self):
        dead = [f"127.0.0.1:{h.free_port()}" for _ in range(3)]
        g = self.gatehouse(listener(pool="p"), *[server(f"dead{i}", a) for i, a in enumerate(dead)],
                           pool("p", ["dead0", "dead1", "dead2"], tls="insecure"))
        port = g.port("l4")
        with self.connect(port) as s:
            data, closed = read_until_closed(s, 10)
            name = s.getsockname()
        self.assertTrue(closed)
        self.assertEqual(data, b"")
        g.wait_event("no_backend", pool="p")
        line = self.access_for(g, name)
        self.assertEqual(line["error"], "no server reachable")
        failed = [e for e in g.events if e.get("event") == "backend_connect_failed"]
        self.assertEqual(len(failed), 2, f"one try and exactly one retry on another server: {failed}")
        self.assertNotEqual(failed[0]["server"], failed[1]["server"])


class Routing(L4TestCase):
    def test_routes_by_sni_with_listener_pool_as_fallback(self):
        backends = {n: self.backend(h.HttpsBackend(n, self.mbx01)) for n in ("mail", "autodiscover", "wild", "fallback")}
        sections = [listener(pool="fallback"),
                    route("l4", [MAIL], "mail"),
                    route("l4", ["autodiscover.contoso.test"], "autodiscover"),
                    route("l4", ["*.eas.contoso.test"], "wild")]
        for n, b in backends.items():
            sections.append(server(n, b.address, pin=self.mbx01.thumbprint))
            sections.append(pool(n, [n]))
        g = self.gatehouse(*sections)
        port = g.port("l4")
        cases = [(MAIL, "mail"), ("autodiscover.contoso.test", "autodiscover"),
                 ("other.contoso.test", "fallback")]
        for sni, expected in cases:
            with self.subTest(sni=sni):
                rc, code, body, err = self.curl(port, name=sni, path="/x")
                self.assertEqual(rc, 0, err)
                self.assertEqual((code, body), ("200", f"{expected} GET /x\n"))
                line = g.wait_access(sni=sni)
                self.assertEqual((line["pool"], line["server"]), (expected, expected))
        # The front certificate does not cover a.eas.contoso.test; the route still matches the SNI.
        with self.subTest(sni="a.eas.contoso.test"):
            rc, code, body, err = self.curl(port, name="a.eas.contoso.test", path="/x", extra=("-k",))
            self.assertEqual(rc, 0, err)
            self.assertEqual(body, "wild GET /x\n")
        with self.subTest(sni="MAIL.Contoso.TEST"):
            # Python and curl lower-case the name; s_client sends it as typed.
            p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                                "MAIL.Contoso.TEST", "-quiet"],  # -quiet waits for the server's end
                               input=b"GET /case HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                               capture_output=True, timeout=20 * h.SLOW)
            self.assertIn(b"mail GET /case", p.stdout, p.stderr.decode(errors="replace"))
        with self.subTest(sni=None):
            with self.connect(port, sni=None) as s:
                s.sendall(b"GET /nosni HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data, closed = read_until_closed(s, 10)
            self.assertTrue(data.startswith(b"HTTP/1.1 200"), data)
            self.assertIn(b"fallback GET /nosni", data)

    def test_unmatched_sni_without_listener_pool_is_closed(self):
        web = self.backend(h.HttpsBackend("mail", self.mbx01))
        g = self.gatehouse(listener(pool=""), route("l4", [MAIL], "mail"),
                           server("mail", web.address, pin=self.mbx01.thumbprint), pool("mail", ["mail"]))
        port = g.port("l4")
        with self.connect(port, sni="other.contoso.test") as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data, closed = read_until_closed(s, 10)
            name = s.getsockname()
        self.assertTrue(closed)
        self.assertEqual(data, b"")
        g.wait_event("no_route", sni="other.contoso.test")
        self.assertEqual(self.access_for(g, name)["error"], "no route")
        self.assertEqual(web.handshakes, [])
        rc, code, body, err = self.curl(port)
        self.assertEqual((rc, code, body), (0, "200", "mail GET /owa/\n"), err)


class Streams(L4TestCase):
    def test_half_close_reply_after_client_eof(self):
        backend = self.backend(CollectThenReplyBackend(self.mbx01))
        g = self.gatehouse(listener(pool="p"), server("mbx01", backend.address, pin=self.mbx01.thumbprint),
                           pool("p", ["mbx01"]))
        port = g.port("l4")
        payload = os.urandom(200 * 1024)
        c = HalfCloseClient(port, cafile=self.front.cert)
        try:
            c.send(payload)
            c.close_write()
            data, how = c.read_all(15)
        finally:
            c.close()
        self.assertEqual(backend.eofs, ["eof"])
        expected = b"GOT %d:" % len(payload) + payload[::-1]
        self.assertEqual(len(data), len(expected), f"ended by {how}")
        self.assertTrue(data == expected, "reply corrupted")
        self.assertEqual(how, "close_notify", "the backend's orderly end must reach the client as close_notify")
        line = g.wait_access(pool="p")
        self.assertEqual(line["bytes_in"], len(payload))
        self.assertEqual(line["bytes_out"], len(expected))

    def test_half_close_from_backend_side(self):
        backend = self.backend(SpeakFirstThenListenBackend(b"* BYE but still listening\r\n"))
        g = self.gatehouse(listener(pool="p"), server("mbx01", backend.address), pool("p", ["mbx01"], tls="plain"))
        port = g.port("l4")
        c = HalfCloseClient(port, cafile=self.front.cert)
        try:
            data, how = c.read_all(10)
            self.assertEqual(data, b"* BYE but still listening\r\n")
            self.assertEqual(how, "close_notify", "the backend's FIN must reach the client as close_notify")
            # The client may still talk: its direction is open end to end.
            late = os.urandom(100 * 1024)
            c.send(late)
            c.close_write()
            self.assertTrue(backend.done.wait(10 * h.SLOW), "the backend never saw the client's EOF")
        finally:
            c.close()
        got, ended = backend.received[0]
        self.assertEqual(ended, "eof")
        self.assertEqual(len(got), len(late))
        self.assertTrue(got == late, "bytes sent after the backend's half-close were corrupted")
        line = g.wait_access(pool="p")
        self.assertEqual((line["bytes_in"], line["bytes_out"]), (len(late), len(b"* BYE but still listening\r\n")))

    def test_half_close_with_echo_backend(self):
        echo = self.backend(h.EchoBackend(self.mbx01))
        g = self.gatehouse(listener(pool="p"), server("mbx01", echo.address, pin=self.mbx01.thumbprint),
                           pool("p", ["mbx01"]))
        port = g.port("l4")
        payload = os.urandom(1024 * 1024)
        c = HalfCloseClient(port, cafile=self.front.cert)
        try:
            c.send(payload)
            c.close_write()
            data, how = c.read_all(20)
        finally:
            c.close()
        self.assertEqual(len(data), len(payload), f"ended by {how}")
        self.assertTrue(data == payload, "echo corrupted")
        self.assertEqual(how, "close_notify")

    def test_proxy_protocol_header_towards_backend(self):
        echo = self.backend(h.EchoBackend(None))  # plain: echoes the PROXY header back to us
        g = self.gatehouse(listener("v1", pool="p", extra='proxy_protocol = "v1"'),
                           listener("v2", pool="p", extra='proxy_protocol = "v2"'),
                           server("mbx01", echo.address), pool("p", ["mbx01"], tls="plain"))
        for version in ("v1", "v2"):
            port = g.port(version)
            with self.subTest(version=version), self.connect(port) as s:
                cip, cport = s.getsockname()
                if version == "v1":
                    header = b"PROXY TCP4 127.0.0.1 127.0.0.1 %d %d\r\n" % (cport, port)
                else:
                    # PP2_TYPE_SSL: over TLS (0x01), no client certificate (verify 1), TLS version.
                    version = b"\x21" + struct.pack("!H", 7) + b"TLSv1.3"
                    ssl_tlv = b"\x20" + struct.pack("!H", 5 + len(version)) + b"\x01" + struct.pack("!I", 1) + version
                    header = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", 12 + len(ssl_tlv))
                              + socket.inet_aton("127.0.0.1") * 2 + struct.pack("!HH", cport, port) + ssl_tlv)
                s.sendall(b"payload")
                self.assertEqual(recv_exactly(s, len(header) + 7), header + b"payload")

    def test_client_resumption_is_logged(self):
        echo = self.backend(h.EchoBackend(self.mbx01))
        g = self.gatehouse(listener(pool="p"), server("mbx01", echo.address, pin=self.mbx01.thumbprint),
                           pool("p", ["mbx01"]))
        port = g.port("l4")
        ctx = h.client_context(self.front.cert)
        session = None
        names = []
        for i in range(2):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10 * h.SLOW)
            with ctx.wrap_socket(raw, server_hostname=MAIL, session=session) as s:
                self.echo_roundtrip(s, b"ticket please\n")  # TLS 1.3 tickets come after the handshake
                self.assertEqual(s.session_reused, i == 1)
                session = s.session
                names.append(s.getsockname())
        self.assertEqual([self.access_for(g, n)["resumed"] for n in names], [False, True])

    def test_backend_sessions_resume(self):
        web = self.backend(h.HttpsBackend("mbx01", self.mbx01))
        g = self.gatehouse(listener(pool="owa"), server("mbx01", web.address, pin=self.mbx01.thumbprint),
                           pool("owa", ["mbx01"]), workers=1)
        port = g.port("l4")
        for i in range(4):
            rc, code, body, err = self.curl(port)
            self.assertEqual((rc, code), (0, "200"), err)
            wait_count(g, g.access, lambda o: o.get("pool") == "owa", i + 1)
        lines = g.access[:4]
        self.assertEqual([l["backend_resumed"] for l in lines], [False, True, True, True])
        self.assertEqual(web.handshakes, [False, True, True, True], "the backend must see resumed handshakes")


class Timeouts(L4TestCase):
    def _echo_gatehouse(self, extra):
        echo = self.backend(h.EchoBackend(self.mbx01))
        g = self.gatehouse(listener(pool="p", extra=extra),
                           server("mbx01", echo.address, pin=self.mbx01.thumbprint), pool("p", ["mbx01"]))
        return g, echo

    def test_handshake_timeout_closes_stalled_clients(self):
        g, echo = self._echo_gatehouse('handshake_timeout = "1s"')
        port = g.port("l4")
        hello = client_hello()
        half = socket.create_connection(("127.0.0.1", port))
        silent = socket.create_connection(("127.0.0.1", port))
        trickle = socket.create_connection(("127.0.0.1", port))
        socks = [half, silent, trickle]
        try:
            started = time.monotonic()
            half.sendall(hello[: len(hello) // 2])
            # One byte every 200 ms: the deadline is for the whole handshake, not per read.
            trickle_closed_at = None
            for i in range(len(hello)):
                if time.monotonic() - started > 6 * h.SLOW:
                    break
                try:
                    trickle.sendall(hello[i:i + 1])
                except OSError:
                    trickle_closed_at = time.monotonic() - started
                    break
                r, _, _ = select.select([trickle], [], [], 0.2)
                if r:
                    try:
                        if trickle.recv(1) == b"":
                            trickle_closed_at = time.monotonic() - started
                            break
                    except OSError:
                        trickle_closed_at = time.monotonic() - started
                        break
            self.assertIsNotNone(trickle_closed_at, "a client trickling its ClientHello was never closed")
            self.assertLess(trickle_closed_at, 4 * h.SLOW)
            for s, what in ((half, "half a ClientHello"), (silent, "no bytes")):
                data, closed = read_until_closed(s, 5)
                elapsed = time.monotonic() - started
                self.assertTrue(closed, f"client that sent {what} still open after {elapsed:.1f}s")
                self.assertLess(elapsed, 6 * h.SLOW)
            wait_count(g, g.events, lambda o: o.get("event") == "handshake_failed", 3)
            clients = {e["client"] for e in g.events if e.get("event") == "handshake_failed"}
            for s in socks:
                self.assertIn("%s:%d" % s.getsockname(), clients)
        finally:
            for s in socks:
                s.close()
        self.assertEqual(echo.connections, 0)
        with self.connect(port) as s:
            self.echo_roundtrip(s, b"still serving\n")

    def test_slow_server_is_bounded_by_the_pools_connect_timeout_not_the_clients_handshake_timeout(self):
        # The listener's handshake_timeout is for clients; a server that takes
        # 1.5 s to start its TLS handshake is within the pool's connect_timeout.
        echo = self.backend(h.EchoBackend(self.mbx01, handshake_delay=1.5))
        g = self.gatehouse(listener(pool="p", extra='handshake_timeout = "1s"'),
                           server("mbx01", echo.address, pin=self.mbx01.thumbprint),
                           pool("p", ["mbx01"]) + 'connect_timeout = "8s"\n')
        with self.connect(g.port("l4")) as s:
            self.echo_roundtrip(s, b"slow server, served\n")
        self.assertFalse([e for e in g.events if e.get("event", "").startswith("backend_")], g.events)

    def test_handshake_timeout_does_not_cut_slow_but_complete_handshakes(self):
        # A handshake that finishes in time is not affected by the timeout afterwards.
        g, echo = self._echo_gatehouse('handshake_timeout = "1s"')
        with self.connect(g.port("l4")) as s:
            time.sleep(1.5)
            self.echo_roundtrip(s, b"after the handshake deadline\n")

    def test_plain_http_on_tls_port_is_closed_and_logged(self):
        g, echo = self._echo_gatehouse("")
        port = g.port("l4")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: mail.contoso.test\r\n\r\n")
            data, closed = read_until_closed(s, 5)
            name = s.getsockname()
        self.assertTrue(closed, "garbage on the TLS port left the connection open")
        self.assertFalse(data.startswith(b"HTTP"), data)
        if data:
            self.assertEqual(data[0], 0x15, f"only a TLS alert may come back: {data!r}")
        ev = g.wait_event("handshake_failed", client="%s:%d" % name)
        self.assertEqual(ev["listener"], "l4")
        self.assertTrue(ev["error"])
        self.assertEqual(echo.connections, 0)
        with self.connect(port) as s:
            self.echo_roundtrip(s, b"still serving\n")
        self.assertIsNone(g.proc.poll())

    def test_idle_timeout_closes_idle_connection_but_not_active_one(self):
        g, echo = self._echo_gatehouse('idle_timeout = "1s"')
        port = g.port("l4")
        with self.connect(port) as s:
            # Traffic every 300 ms for 2.5 s, longer than the idle timeout.
            end = time.monotonic() + 2.5
            n = 0
            while True:
                self.echo_roundtrip(s, b"keepalive %d\n" % n)
                idle_from = time.monotonic()
                n += 1
                if idle_from >= end:
                    break
                time.sleep(0.3)
            data, closed = read_until_closed(s, 6)
            elapsed = time.monotonic() - idle_from
            name = s.getsockname()
        self.assertTrue(closed, "idle connection not closed by idle_timeout = 1s")
        self.assertEqual(data, b"")
        self.assertGreater(elapsed, 0.7)
        self.assertLess(elapsed, 4 * h.SLOW)
        line = self.access_for(g, name)
        self.assertEqual(line["server"], "mbx01")
        self.assertEqual(line["bytes_in"], sum(len(b"keepalive %d\n" % i) for i in range(n)))


class RouteAndPoolSettings(L4TestCase):
    """Settings of [[route]] and [[pool]] that apply to l4 listeners too."""

    def _servers(self, n):
        backends = [self.backend(h.EchoBackend(self.mbx01, greeting=b"%d\n" % i)) for i in range(n)]
        return [server(f"mbx0{i}", b.address, pin=self.mbx01.thumbprint) for i, b in enumerate(backends)]

    def _server_for(self, g, port, source):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10 * h.SLOW, source_address=(source, 0))
        with h.client_context(self.front.cert).wrap_socket(raw, server_hostname=MAIL) as s:
            recv_exactly(s, 2)
            name = s.getsockname()
        return self.access_for(g, name)["server"]

    def test_maglev_pool_keeps_a_client_address_on_one_server_across_workers(self):
        g = self.gatehouse(listener(pool="p"), *self._servers(3),
                           pool("p", ["mbx00", "mbx01", "mbx02"], tls="insecure")
                           + 'balance = "maglev"\nhash_key = "source_ip"\n', workers=2)
        port = g.port("l4")
        chosen = {}
        for rnd in range(3):
            for n in range(2, 18):
                source = f"127.0.0.{n}"
                got = self._server_for(g, port, source)
                self.assertEqual(chosen.setdefault(source, got), got, f"{source} moved to another server")
        self.assertGreater(len(set(chosen.values())), 1, f"all addresses on one server: {chosen}")

    def test_route_affinity_source_ip(self):
        g = self.gatehouse(listener(pool=""), *self._servers(2), pool("p", ["mbx00", "mbx01"], tls="insecure"),
                           route("l4", [MAIL], "p") + 'affinity = "source_ip"\n')
        port = g.port("l4")
        for source in ("127.0.0.2", "127.0.0.3"):
            got = {self._server_for(g, port, source) for _ in range(4)}
            self.assertEqual(len(got), 1, f"route affinity = source_ip, yet {source} went to {sorted(got)}")

    def test_route_idle_timeout_overrides_listener(self):
        echo = self.backend(h.EchoBackend(self.mbx01))
        g = self.gatehouse(listener(pool="p", extra='idle_timeout = "60s"'),
                           route("l4", ["autodiscover.contoso.test"], "p") + 'idle_timeout = "1s"\n',
                           server("mbx01", echo.address, pin=self.mbx01.thumbprint), pool("p", ["mbx01"]))
        port = g.port("l4")
        with self.connect(port, sni="autodiscover.contoso.test") as short, self.connect(port) as long:
            self.echo_roundtrip(short, b"x")
            self.echo_roundtrip(long, b"y")
            data, closed = read_until_closed(short, 4)
            self.assertTrue(closed, "route idle_timeout = 1s did not close an idle connection of that route")
            self.echo_roundtrip(long, b"listener idle_timeout = 60s still applies here")


class Lifecycle(L4TestCase):
    def _two_backends(self):
        a = self.backend(h.EchoBackend(self.mbx01, greeting=b"A\n"))
        b = self.backend(h.EchoBackend(self.mbx02, greeting=b"B\n"))
        servers = [server("mbx01", a.address, pin=self.mbx01.thumbprint),
                   server("mbx02", b.address, pin=self.mbx02.thumbprint),
                   pool("pa", ["mbx01"]), pool("pb", ["mbx02"])]
        return a, b, servers

    def _config_text(self, *sections, drain_timeout="5s"):
        return h.config(h.server_section(1, drain_timeout=drain_timeout),
                        h.certificate_section("front", self.front), *sections)

    def _greeting(self, port):
        s = self.connect(port)
        return s, recv_exactly(s, 2)

    def test_reload_good_config_switches_new_connections_keeps_old(self):
        a, b, servers = self._two_backends()
        g = self.gatehouse(listener(pool="pa"), *servers)
        port = g.port("l4")
        old, greeting = self._greeting(port)
        try:
            self.assertEqual(greeting, b"A\n")
            self.echo_roundtrip(old, b"before reload\n")
            with open(g.config_path, "w") as f:
                f.write(self._config_text(listener(pool="pb"), *servers))
            g.signal(signal.SIGHUP)
            g.wait_event("reloaded")
            self.assertEqual(g.port("l4"), port)
            for _ in range(3):
                s, greeting = self._greeting(port)
                with s:
                    self.assertEqual(greeting, b"B\n", "a new connection after the reload must use the new pool")
                    self.echo_roundtrip(s, b"new\n")
            # The connection accepted before the reload still works, on its backend.
            self.echo_roundtrip(old, b"after reload\n")
            name = old.getsockname()
        finally:
            old.close()
        line = self.access_for(g, name)
        self.assertEqual((line["pool"], line["server"]), ("pa", "mbx01"))
        self.assertEqual(line["bytes_in"], len(b"before reload\nafter reload\n"))

    def test_reload_bad_config_keeps_old_one(self):
        a, b, servers = self._two_backends()
        g = self.gatehouse(listener(pool="pa"), *servers)
        port = g.port("l4")
        bad_texts = [
            "[server\nworkers = ",  # TOML syntax error
            self._config_text(listener(pool="nope"), *servers),  # a pool that does not exist
        ]
        for i, text in enumerate(bad_texts):
            with self.subTest(bad=i):
                with open(g.config_path, "w") as f:
                    f.write(text)
                g.signal(signal.SIGHUP)
                wait_count(g, g.events, lambda o: o.get("event") == "reload_failed", i + 1)
                self.assertIsNone(g.proc.poll(), "gatehouse exited on a bad reload")
                s, greeting = self._greeting(port)
                with s:
                    self.assertEqual(greeting, b"A\n", "the old config must keep serving")
        ev = [e for e in g.events if e.get("event") == "reload_failed"][-1]
        self.assertIn("nope", ev.get("errors", ""))
        self.assertFalse([e for e in g.events if e.get("event") == "reloaded"])
        # And a later good config still loads.
        with open(g.config_path, "w") as f:
            f.write(self._config_text(listener(pool="pb"), *servers))
        g.signal(signal.SIGHUP)
        g.wait_event("reloaded")
        s, greeting = self._greeting(port)
        with s:
            self.assertEqual(greeting, b"B\n")

    def test_reload_closes_old_connections_after_drain_timeout(self):
        a, b, servers = self._two_backends()
        text = self._config_text(listener(pool="pa"), *servers, drain_timeout="1s")
        g = self.start(text)
        port = g.port("l4")
        old, greeting = self._greeting(port)
        with old:
            with open(g.config_path, "w") as f:
                f.write(self._config_text(listener(pool="pb"), *servers, drain_timeout="1s"))
            g.signal(signal.SIGHUP)
            g.wait_event("reloaded")
            reloaded_at = time.monotonic()
            self.echo_roundtrip(old, b"still here\n")
            data, closed = read_until_closed(old, 6)
            elapsed = time.monotonic() - reloaded_at
        self.assertTrue(closed, "an old-generation connection outlived drain_timeout")
        self.assertLess(elapsed, 5 * h.SLOW)
        self.assertIsNone(g.proc.poll())

    def test_max_connections(self):
        a, b, servers = self._two_backends()
        g = self.gatehouse(listener(pool="pa"), *servers, server_extra="max_connections = 2")
        port = g.port("l4")
        first, _ = self._greeting(port)
        second, _ = self._greeting(port)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as third:
                data, closed = read_until_closed(third, 5)
                self.assertTrue(closed, "a connection over max_connections was kept")
                self.assertEqual(data, b"")
            g.wait_event("max_connections", listener="l4")
            self.echo_roundtrip(first, b"the first two keep working\n")
        finally:
            first.close()
            second.close()
        wait_count(g, g.access, lambda o: o.get("pool") == "pa", 2)
        s, greeting = self._greeting(port)
        with s:
            self.assertEqual(greeting, b"A\n")

    def test_sigterm_drains_established_connection_then_exits_0(self):
        a, b, servers = self._two_backends()
        g = self.gatehouse(listener(pool="pa"), *servers, drain_timeout="30s")
        port = g.port("l4")
        s, greeting = self._greeting(port)
        with s:
            self.echo_roundtrip(s, b"before\n")
            g.signal(signal.SIGTERM)
            g.wait_event("draining")
            self.echo_roundtrip(s, b"during drain\n")
            # New connections are refused once the listeners are closed.
            deadline = time.monotonic() + 3 * h.SLOW
            refused = False
            while time.monotonic() < deadline and not refused:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                    time.sleep(0.05)
                except ConnectionRefusedError:
                    refused = True
            self.assertTrue(refused, "new connections still accepted while draining")
            time.sleep(0.5)
            self.echo_roundtrip(s, b"still during drain\n")
            self.assertIsNone(g.proc.poll(), "exited while a connection was still open")
            name = s.getsockname()
        try:
            rc = g.proc.wait(10 * h.SLOW)
        except subprocess.TimeoutExpired:
            self.fail("gatehouse did not exit after the last connection closed")
        self.assertEqual(rc, 0)
        g.wait_event("stopped")
        line = self.access_for(g, name)
        self.assertEqual(line["bytes_in"], len(b"before\nduring drain\nstill during drain\n"))

    def test_sigterm_with_lingering_connection_exits_after_drain_timeout(self):
        a, b, servers = self._two_backends()
        g = self.gatehouse(listener(pool="pa"), *servers, drain_timeout="1s")
        port = g.port("l4")
        s, greeting = self._greeting(port)
        with s:
            g.signal(signal.SIGTERM)
            started = time.monotonic()
            g.wait_event("draining")
            try:
                rc = g.proc.wait(8 * h.SLOW)
            except subprocess.TimeoutExpired:
                self.fail("gatehouse still running long after drain_timeout = 1s")
            elapsed = time.monotonic() - started
            self.assertEqual(rc, 0)
            self.assertGreater(elapsed, 0.8, "exited before drain_timeout with a connection open")
            data, closed = read_until_closed(s, 3)
            self.assertTrue(closed)
        g.wait_event("drain_timeout")
        g.wait_event("stopped")


if __name__ == "__main__":
    unittest.main()
