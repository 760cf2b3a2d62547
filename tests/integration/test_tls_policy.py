"""TLS policy of listeners: protocol versions and cipher suites ("modern",
"tls13"), session resumption (tickets, shared ticket_keys across instances,
never across certificates), refusal of renegotiation, and surviving a client
that closes first. Every refusal is checked against a control server that
accepts the same client, so a client that cannot even offer the refused
thing does not make the test pass."""

import os
import queue
import socket
import ssl
import subprocess
import threading
import time
import unittest
import warnings

import harness
from harness import Cert, EchoBackend, GatehouseTestCase, certificate_section, config, served_certificate, \
    server_section


def echo_pool(echo):
    return (f'[[server]]\nname = "echo1"\naddress = "{echo.address}"\n'
            '[[pool]]\nname = "echo"\nservers = ["echo1"]\ntls = "plain"\n')


def l4_listener(name, extra=""):
    return f'[[listener]]\nname = "{name}"\nbind = "127.0.0.1:0"\nmode = "l4"\npool = "echo"\n{extra}\n'


def tls_echo(port, ctx, server_hostname="mail.contoso.test", session=None, payload=b"ping"):
    """One connection through an l4 listener to an EchoBackend with Python's
    ssl: sends `payload`, reads it back (which also makes the TLS 1.3 tickets
    arrive), closes. Returns (version, session, session_reused, client address
    as the access log writes it)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10 * harness.SLOW)
    try:
        s = ctx.wrap_socket(raw, server_hostname=server_hostname, session=session)
    except BaseException:
        raw.close()
        raise
    with s:
        client = "%s:%d" % s.getsockname()[:2]
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(len(payload) - len(got))
            if not chunk:
                break
            got += chunk
        if got != payload:
            raise AssertionError(f"echo through gatehouse returned {got!r}, expected {payload!r}")
        return s.version(), s.session, s.session_reused, client


def control_server(cert, minimum=None, ciphers=None, allow_client_renegotiation=False):
    """A Python (OpenSSL 3) TLS echo server that accepts what Gatehouse must
    refuse: the control that proves a client can offer it at all."""
    echo = EchoBackend(cert)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if minimum is not None:
            echo.ctx.minimum_version = minimum
        if ciphers is not None:
            echo.ctx.set_ciphers(ciphers)
    if allow_client_renegotiation:
        # OpenSSL 3 servers refuse client-initiated renegotiation unless
        # SSL_OP_ALLOW_CLIENT_RENEGOTIATION (1 << 8) is set.
        echo.ctx.options &= ~ssl.OP_NO_RENEGOTIATION
        echo.ctx.options |= 0x100
    return echo


class TlsVersionsAndCiphers(GatehouseTestCase):

    def setUp(self):
        super().setUp()
        self.rsa = Cert(self.dir.path, "rsa", "mail.contoso.test", ["mail.contoso.test"], key="rsa2048")
        self.echo = self.backend(EchoBackend())
        self.gh = self.start(config(
            server_section(),
            certificate_section("rsa", self.rsa),
            l4_listener("modern", 'tls = "modern"'),
            l4_listener("tls13", 'tls = "tls13"'),
            echo_pool(self.echo)))
        self.modern = self.gh.port("modern")
        self.tls13 = self.gh.port("tls13")

    def assertHandshake(self, port, extra, what):
        got, out = served_certificate(port, "mail.contoso.test", extra)
        self.assertEqual(got, self.rsa.sha256, f"{what}: handshake {list(extra)} should succeed:\n{out}")
        return out

    def assertRefused(self, port, extra, what):
        """The client `extra` must not get through Gatehouse (each caller has
        shown with control() that it gets through a permissive server)."""
        got, out = served_certificate(port, "mail.contoso.test", extra)
        self.assertIsNone(got, f"{what}: gatehouse accepted {list(extra)}:\n{out}")
        return out

    def control(self, extra, **server):
        ctl = self.backend(control_server(self.rsa, **server))
        got, out = served_certificate(ctl.port, "mail.contoso.test", extra)
        return got == self.rsa.sha256, out

    def test_modern_accepts_tls12_and_tls13(self):
        ctx = harness.client_context()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        version, _, _, _ = tls_echo(self.modern, ctx)
        self.assertEqual(version, "TLSv1.2")
        ctx = harness.client_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        version, _, _, _ = tls_echo(self.modern, ctx)
        self.assertEqual(version, "TLSv1.3")
        out = self.assertHandshake(self.modern, ("-tls1_2",), "modern")
        self.assertIn("Protocol  : TLSv1.2", out)
        line = self.gh.wait_access(listener="modern", tls_version="TLSv1.2")
        self.assertEqual(line.get("certificate"), "rsa")

    def test_modern_refuses_tls11(self):
        client = ("-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
        ok, out = self.control(client, minimum=ssl.TLSVersion.TLSv1_1, ciphers="DEFAULT:@SECLEVEL=0")
        if not ok:
            self.skipTest("this OpenSSL cannot make a TLS 1.1 handshake even with a server that allows it, so "
                          f"refusing TLS 1.1 cannot be told apart from not offering it:\n{out}")
        self.assertIn("TLSv1.1", out, "control handshake was not TLS 1.1")
        out = self.assertRefused(self.modern, client, "modern")
        # (s_client prints "Protocol : TLSv1.1" for the attempt even when it fails.)
        self.assertIn("alert protocol version", out)
        # The same client with TLS 1.2 gets through: only the version is refused.
        self.assertHandshake(self.modern, ("-tls1_2", "-cipher", "DEFAULT:@SECLEVEL=0"), "modern")

    def test_modern_refuses_static_rsa_key_exchange(self):
        client = ("-tls1_2", "-cipher", "AES128-GCM-SHA256")
        ok, out = self.control(client, ciphers="AES128-GCM-SHA256")
        self.assertTrue(ok, f"control server did not accept {client}:\n{out}")
        self.assertIn("AES128-GCM-SHA256", out)
        self.assertRefused(self.modern, client, "modern")
        # ECDHE with the same AEAD cipher is fine.
        self.assertHandshake(self.modern, ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"), "modern")

    def test_modern_refuses_cbc(self):
        client = ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA:@SECLEVEL=0")
        ok, out = self.control(client, ciphers="ECDHE-RSA-AES128-SHA:@SECLEVEL=0")
        self.assertTrue(ok, f"control server did not accept {client}:\n{out}")
        self.assertRefused(self.modern, client, "modern")
        client = ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA256:@SECLEVEL=0")
        ok, out = self.control(client, ciphers="ECDHE-RSA-AES128-SHA256:@SECLEVEL=0")
        self.assertTrue(ok, f"control server did not accept {client}:\n{out}")
        self.assertRefused(self.modern, client, "modern")

    def test_tls13_policy_refuses_tls12(self):
        self.assertHandshake(self.modern, ("-tls1_2",), "modern (control)")
        out = self.assertRefused(self.tls13, ("-tls1_2",), "tls13")
        self.assertIn("protocol version", out)
        out = self.assertHandshake(self.tls13, ("-tls1_3",), "tls13")
        self.assertIn("TLSv1.3", out)
        ctx = harness.client_context()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with self.assertRaises(ssl.SSLError):
            tls_echo(self.tls13, ctx)


class SessionResumption(GatehouseTestCase):

    def setUp(self):
        super().setUp()
        self.cert = Cert(self.dir.path, "mail", "mail.contoso.test", ["mail.contoso.test"], key="ec256")
        self.echo = self.backend(EchoBackend())

    def gatehouse(self, name, ticket_keys=None):
        extra = f'ticket_keys = "{ticket_keys}"' if ticket_keys else ""
        gh = self.start(config(server_section(workers=2, extra=extra),
                               certificate_section("mail", self.cert),
                               l4_listener("tls"),
                               echo_pool(self.echo)), name=name)
        return gh, gh.port("tls")

    def resumes(self, version):
        gh, port = self.gatehouse("a.toml")
        ctx = harness.client_context()
        ctx.minimum_version = ctx.maximum_version = version
        _, session, reused, first = tls_echo(port, ctx)
        self.assertFalse(reused)
        self.assertIsNotNone(session)
        self.assertTrue(session.has_ticket, "gatehouse issued no session ticket")
        _, _, reused, second = tls_echo(port, ctx, session=session)
        self.assertTrue(reused, "the second connection did not resume the first one's session")
        self.assertFalse(gh.wait_access(client=first)["resumed"], "server says the first connection resumed")
        self.assertTrue(gh.wait_access(client=second)["resumed"], "server does not say the second one resumed")

    def test_resumption_tls13(self):
        self.resumes(ssl.TLSVersion.TLSv1_3)

    def test_resumption_tls12(self):
        self.resumes(ssl.TLSVersion.TLSv1_2)

    def test_no_resumption_under_another_certificate(self):
        # A resumed handshake presents no certificate: a session made under
        # one certificate must not resume when the SNI selects another one.
        other = Cert(self.dir.path, "other", "other.contoso.test", ["other.contoso.test"], key="ec256")
        gh = self.start(config(server_section(), certificate_section("mail", self.cert),
                               certificate_section("other", other), l4_listener("tls"), echo_pool(self.echo)))
        port = gh.port("tls")
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            with self.subTest(version=version.name):
                ctx = harness.client_context()
                ctx.minimum_version = ctx.maximum_version = version
                _, session, _, _ = tls_echo(port, ctx, "mail.contoso.test")
                _, _, reused, client = tls_echo(port, ctx, "other.contoso.test", session=session)
                self.assertFalse(reused, "a session made under certificate mail resumed under other")
                line = gh.wait_access(client=client)
                self.assertEqual(line["certificate"], "other")
                self.assertFalse(line["resumed"])
                # Control: the session itself was still good for its own certificate.
                _, _, reused, _ = tls_echo(port, ctx, "mail.contoso.test", session=session)
                self.assertTrue(reused)

    def test_shared_ticket_keys_across_instances(self):
        shared = self.dir.file("shared.keys")
        with open(shared, "wb") as f:
            f.write(os.urandom(80))
        other = self.dir.file("other.keys")
        with open(other, "wb") as f:
            f.write(os.urandom(80))
        a, port_a = self.gatehouse("a.toml", shared)
        b, port_b = self.gatehouse("b.toml", shared)
        c, port_c = self.gatehouse("c.toml", other)
        self.assertNotEqual(a.proc.pid, b.proc.pid)
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            with self.subTest(version=version.name):
                ctx = harness.client_context()
                ctx.minimum_version = ctx.maximum_version = version
                _, session, reused, _ = tls_echo(port_a, ctx)
                self.assertFalse(reused)
                _, _, reused, on_b = tls_echo(port_b, ctx, session=session)
                self.assertTrue(reused, "a session from instance A did not resume on B with the same ticket_keys")
                self.assertTrue(b.wait_access(client=on_b)["resumed"])
                _, _, reused, on_c = tls_echo(port_c, ctx, session=session)
                self.assertFalse(reused, "a session from instance A resumed on C, which has other ticket keys")
                self.assertFalse(c.wait_access(client=on_c)["resumed"])

    def test_random_ticket_keys_differ_between_instances(self):
        a, port_a = self.gatehouse("a.toml")
        b, port_b = self.gatehouse("b.toml")
        ctx = harness.client_context()
        _, session, _, _ = tls_echo(port_a, ctx)
        _, _, reused, _ = tls_echo(port_a, ctx, session=session)
        self.assertTrue(reused, "control: the session does not even resume on its own instance")
        _, _, reused, on_b = tls_echo(port_b, ctx, session=session)
        self.assertFalse(reused, "two instances without ticket_keys share their random ticket keys")
        self.assertFalse(b.wait_access(client=on_b)["resumed"])


class ClientClosesFirst(GatehouseTestCase):
    """A client that closes its connection while the backend's answer is on
    its way is ordinary (a browser tab closed, a phone losing signal). The
    proxy writes that answer, and then close_notify, to a socket the peer
    has reset: that must cost the connection, never the process."""

    def test_client_close_before_answer_does_not_kill_gatehouse(self):
        cert = Cert(self.dir.path, "mail", "mail.contoso.test", ["mail.contoso.test"], key="ec256")
        echo = self.backend(EchoBackend())
        gh = self.start(config(server_section(), certificate_section("mail", cert), l4_listener("tls"),
                               echo_pool(echo)))
        port = gh.port("tls")
        # TLS 1.2: its tickets arrive inside the handshake, so the client has
        # nothing unread when it closes and sends a FIN (not a RST).
        ctx = harness.client_context()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        for attempt in range(20):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10 * harness.SLOW)
            with ctx.wrap_socket(raw, server_hostname="mail.contoso.test") as s:
                client = "%s:%d" % s.getsockname()[:2]
                s.sendall(b"ping")
            # The connection is over once gatehouse logs it; if gatehouse
            # died instead, wait_access says so with its exit status
            # (-13 is SIGPIPE).
            gh.wait_access(client=client)
            self.assertIsNone(gh.proc.poll(), f"gatehouse exited ({gh.proc.returncode}) after attempt {attempt}")
        version, _, _, _ = tls_echo(port, harness.client_context())
        self.assertEqual(version, "TLSv1.3")


class SClient:
    """An interactive `openssl s_client`: lines written to its stdin are sent
    ("R" alone renegotiates); everything it prints is collected."""

    def __init__(self, port, extra=()):
        self.proc = subprocess.Popen(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "mail.contoso.test",
             *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines = queue.Queue()
        self.output = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text, timeout=5):
        """True when a line containing `text` is printed within `timeout`."""
        deadline = time.monotonic() + timeout * harness.SLOW
        while True:
            if any(text in line for line in self.output):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return False
            if line is None:
                self.lines.put(None)
                return any(text in line for line in self.output)
            self.output.append(line)

    def send(self, line):
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.wait_for("\0", timeout=1)  # drain what is left
        self.proc.stdout.close()
        return "".join(self.output)


class Renegotiation(GatehouseTestCase):

    def renegotiate(self, port):
        """Sends a line, renegotiates, sends another; returns (second line
        echoed after renegotiation, output)."""
        c = SClient(port, ("-tls1_2",))
        try:
            c.send("before-renegotiation")
            self.assertTrue(c.wait_for("before-renegotiation"), "no echo before renegotiation:\n" + "".join(c.output))
            c.send("R")
            c.wait_for("RENEGOTIATING")
            # Give the renegotiation handshake its round trips before the next data.
            c.wait_for("verify return", timeout=2)
            c.send("after-renegotiation")
            echoed = c.wait_for("after-renegotiation", timeout=3)
        finally:
            out = c.close()
        return echoed, out

    def test_client_renegotiation_refused(self):
        cert = Cert(self.dir.path, "rsa", "mail.contoso.test", ["mail.contoso.test"], key="rsa2048")
        ctl = self.backend(control_server(cert, allow_client_renegotiation=True))
        echoed, out = self.renegotiate(ctl.port)
        if not echoed:
            self.skipTest("control: openssl s_client could not renegotiate even with a server that allows it:\n" + out)
        echo = self.backend(EchoBackend())
        gh = self.start(config(server_section(), certificate_section("rsa", cert), l4_listener("tls"),
                               echo_pool(echo)))
        echoed, out = self.renegotiate(gh.port("tls"))
        self.assertIn("RENEGOTIATING", out)
        self.assertFalse(echoed, "gatehouse went on after a client-initiated renegotiation:\n" + out)
        # BoringSSL answers a renegotiation ClientHello with a no_renegotiation alert (100).
        self.assertTrue("no renegotiation" in out or "alert number 100" in out, out)


if __name__ == "__main__":
    unittest.main()
