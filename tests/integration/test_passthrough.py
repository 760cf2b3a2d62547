"""mode = "passthrough": TLS routed by the SNI of a ClientHello that Gatehouse
reads but does not terminate. The client must see the backend's own
certificate, however the ClientHello is split into TCP segments and TLS
records, up to 64 KiB; anything that is not a ClientHello, or never
completes, is closed.

Backends are TLS echo servers (Python's ssl, i.e. OpenSSL) with certificates
made by `gatehouse cert new`; clients are openssl s_client and Python's ssl
with memory BIOs, so the test controls every byte on the wire."""

import concurrent.futures
import hashlib
import os
import resource
import socket
import ssl
import struct
import time
import unittest
import urllib.request

import harness as h

ALPHA = "alpha.contoso.test"
BETA = "beta.contoso.test"


def cert_sha256(der):
    return hashlib.sha256(der).hexdigest()


class MemoryClient:
    """A TLS client whose bytes the test writes to the socket itself."""

    def __init__(self, sni, alpn=None):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if alpn:
            ctx.set_alpn_protocols(alpn)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=sni)

    def client_hello(self):
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self.outgoing.read()

    def finish(self, sock, timeout=10):
        """Completes the handshake over `sock`; returns the server's certificate (DER)."""
        sock.settimeout(timeout * h.SLOW)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pending = self.outgoing.read()
                if pending:
                    sock.sendall(pending)
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the handshake")
                self.incoming.write(data)
        pending = self.outgoing.read()
        if pending:
            sock.sendall(pending)
        return self.tls.getpeercert(binary_form=True)

    def exchange(self, sock, payload):
        """Sends `payload` over TLS and reads the echo back."""
        self.tls.write(payload)
        sock.sendall(self.outgoing.read())
        got = b""
        while len(got) < len(payload):
            try:
                got += self.tls.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            data = sock.recv(65536)
            if not data:
                break
            self.incoming.write(data)
        return got


def records(handshake, cuts):
    """Frames one handshake message into TLS records, cut at `cuts`."""
    out = b""
    edges = [0, *cuts, len(handshake)]
    for a, b in zip(edges, edges[1:]):
        out += struct.pack("!BHH", 22, 0x0301, b - a) + handshake[a:b]
    return out


def unframe(wire):
    """The handshake bytes of a client's first flight of records."""
    body = b""
    while wire:
        kind, _, length = struct.unpack("!BHH", wire[:5])
        assert kind == 22, kind
        body += wire[5:5 + length]
        wire = wire[5 + length:]
    return body


