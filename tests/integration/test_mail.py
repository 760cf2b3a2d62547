"""Mail listeners end to end, against real mail servers on loopback: the
test's own Dovecot (IMAP, POP3) and an aiosmtpd SMTP server (mail_backends.py),
with real clients (swaks, curl, openssl s_client, and Python's smtplib,
imaplib and poplib).

An l4 listener with `starttls = "smtp" | "imap" | "pop3"` speaks the
protocol's plaintext opening itself (greeting, EHLO/CAPABILITY/CAPA, refusing
everything else until STARTTLS/STLS), terminates TLS with the certificate
the client's SNI picks, then connects to the pool: with `starttls = true` in
the pool it does the same protocol's STARTTLS with the backend's plain port,
with `starttls = false` it uses the backend's implicit-TLS port. Bytes a
client pipelines after STARTTLS are discarded (CVE-2011-0411 class), and the
backend never sees them. A `tcp` listener relays bytes untouched, so the
client does STARTTLS with the backend itself."""

import base64
import concurrent.futures
import hashlib
import random
import resource
import socket
import ssl
import subprocess
import threading
import time
import unittest
import uuid

import harness as h
import mail_backends as mb

MAIL = "mail.contoso.test"          # first name of the default certificate
OTHER = "smtp.fabrikam.test"        # name of the second certificate
GREETING_NAME = "smtp-gw.contoso.test"
SESSIONS = 200                      # parallel connections of the session tests
TIMEOUT = 20 * h.SLOW               # for every client process and socket


# --- config pieces ---------------------------------------------------------

def listener(name, pool, starttls=None, mode="l4", greeting_name=None, proxy_protocol=None):
    text = f'[[listener]]\nname = "{name}"\nbind = "127.0.0.1:0"\nmode = "{mode}"\npool = "{pool}"\n'
    if starttls is not None:
        text += f'starttls = "{starttls}"\n'
    if greeting_name is not None:
        text += f'greeting_name = "{greeting_name}"\n'
    if proxy_protocol is not None:
        text += f'proxy_protocol = "{proxy_protocol}"\n'
    if mode == "l4":
        text += 'handshake_timeout = "10s"\n'
    return text


def server(name, address, pin=None):
    text = f'[[server]]\nname = "{name}"\naddress = "{address}"\n'
    if pin is not None:
        text += f'pin = "{pin}"\n'
    return text


def pool(name, servers, tls, starttls=None):
    text = f'[[pool]]\nname = "{name}"\nservers = [{", ".join(chr(34) + s + chr(34) for s in servers)}]\ntls = "{tls}"\n'
    if starttls is not None:
        text += f'starttls = {"true" if starttls else "false"}\n'
    return text


# The listeners a test may ask for: (listener text, pool it uses).
LISTENERS = {
    # SMTP submission, STARTTLS to the backend's plain port
    "submission": lambda: listener("submission", "smtp_starttls", "smtp", greeting_name=GREETING_NAME),
    # SMTP, implicit TLS to the backend's TLS port; greeting name by default
    "submission_implicit": lambda: listener("submission_implicit", "smtp_implicit", "smtp"),
    "imap": lambda: listener("imap", "imap_starttls", "imap"),
    "imap_implicit": lambda: listener("imap_implicit", "imap_implicit", "imap"),
    "pop3": lambda: listener("pop3", "pop3_starttls", "pop3"),
    "pop3_implicit": lambda: listener("pop3_implicit", "pop3_implicit", "pop3"),
    "imap_proxy_v2": lambda: listener("imap_proxy_v2", "imap_haproxy", "imap", proxy_protocol="v2"),
    # plain relay: the client and the backend do STARTTLS between themselves
    "smtp25": lambda: listener("smtp25", "relay", mode="tcp"),
}


# --- clients ---------------------------------------------------------------