class PassthroughTest(h.GatehouseTestCase):
    @classmethod
    def setUpClass(cls):
        cls.certs = h.TempDir()
        cls.alpha = h.Cert(cls.certs.path, "alpha", ALPHA, [ALPHA])
        cls.beta = h.Cert(cls.certs.path, "beta", BETA, [BETA], key="rsa2048")
        cls.other = h.Cert(cls.certs.path, "other", "default.backend.test", ["default.backend.test"])

    @classmethod
    def tearDownClass(cls):
        cls.certs.cleanup()

    def der(self, cert):
        with open(cert.cert) as f:
            return ssl.PEM_cert_to_DER_cert(f.read())

    def start_passthrough(self, default_pool=True, extra=""):
        self.a = self.backend(h.EchoBackend(self.alpha))
        self.b = self.backend(h.EchoBackend(self.beta))
        self.d = self.backend(h.EchoBackend(self.other))
        text = h.config(
            h.server_section(),
            '[[listener]]\nname = "pt"\nbind = "127.0.0.1:0"\nmode = "passthrough"\n'
            + ('pool = "default"\n' if default_pool else "")
            + f'handshake_timeout = "1s"\n{extra}',
            f'[[route]]\nlistener = "pt"\nhosts = ["{ALPHA}"]\npool = "alpha"\n',
            '[[route]]\nlistener = "pt"\nhosts = ["*.wild.contoso.test"]\npool = "beta"\n',
            f'[[server]]\nname = "a1"\naddress = "{self.a.address}"\n',
            f'[[server]]\nname = "b1"\naddress = "{self.b.address}"\n',
            f'[[server]]\nname = "d1"\naddress = "{self.d.address}"\n',
            '[[pool]]\nname = "alpha"\nservers = ["a1"]\ntls = "plain"\n',
            '[[pool]]\nname = "beta"\nservers = ["b1"]\ntls = "plain"\n',
            '[[pool]]\nname = "default"\nservers = ["d1"]\ntls = "plain"\n',
        )
        self.g = self.start(text)
        self.port = self.g.port("pt")

    def connect(self):
        return socket.create_connection(("127.0.0.1", self.port), timeout=10 * h.SLOW)

    def test_openssl_sees_the_backend_certificate_its_sni_routes_to(self):
        self.start_passthrough()
        for sni, cert, pool in [(ALPHA, self.alpha, "alpha"), ("x.wild.contoso.test", self.beta, "beta"),
                                ("unknown.contoso.test", self.other, "default"), (None, self.other, "default")]:
            seen, out = h.served_certificate(self.port, sni)
            self.assertEqual(seen, cert_sha256(self.der(cert)), out)
            self.g.wait_access(mode="passthrough", sni=(sni or ""), pool=pool)
        # Only one label under a wildcard.
        seen, out = h.served_certificate(self.port, "a.b.wild.contoso.test")
        self.assertEqual(seen, cert_sha256(self.der(self.other)), out)

    def test_unrouted_sni_without_a_pool_is_closed(self):
        self.start_passthrough(default_pool=False)
        seen, _ = h.served_certificate(self.port, "nobody.contoso.test")
        self.assertIsNone(seen)
        line = self.g.wait_access(mode="passthrough", sni="nobody.contoso.test")
        self.assertEqual(line["error"], "no route")
        seen, _ = h.served_certificate(self.port, ALPHA)
        self.assertEqual(seen, cert_sha256(self.der(self.alpha)))

    def _handshake_with(self, wire, client, delay_each_byte=False):
        with self.connect() as s:
            if delay_each_byte:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for i in range(len(wire)):
                    s.sendall(wire[i:i + 1])
                    if i % 64 == 0:
                        time.sleep(0.001)
            else:
                s.sendall(wire)
            der = client.finish(s)
            payload = os.urandom(5000)
            self.assertEqual(client.exchange(s, payload), payload)
            return der

    def test_client_hello_one_byte_at_a_time(self):
        self.start_passthrough()
        client = MemoryClient(ALPHA)
        der = self._handshake_with(client.client_hello(), client, delay_each_byte=True)
        self.assertEqual(der, self.der(self.alpha))
        self.g.wait_access(mode="passthrough", sni=ALPHA, server="a1")

    def test_client_hello_split_across_tls_records(self):
        self.start_passthrough()
        for cuts in ([2], [60], [3, 100, 101]):
            client = MemoryClient(ALPHA)
            handshake = unframe(client.client_hello())
            der = self._handshake_with(records(handshake, cuts), client)
            self.assertEqual(der, self.der(self.alpha), cuts)

    def test_client_hello_over_16_kib(self):
        self.start_passthrough()
        # 80 ALPN names of 250 bytes: a ClientHello of about 20 KB, two records.
        alpn = [("p%03d" % i) + "x" * 246 for i in range(80)]
        client = MemoryClient(ALPHA, alpn=alpn)
        wire = client.client_hello()
        self.assertGreater(len(wire), 16 * 1024 + 5)
        der = self._handshake_with(wire, client)
        self.assertEqual(der, self.der(self.alpha))

    def test_garbage_is_closed_and_logged(self):
        self.start_passthrough()
        with self.connect() as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: " + ALPHA.encode() + b"\r\n\r\n")
            self.assertEqual(s.recv(100), b"")
        line = self.g.wait_access(mode="passthrough")
        self.assertIn("not a TLS handshake record", line["error"])
        self.assertNotIn("pool", line)
        self.assertEqual(self.a.connections + self.d.connections, 0)

    def test_stalled_half_client_hello_is_closed_after_the_handshake_timeout(self):
        self.start_passthrough()
        wire = MemoryClient(ALPHA).client_hello()
        with self.connect() as s:
            s.sendall(wire[: len(wire) // 2])
            s.settimeout(15 * h.SLOW)
            self.assertEqual(s.recv(100), b"")  # closed by Gatehouse, not by this timeout
        line = self.g.wait_access(mode="passthrough")
        self.assertIn("handshake_timeout", line["error"])
        self.assertEqual(self.a.connections, 0)

    def test_two_hundred_parallel_sessions_relay_exact_bytes(self):
        self.start_passthrough()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
        names = [ALPHA, "z.wild.contoso.test", "elsewhere.test"]
        expected = {ALPHA: self.der(self.alpha), "z.wild.contoso.test": self.der(self.beta),
                    "elsewhere.test": self.der(self.other)}

        def session(i):
            sni = names[i % 3]
            ctx = h.client_context()
            payload = os.urandom(20000 + i)
            with socket.create_connection(("127.0.0.1", self.port), timeout=60 * h.SLOW) as raw:
                with ctx.wrap_socket(raw, server_hostname=sni) as tls:
                    if tls.getpeercert(binary_form=True) != expected[sni]:
                        return f"{i}: wrong certificate for {sni}"
                    tls.sendall(payload)
                    got = b""
                    while len(got) < len(payload):
                        chunk = tls.recv(65536)
                        if not chunk:
                            break
                        got += chunk
            if hashlib.sha256(got).digest() != hashlib.sha256(payload).digest():
                return f"{i}: {len(got)} of {len(payload)} bytes came back, or changed"
            return None

        with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
            failures = [f for f in pool.map(session, range(200)) if f]
        self.assertEqual(failures, [])
        lines = [a for a in self.g.access if a.get("mode") == "passthrough"]
        deadline = time.monotonic() + 10 * h.SLOW
        while len(lines) < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
            lines = [a for a in self.g.access if a.get("mode") == "passthrough"]
        self.assertEqual(len(lines), 200)
        self.assertFalse([a for a in lines if "error" in a])


class StreamListenersOnStatusTest(h.GatehouseTestCase):
    def test_status_names_each_stream_listener_kind(self):
        certs = h.TempDir()
        self._stops.append(certs.cleanup)
        front = h.Cert(certs.path, "front", "mail.contoso.test", ["mail.contoso.test"])
        echo = self.backend(h.EchoBackend())
        text = h.config(
            h.server_section().replace('admin = ""', 'admin = "127.0.0.1:0"'),
            h.certificate_section("front", front),
            '[[listener]]\nname = "submission"\nbind = "127.0.0.1:0"\nmode = "l4"\nstarttls = "smtp"\npool = "relay"\n',
            '[[listener]]\nname = "pt"\nbind = "127.0.0.1:0"\nmode = "passthrough"\npool = "relay"\n',
            '[[listener]]\nname = "smtp"\nbind = "127.0.0.1:0"\nmode = "tcp"\npool = "relay"\n',
            f'[[server]]\nname = "e1"\naddress = "{echo.address}"\n',
            '[[pool]]\nname = "relay"\nservers = ["e1"]\ntls = "plain"\n',
        )
        g = self.start(text)
        # One connection held open on the tcp listener shows in its count.
        held = socket.create_connection(("127.0.0.1", g.port("smtp")), timeout=10)
        self.addCleanup(held.close)
        held.sendall(b"x")
        self.assertEqual(held.recv(1), b"x")
        base = f"http://127.0.0.1:{g.port('admin')}"
        with urllib.request.urlopen(base + "/status.json", timeout=10) as r:
            doc = __import__("json").loads(r.read())
        listeners = {l["name"]: l for l in doc["listeners"]}
        self.assertEqual((listeners["submission"]["mode"], listeners["submission"]["starttls"]), ("l4", "smtp"))
        self.assertEqual(listeners["submission"]["greeting_name"], "mail.contoso.test")
        self.assertEqual(listeners["submission"]["certificates"], ["front"])
        self.assertEqual((listeners["pt"]["mode"], listeners["pt"]["certificates"]), ("passthrough", []))
        self.assertEqual((listeners["smtp"]["mode"], listeners["smtp"]["pool"]), ("tcp", "relay"))
        self.assertEqual(listeners["smtp"]["open_connections"], 1)
        with urllib.request.urlopen(base + "/status", timeout=10) as r:
            page = r.read().decode()
        self.assertIn("l4 + STARTTLS smtp", page)
        self.assertIn("passthrough", page)


if __name__ == "__main__":
    unittest.main()