class LineClient:
    """A plaintext line protocol client that can switch to TLS in place."""

    def __init__(self, port, source=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT,
                                             source_address=(source, 0) if source else None)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed; unterminated data: {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r").decode("latin-1")

    def smtp_reply(self):
        """(code, [lines]) of one SMTP reply, multi-line or not."""
        lines = [self.line()]
        while len(lines[-1]) > 3 and lines[-1][3] == "-":
            lines.append(self.line())
        return int(lines[0][:3]), lines

    def command(self, text):
        self.send(text.encode() + b"\r\n")
        return self.smtp_reply()

    def starttls(self, sni=None):
        if self.buf:
            raise AssertionError(f"plaintext bytes after the STARTTLS answer: {self.buf!r}")
        self.sock = h.client_context().wrap_socket(self.sock, server_hostname=sni)

    def closed(self, timeout=5):
        """True when the peer ends the connection within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (socket.timeout, TimeoutError):
            return False
        except (ConnectionError, ssl.SSLError, OSError):
            return True

    def close(self):
        self.sock.close()


def tool(args, input=None):
    """Runs a client tool; returns CompletedProcess (bytes stdout, text stderr)."""
    p = subprocess.run(args, input=input, capture_output=True, timeout=TIMEOUT)
    p.stderr = p.stderr.decode(errors="replace")
    return p


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def make_message(size=4096, rng=random):
    """(message bytes, Message-ID, body sha256 as the backend computes it)."""
    mid = f"<{uuid.uuid4().hex}@client.contoso.test>"
    raw = bytes(rng.getrandbits(8) for _ in range(size))
    b64 = base64.encodebytes(raw)  # 76-char lines, never starting with "."
    body = b64.replace(b"\n", b"\r\n")
    msg = (f"From: sender@contoso.test\r\nTo: rcpt@contoso.test\r\nSubject: gatehouse mail test\r\n"
           f"Message-ID: {mid}\r\n\r\n").encode() + body
    return msg, mid, mb.body_sha256(msg)


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def parallel(n, fn):
    """Runs fn(i, barrier) in n threads at once; the barrier (n parties) lets
    every session be open at the same time. Returns the results; raises the
    first real failure."""
    raise_nofile(4 * n + 256)
    barrier = threading.Barrier(n, timeout=TIMEOUT)

    def one(i):
        try:
            return fn(i, barrier)
        except threading.BrokenBarrierError:
            raise
        except BaseException:
            barrier.abort()
            raise

    errors, results = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as ex:
        futures = [ex.submit(one, i) for i in range(n)]
        for f in futures:
            try:
                results.append(f.result(timeout=3 * TIMEOUT))
            except threading.BrokenBarrierError as e:
                errors.append(("barrier", e))
            except Exception as e:  # noqa: BLE001 - collected and reported below
                errors.append(("error", e))
    real = [e for kind, e in errors if kind == "error"]
    if real or errors:
        first = real[0] if real else errors[0][1]
        raise AssertionError(f"{len(errors)} of {n} sessions failed ({len(real)} not just waiting for the others); "
                             f"first: {type(first).__name__}: {first}")
    return results


# --- the tests -----------------------------------------------------------------

class MailCase(h.GatehouseTestCase):
    """Starts Dovecot and the SMTP backend for every test, and Gatehouse with
    the listeners the test names."""

    def setUp(self):
        super().setUp()
        self.mail = h.Cert(self.dir.path, "mail", MAIL, sans=[MAIL, "autodiscover.contoso.test"])
        self.other = h.Cert(self.dir.path, "other", OTHER, sans=[OTHER])
        self.backend_cert = h.Cert(self.dir.path, "backend", "mx1.backend.test", sans=["mx1.backend.test"])
        self.pin = self.backend_cert.pin()
        self.dovecot = self.backend(mb.Dovecot(self.dir.path, self.backend_cert))
        self.smtp = self.backend(mb.SmtpBackend(self.dir.path, self.backend_cert))

    def config(self, *names, workers=1):
        d, s, pin = self.dovecot, self.smtp, self.pin
        return h.config(
            h.server_section(workers=workers),
            h.certificate_section("mail", self.mail),
            h.certificate_section("other", self.other),
            *(LISTENERS[n]() for n in names),
            server("mx1", s.address, pin),
            server("mx1_tls", s.tls_address, pin),
            server("mx1_relay", s.address),
            server("dovecot_imap", d.address("imap"), pin),
            server("dovecot_imaps", d.address("imaps"), pin),
            server("dovecot_pop3", d.address("pop3"), pin),
            server("dovecot_pop3s", d.address("pop3s"), pin),
            server("dovecot_haproxy", d.address("imap_haproxy"), pin),
            pool("smtp_starttls", ["mx1"], "verify", starttls=True),
            pool("smtp_implicit", ["mx1_tls"], "verify", starttls=False),
            pool("relay", ["mx1_relay"], "plain"),
            pool("imap_starttls", ["dovecot_imap"], "verify", starttls=True),
            pool("imap_implicit", ["dovecot_imaps"], "verify", starttls=False),
            pool("pop3_starttls", ["dovecot_pop3"], "verify", starttls=True),
            pool("pop3_implicit", ["dovecot_pop3s"], "verify", starttls=False),
            pool("imap_haproxy", ["dovecot_haproxy"], "verify", starttls=True),
        )

    def gatehouse(self, *names, workers=1):
        self.g = self.start(self.config(*names, workers=workers))
        return self.g

    # -- assertions shared by several tests

    def assert_delivered(self, mid, body_hash, port, peer="127.0.0.1"):
        """The SMTP backend accepted exactly one message `mid`, over TLS, on
        `port`, with that body."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            got = [m for m in self.smtp.messages() if m["message_id"] == mid]
            if got or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(len(got), 1, f"messages with Message-ID {mid} at the backend: {self.smtp.messages()}")
        m = got[0]
        self.assertTrue(m["tls"], f"message arrived at the backend without TLS: {m}")
        self.assertEqual(m["port"], port, m)
        self.assertEqual(m["peer"][0], peer, m)
        self.assertEqual(m["body_sha256"], body_hash, m)
        return m

    def assert_backend_starttls(self, peer_port):
        """The backend connection from `peer_port` asked STARTTLS in
        plaintext and sent everything else over TLS."""
        lines = [c for c in self.smtp.commands() if c["peer"][1] == peer_port]
        self.assertTrue(lines, "no commands from that connection")
        plain = [c["line"].upper() for c in lines if not c["tls"]]
        self.assertIn("STARTTLS", plain, lines)
        self.assertTrue(all(p.split()[0] in ("EHLO", "HELO", "STARTTLS") for p in plain),
                        f"commands sent to the backend before TLS: {plain}")
        self.assertTrue(any(c["tls"] and c["line"].upper().startswith("MAIL FROM") for c in lines), lines)

    def login_lines(self, n=1, *needles):
        """Dovecot's lines for logins of the test user that contain every
        needle, once there are `n` of them (or the deadline passed)."""
        def ok(line):
            return "Login: user=<test>" in line and all(x in line for x in needles)
        deadline = time.monotonic() + TIMEOUT
        while True:
            lines = [x for x in self.dovecot.logins() if ok(x)]
            if len(lines) >= n or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def access_line(self, listener, **fields):
        return self.g.wait_access(listener=listener, timeout=15, **fields)


class Peers(MailCase):
    """The mail servers themselves, without Gatehouse, with the same clients:
    when this fails, the other failures are the set-up's, not Gatehouse's."""

    def test_backends_directly(self):
        for flag, port in (("--tls", self.smtp.port), ("--tlsc", self.smtp.tls_port)):
            mid = f"<{uuid.uuid4().hex}@swaks.contoso.test>"
            p = tool(["swaks", flag, "--server", f"127.0.0.1:{port}", "--from", "sender@contoso.test",
                      "--to", "rcpt@contoso.test", "--header", f"Message-Id: {mid}", "--body", "direct",
                      "--timeout", "20"])
            out = p.stdout.decode(errors="replace")
            self.assertEqual(p.returncode, 0, out + p.stderr)
            self.assertIn(self.smtp.greeting, out)
            self.assert_delivered(mid, mb.body_sha256(b"\r\n\r\ndirect"), port)
        d = self.dovecot
        for url in (f"imap://127.0.0.1:{d.ports['imap']}/INBOX;UID=1", f"imaps://127.0.0.1:{d.ports['imaps']}/INBOX;UID=1",
                    f"pop3://127.0.0.1:{d.ports['pop3']}/1", f"pop3s://127.0.0.1:{d.ports['pop3s']}/1"):
            p = tool(["curl", "-sS", "--ssl-reqd", "-k", "--max-time", "20", url, "-u", f"{d.user}:{d.password}"])
            self.assertEqual(p.returncode, 0, f"curl {url}: {p.stderr}\n{d.log()[-3000:]}")
            self.assertEqual(sha256(p.stdout), sha256(mb.MESSAGES[0]), url)
        self.assertEqual(len(self.login_lines(4, ", TLS,")), 4, d.log())


class SmtpFront(MailCase):
    """What Gatehouse itself answers on an SMTP listener before STARTTLS."""

    def test_plaintext_opening(self):
        g = self.gatehouse("submission", "submission_implicit")
        c = LineClient(g.port("submission"))
        try:
            greeting = c.line()
            self.assertTrue(greeting.startswith(f"220 {GREETING_NAME} "), greeting)
            self.assertNotIn("backend", greeting)
            code, lines = c.command("EHLO client.contoso.test")
            self.assertEqual(code, 250, lines)
            self.assertTrue(lines[0][4:].startswith(GREETING_NAME), lines)
            self.assertEqual([x[4:].strip().upper() for x in lines[1:]], ["STARTTLS"],
                             f"EHLO must offer STARTTLS and nothing else: {lines}")
            self.assertEqual(c.command("NOOP")[0], 250)
            self.assertEqual(c.command("RSET")[0], 250)
            code, lines = c.command("MAIL FROM:<early@contoso.test>")
            self.assertEqual(lines, ["530 5.7.0 Must issue a STARTTLS command first"])
            code, lines = c.command("RCPT TO:<early@contoso.test>")
            self.assertEqual(code, 530, lines)
            code, lines = c.command("QUIT")
            self.assertEqual(code, 221, lines)
            self.assertTrue(c.closed(), "the connection stays open after QUIT")
        finally:
            c.close()
        # nothing of it reached the backend
        self.assertFalse([x for x in self.smtp.commands() if "early@" in x["line"]], self.smtp.commands())

        # without greeting_name: the default certificate's first name
        c = LineClient(g.port("submission_implicit"))
        try:
            greeting = c.line()
            self.assertTrue(greeting.startswith(f"220 {MAIL} "), greeting)
            code, lines = c.command("EHLO client.contoso.test")
            self.assertEqual(code, 250, lines)
            self.assertTrue(lines[0][4:].startswith(MAIL), lines)
        finally:
            c.close()

    def test_certificate_by_sni_after_starttls(self):
        """openssl s_client -starttls smtp|imap|pop3 gets the certificate its
        SNI names, and the default one without SNI."""
        g = self.gatehouse("submission", "imap", "pop3")
        for name, proto in (("submission", "smtp"), ("imap", "imap"), ("pop3", "pop3")):
            port = g.port(name)
            for sni, want in ((OTHER, self.other), (MAIL, self.mail), (None, self.mail)):
                with self.subTest(listener=name, sni=sni):
                    got, out = h.served_certificate(port, sni, extra=("-starttls", proto))
                    self.assertEqual(got, want.sha256, f"s_client -starttls {proto} -servername {sni}:\n{out[-3000:]}")


class SmtpDelivery(MailCase):
    """Real SMTP clients deliver through Gatehouse to aiosmtpd over TLS."""

    def _swaks(self, port, sni=MAIL):
        """swaks --tls through `port`; returns (swaks output, Message-ID, body sha256)."""
        mid = f"<{uuid.uuid4().hex}@swaks.contoso.test>"
        body = uuid.uuid4().hex + uuid.uuid4().hex
        p = tool(["swaks", "--tls", "--tls-sni", sni, "--server", f"127.0.0.1:{port}",
                  "--from", "sender@contoso.test", "--to", "rcpt@contoso.test",
                  "--header", f"Message-Id: {mid}", "--body", body, "--timeout", "20"])
        out = p.stdout.decode(errors="replace")
        self.assertEqual(p.returncode, 0, out + p.stderr)
        return out, mid, mb.body_sha256(b"\r\n\r\n" + body.encode())

    def _curl(self, port):
        msg, mid, body_hash = make_message(8192)
        path = self.dir.file(f"msg-{uuid.uuid4().hex}.eml")
        with open(path, "wb") as f:
            f.write(msg)
        p = tool(["curl", "-sS", "--ssl-reqd", "-k", "--max-time", "20", f"smtp://127.0.0.1:{port}",
                  "--mail-from", "sender@contoso.test", "--mail-rcpt", "rcpt@contoso.test", "-T", path])
        self.assertEqual(p.returncode, 0, p.stderr)
        return mid, body_hash

    def test_swaks_and_curl_through_starttls_to_backend_starttls(self):
        g = self.gatehouse("submission")
        port = g.port("submission")
        out, mid, body_hash = self._swaks(port)
        self.assertIn(f"<-  220 {GREETING_NAME}", out)
        self.assertIn("TLS started", out)
        m = self.assert_delivered(mid, body_hash, self.smtp.port)
        self.assert_backend_starttls(m["peer"][1])
        mid, body_hash = self._curl(port)
        m = self.assert_delivered(mid, body_hash, self.smtp.port)
        self.assert_backend_starttls(m["peer"][1])
        line = self.access_line("submission")
        self.assertEqual((line.get("mode"), line.get("protocol"), line.get("starttls"), line.get("pool"),
                          line.get("server")), ("l4", "smtp", True, "smtp_starttls", "mx1"), line)

    def test_swaks_and_curl_through_starttls_to_backend_implicit_tls(self):
        g = self.gatehouse("submission_implicit")
        port = g.port("submission_implicit")
        out, mid, body_hash = self._swaks(port, sni=OTHER)
        self.assertIn(f"<-  220 {MAIL}", out)
        self.assert_delivered(mid, body_hash, self.smtp.tls_port)
        mid, body_hash = self._curl(port)
        self.assert_delivered(mid, body_hash, self.smtp.tls_port)
        # the implicit-TLS port never sees STARTTLS
        self.assertFalse([c for c in self.smtp.commands() if "STARTTLS" in c["line"].upper()])
        line = self.access_line("submission_implicit")
        self.assertEqual((line.get("mode"), line.get("protocol"), line.get("starttls"), line.get("pool"),
                          line.get("server")), ("l4", "smtp", True, "smtp_implicit", "mx1_tls"), line)

    def test_commands_pipelined_after_starttls_are_discarded(self):
        """STARTTLS and MAIL FROM in one segment: the MAIL FROM is dropped,
        never answered and never relayed; the session after the handshake
        is clean and delivers; Gatehouse says how many bytes it dropped."""
        g = self.gatehouse("submission")
        c = LineClient(g.port("submission"))
        try:
            self.assertEqual(c.smtp_reply()[0], 220)
            self.assertEqual(c.command("EHLO client.contoso.test")[0], 250)
            injected = b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n"
            c.send(injected)
            code, lines = c.smtp_reply()
            self.assertEqual(code, 220, lines)
            c.starttls(MAIL)
            code, lines = c.command("EHLO client.contoso.test")
            self.assertEqual(code, 250, lines)
            self.assertEqual(c.command("MAIL FROM:<good@contoso.test>")[0], 250)
            self.assertEqual(c.command("RCPT TO:<rcpt@contoso.test>")[0], 250)
            self.assertEqual(c.command("DATA")[0], 354)
            msg, mid, body_hash = make_message(1024)
            c.send(msg + b"\r\n.\r\n")
            code, lines = c.smtp_reply()
            self.assertEqual(code, 250, lines)
            self.assertEqual(c.command("QUIT")[0], 221)
        finally:
            c.close()
        self.assert_delivered(mid, body_hash, self.smtp.port)
        commands = self.smtp.commands()
        self.assertFalse([x for x in commands if "evil@x" in x["line"]],
                         f"the backend got the command pipelined after STARTTLS: {commands}")
        mails = [x["line"] for x in commands if x["line"].upper().startswith("MAIL FROM")]
        self.assertEqual(mails, ["MAIL FROM:<good@contoso.test>"], commands)
        ev = g.wait_event("starttls_pipelined", listener="submission", protocol="smtp")
        self.assertTrue(0 < ev.get("bytes", 0) <= len(b"MAIL FROM:<evil@x>\r\n"), ev)
        self.assertIn("client", ev)


class ImapPop3(MailCase):
    """IMAP and POP3 through Gatehouse to Dovecot."""

    def test_imap_plaintext_opening(self):
        g = self.gatehouse("imap")
        c = LineClient(g.port("imap"))
        try:
            greeting = c.line()
            self.assertTrue(greeting.startswith("* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED]"), greeting)
            self.assertNotIn("Dovecot", greeting)
            c.send(b"a LOGIN test Secret-pw-1\r\n")
            answer = c.line()
            self.assertTrue(answer.startswith("a BAD"), answer)
            c.send(b"b CAPABILITY\r\n")
            cap = c.line()
            self.assertTrue(cap.startswith("* CAPABILITY"), cap)
            self.assertIn("STARTTLS", cap.split())
            self.assertIn("LOGINDISABLED", cap.split())
            self.assertTrue(c.line().startswith("b OK"))
            c.send(b"c STARTTLS\r\n")
            self.assertTrue(c.line().startswith("c OK"))
            c.starttls(MAIL)
            # after TLS the session is Dovecot's
            c.send(b"d LOGIN test Secret-pw-1\r\n")
            while True:
                line = c.line()
                if line.startswith("d "):
                    break
            self.assertTrue(line.startswith("d OK"), line)
            c.send(b"e LOGOUT\r\n")
        finally:
            c.close()
        self.assertEqual(len(self.login_lines(1, ", TLS,")), 1, self.dovecot.log())

    def test_pop3_plaintext_opening(self):
        g = self.gatehouse("pop3")
        c = LineClient(g.port("pop3"))
        try:
            greeting = c.line()
            self.assertTrue(greeting.startswith("+OK"), greeting)
            self.assertNotIn("Dovecot", greeting)
            c.send(b"CAPA\r\n")
            self.assertTrue(c.line().startswith("+OK"))
            caps = []
            while True:
                line = c.line()
                if line == ".":
                    break
                caps.append(line.upper())
            self.assertIn("STLS", caps)
            self.assertNotIn("USER", caps)
            c.send(b"USER test\r\n")
            self.assertTrue(c.line().startswith("-ERR"))
            c.send(b"STLS\r\n")
            self.assertTrue(c.line().startswith("+OK"))
            c.starttls(MAIL)
            c.send(b"USER test\r\n")
            self.assertTrue(c.line().startswith("+OK"))
            c.send(b"PASS Secret-pw-1\r\n")
            self.assertTrue(c.line().startswith("+OK"))
            c.send(b"QUIT\r\n")
        finally:
            c.close()
        self.assertEqual(len(self.login_lines(1, ", TLS,")), 1, self.dovecot.log())

    def test_commands_pipelined_after_starttls_are_discarded(self):
        """IMAP `a STARTTLS` + `b CAPABILITY` and POP3 `STLS` + `PASS x` in
        one segment: the second command never reaches Dovecot (its answer
        would come first after the handshake) and Gatehouse logs the drop."""
        g = self.gatehouse("imap", "pop3")
        c = LineClient(g.port("imap"))
        try:
            self.assertTrue(c.line().startswith("* OK"))
            c.send(b"a STARTTLS\r\nb CAPABILITY\r\n")
            self.assertTrue(c.line().startswith("a OK"))
            c.starttls(MAIL)
            c.send(b"c LOGIN test Secret-pw-1\r\n")
            first = c.line()
            self.assertFalse(first.startswith("* CAPABILITY") or first.startswith("b "),
                             f"the pipelined CAPABILITY was answered after TLS: {first}")
            line = first
            while not line.startswith("c "):
                self.assertFalse(line.startswith("b "), line)
                line = c.line()
            self.assertTrue(line.startswith("c OK"), line)
        finally:
            c.close()
        ev = g.wait_event("starttls_pipelined", listener="imap", protocol="imap")
        self.assertTrue(0 < ev.get("bytes", 0) <= len(b"b CAPABILITY\r\n"), ev)

        c = LineClient(g.port("pop3"))
        try:
            self.assertTrue(c.line().startswith("+OK"))
            c.send(b"STLS\r\nPASS evil\r\n")
            self.assertTrue(c.line().startswith("+OK"))
            c.starttls(MAIL)
            c.send(b"USER test\r\n")
            answer = c.line()
            self.assertTrue(answer.startswith("+OK"), f"the pipelined PASS was answered after TLS: {answer}")
            c.send(b"PASS Secret-pw-1\r\n")
            self.assertTrue(c.line().startswith("+OK"))
            c.send(b"QUIT\r\n")
        finally:
            c.close()
        ev = g.wait_event("starttls_pipelined", listener="pop3", protocol="pop3")
        self.assertTrue(0 < ev.get("bytes", 0) <= len(b"PASS evil\r\n"), ev)

    def _curl(self, url, *extra):
        d = self.dovecot
        p = tool(["curl", "-sS", "--ssl-reqd", "-k", "--max-time", "20", *extra, url, "-u", f"{d.user}:{d.password}"])
        self.assertEqual(p.returncode, 0, f"curl {url}: {p.stderr}\n{self.dovecot.log()[-3000:]}")
        return p.stdout

    def test_imap_curl_lists_and_fetches(self):
        g = self.gatehouse("imap", "imap_implicit")
        for name, pool_name, srv in (("imap", "imap_starttls", "dovecot_imap"),
                                     ("imap_implicit", "imap_implicit", "dovecot_imaps")):
            with self.subTest(listener=name):
                port = g.port(name)
                listing = self._curl(f"imap://127.0.0.1:{port}/")
                self.assertIn(b"INBOX", listing)
                message = self._curl(f"imap://127.0.0.1:{port}/INBOX;UID=1")
                self.assertEqual(sha256(message), sha256(mb.MESSAGES[0]))
                line = self.access_line(name)
                self.assertEqual((line.get("mode"), line.get("protocol"), line.get("starttls"), line.get("pool"),
                                  line.get("server")), ("l4", "imap", True, pool_name, srv), line)
        logins = self.login_lines(4)
        self.assertEqual(len(logins), 4, self.dovecot.log())
        for x in logins:
            self.assertIn(", TLS,", x, "Dovecot saw a login without TLS")

    def test_pop3_curl_lists_and_retrieves(self):
        g = self.gatehouse("pop3", "pop3_implicit")
        for name, pool_name, srv in (("pop3", "pop3_starttls", "dovecot_pop3"),
                                     ("pop3_implicit", "pop3_implicit", "dovecot_pop3s")):
            with self.subTest(listener=name):
                port = g.port(name)
                listing = self._curl(f"pop3://127.0.0.1:{port}/")
                self.assertEqual(listing.decode().split("\r\n")[:2],
                                 [f"1 {len(mb.MESSAGES[0])}", f"2 {len(mb.MESSAGES[1])}"], listing)
                message = self._curl(f"pop3://127.0.0.1:{port}/1")
                self.assertEqual(sha256(message), sha256(mb.MESSAGES[0]))
                line = self.access_line(name)
                self.assertEqual((line.get("mode"), line.get("protocol"), line.get("starttls"), line.get("pool"),
                                  line.get("server")), ("l4", "pop3", True, pool_name, srv), line)
        logins = self.login_lines(4)
        self.assertEqual(len(logins), 4, self.dovecot.log())
        for x in logins:
            self.assertIn(", TLS,", x, "Dovecot saw a login without TLS")

    def test_proxy_protocol_v2_to_dovecot(self):
        """Dovecot (haproxy = yes) logs the client's real address, here
        127.0.0.2, carried by the PROXY v2 header Gatehouse sends."""
        g = self.gatehouse("imap_proxy_v2")
        port = g.port("imap_proxy_v2")
        listing = self._curl(f"imap://127.0.0.1:{port}/", "--interface", "127.0.0.2")
        self.assertIn(b"INBOX", listing)
        logins = self.login_lines(1)
        self.assertEqual(len(logins), 1, self.dovecot.log())
        self.assertIn("rip=127.0.0.2,", logins[0])
        self.assertIn(", TLS,", logins[0])
        line = self.access_line("imap_proxy_v2")
        self.assertEqual((line.get("protocol"), line.get("starttls")), ("imap", True), line)


class TcpRelay(MailCase):
    """A tcp listener relays bytes: the client sees the backend's greeting and
    certificate, the STARTTLS is the backend's."""

    def test_swaks_does_starttls_with_the_backend(self):
        g = self.gatehouse("smtp25")
        port = g.port("smtp25")
        peer_cert = self.dir.file("peer.pem")
        mid = f"<{uuid.uuid4().hex}@swaks.contoso.test>"
        body = uuid.uuid4().hex
        p = tool(["swaks", "--tls", "--server", f"127.0.0.1:{port}", "--from", "sender@contoso.test",
                  "--to", "rcpt@contoso.test", "--header", f"Message-Id: {mid}", "--body", body,
                  "--tls-get-peer-cert", peer_cert, "--timeout", "20"])
        out = p.stdout.decode(errors="replace")
        self.assertEqual(p.returncode, 0, out + p.stderr)
        self.assertIn(f"<-  {self.smtp.greeting}", out)
        with open(peer_cert) as f:
            pem = f.read()
        self.assertEqual(sha256(ssl.PEM_cert_to_DER_cert(pem)), self.backend_cert.sha256)
        self.assert_delivered(mid, mb.body_sha256(b"\r\n\r\n" + body.encode()), self.smtp.port)
        got, out = h.served_certificate(port, MAIL, extra=("-starttls", "smtp"))
        self.assertEqual(got, self.backend_cert.sha256, out[-2000:])
        line = self.access_line("smtp25")
        self.assertEqual((line.get("mode"), line.get("pool"), line.get("server")), ("tcp", "relay", "mx1_relay"), line)


class Sessions(MailCase):
    """SESSIONS connections at once on each kind of mail listener, each a
    real protocol session whose payload is checked end to end."""

    def _smtp_sessions(self, port, listener_name, backend_port):
        import smtplib
        rng = random.Random(1234)
        messages = [make_message(rng.randrange(1024, 16384), rng) for _ in range(SESSIONS)]

        def one(i, barrier):
            msg, mid, _ = messages[i]
            with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as s:
                s.ehlo("client.contoso.test")
                s.starttls(context=h.client_context())
                s.ehlo("client.contoso.test")
                barrier.wait()
                s.sendmail("sender@contoso.test", ["rcpt@contoso.test"], msg)
            return mid

        parallel(SESSIONS, one)
        got = {m["message_id"]: m for m in self.smtp.wait_messages(SESSIONS, TIMEOUT)}
        for msg, mid, body_hash in messages:
            self.assertIn(mid, got)
            self.assertEqual(got[mid]["body_sha256"], body_hash)
            self.assertTrue(got[mid]["tls"])
            self.assertEqual(got[mid]["port"], backend_port)
        self.assertEqual(len(self.smtp.messages()), SESSIONS)
        h_wait_count(self.g, lambda o: o.get("listener") == listener_name, SESSIONS)

    def test_smtp_starttls_sessions(self):
        g = self.gatehouse("submission", workers=2)
        self._smtp_sessions(g.port("submission"), "submission", self.smtp.port)
        lines = [o for o in g.access if o.get("listener") == "submission"]
        self.assertTrue(all(o.get("protocol") == "smtp" and o.get("starttls") is True for o in lines), lines[:3])

    def test_tcp_relay_sessions(self):
        g = self.gatehouse("smtp25", workers=2)
        self._smtp_sessions(g.port("smtp25"), "smtp25", self.smtp.port)
        lines = [o for o in g.access if o.get("listener") == "smtp25"]
        self.assertTrue(all(o.get("mode") == "tcp" for o in lines), lines[:3])

    def test_imap_starttls_sessions(self):
        import imaplib
        g = self.gatehouse("imap", workers=2)
        port = g.port("imap")
        want = sha256(mb.MESSAGES[0])
        d = self.dovecot

        def one(i, barrier):
            m = imaplib.IMAP4("127.0.0.1", port, timeout=TIMEOUT)
            try:
                m.starttls(ssl_context=h.client_context())
                barrier.wait()
                m.login(d.user, d.password)
                typ, _ = m.select("INBOX", readonly=True)
                assert typ == "OK", typ
                typ, data = m.fetch("1", "(BODY.PEEK[])")
                assert typ == "OK", (typ, data)
                got = sha256(data[0][1])
                assert got == want, f"session {i}: fetched message differs ({len(data[0][1])} bytes)"
                m.logout()
            finally:
                try:
                    m.shutdown()
                except OSError:
                    pass
            return got

        parallel(SESSIONS, one)
        h_wait_count(g, lambda o: o.get("listener") == "imap", SESSIONS)
        lines = [o for o in g.access if o.get("listener") == "imap"]
        self.assertTrue(all(o.get("protocol") == "imap" and o.get("starttls") is True for o in lines), lines[:3])
        self.assertEqual(len(self.login_lines(SESSIONS, ", TLS,")), SESSIONS, "Dovecot's TLS logins")

    def test_pop3_starttls_sessions(self):
        import poplib
        g = self.gatehouse("pop3", workers=2)
        port = g.port("pop3")
        want = sha256(mb.MESSAGES[0])
        d = self.dovecot

        def one(i, barrier):
            p = poplib.POP3("127.0.0.1", port, timeout=TIMEOUT)
            try:
                p.stls(context=h.client_context())
                barrier.wait()
                p.user(d.user)
                p.pass_(d.password)
                _, lines, _ = p.retr(1)
                got = sha256(b"\r\n".join(lines) + b"\r\n")
                assert got == want, f"session {i}: retrieved message differs"
                p.quit()
            finally:
                p.close()
            return got

        parallel(SESSIONS, one)
        h_wait_count(g, lambda o: o.get("listener") == "pop3", SESSIONS)
        self.assertEqual(len(self.login_lines(SESSIONS, ", TLS,")), SESSIONS, "Dovecot's TLS logins")
        lines = [o for o in g.access if o.get("listener") == "pop3"]
        self.assertTrue(all(o.get("protocol") == "pop3" and o.get("starttls") is True for o in lines), lines[:3])


def h_wait_count(g, predicate, n, timeout=TIMEOUT):
    """Waits until Gatehouse's access log holds `n` lines matching `predicate`."""
    g.wait_for(lambda _: sum(1 for o in list(g.access) if predicate(o)) >= n, [None], timeout,
               what=f"{n} matching access log lines")


if __name__ == "__main__":
    unittest.main()
