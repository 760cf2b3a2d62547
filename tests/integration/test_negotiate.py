"""Negotiate/Kerberos through l7 with a REAL stack, so the connection-binding
rule is not tuned to the NTLM test backend: an MIT Kerberos realm made by the
test on loopback (kerberos_realm.py), Apache httpd with mod_auth_gssapi and
`GssapiConnectionBound On` + `GssapiSignalPersistentAuth On` as the HTTPS
backend (it authenticates per TCP connection like IIS: after one
`Authorization: Negotiate` a connection IS the user, and it says
`Persistent-Auth: true`, so curl sends no header on later requests), real
`kinit` + `curl --negotiate` clients over HTTP/1.1 and HTTP/2, raw clients that
send a real SPNEGO token once and then ride on their connection, and anonymous
clients in between, beside and after them. If Gatehouse ever pooled or lent a
backend connection that authenticated, an anonymous client would get
`user=alice@CONTOSO.TEST` from Apache.

The realm and Apache are made once for the module (about half a second);
each test runs its own Gatehouse in front."""

import concurrent.futures
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time
import unittest

import harness as h
import kerberos_realm as kr
import ntlm_backend as nb

MAIL = "mail.contoso.test"
REALM = "CONTOSO.TEST"
SPN = f"HTTP/{MAIL}"
PASSWORDS = {"alice": "Alice-Krb5-Pw-7x3Q-secret", "bob": "Bob-Krb5-Pw-4k9W-secret"}
PASSWORD_MARK = "-secret"  # in every password: must never appear in a log
ALICE = f"alice@{REALM}"
BOB = f"bob@{REALM}"
WHOAMI = re.compile(rb"user=(\S*) port=(\d+) auth=(\S*)")

_fixture = None


class _Fixture:
    """The realm (KDC), the two users' credential caches and Apache."""

    def __init__(self):
        self.dir = h.TempDir()
        self.stops = [self.dir.cleanup]
        try:
            self.realm = kr.Realm(self.dir.path, REALM, "contoso.test", timeout=20 * h.SLOW)
            self.stops.append(self.realm.stop)
            for user, pw in PASSWORDS.items():
                self.realm.add_user(user, pw)
            keytab = self.realm.add_service(SPN, self.dir.file("http.keytab"))
            self.env = {user: self.realm.kinit(f"{user}@{REALM}", pw, self.dir.file(f"ccache-{user}"))
                        for user, pw in PASSWORDS.items()}
            # Anonymous curl: no credentials cache at all.
            self.env["anonymous"] = self.realm.client_env(self.dir.file("ccache-empty"))
            self.cert = h.Cert(self.dir.path, "mbx01", "mbx01", [], key="rsa2048")
            self.apache = kr.ApacheNegotiateBackend(self.dir.path, self.cert, keytab, self.realm, "mbx01",
                                                    timeout=20 * h.SLOW)
            self.stops.append(self.apache.stop)
        except BaseException:
            self.stop()
            raise

    def stop(self):
        for fn in reversed(self.stops):
            try:
                fn()
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass


def setUpModule():
    global _fixture
    missing = kr.missing_pieces()
    if missing:
        raise unittest.SkipTest("Negotiate tests need " + ", ".join(missing) +
                                f" (Debian: apt-get install {kr.DEBIAN_PACKAGES}; .ci/setup installs them)")
    if not os.path.exists(h.GATEHOUSE):
        return  # GatehouseTestCase.setUp fails each test with the reason
    _fixture = _Fixture()


def tearDownModule():
    global _fixture
    if _fixture is not None:
        _fixture.stop()
        _fixture = None


class RawClient(nb.RawClient):
    """ntlm_backend's raw HTTP/1.1 client, reading chunked bodies too (Apache's
    CGI answers are chunked)."""

    def response(self):
        return self._response()

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.buf += data

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _response(self):
        try:
            while b"\r\n\r\n" not in self.buf:
                self._fill()
        except ConnectionError:
            return None, {}, b""
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        if "chunked" in ",".join(headers.get("transfer-encoding", [])).lower():
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                body += self._take(size)
                self._take(2)
        else:
            body = self._take(int(headers.get("content-length", ["0"])[0]))
        return status, headers, body

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def whoami(body):
    """(user, backend port) from the CGI's answer, or None."""
    m = WHOAMI.search(body)
    return (m.group(1).decode(), int(m.group(2))) if m else None


class NegotiateTest(h.GatehouseTestCase):
    workers = 1

    def setUp(self):
        super().setUp()
        self.assertIsNotNone(_fixture, "the Kerberos realm and Apache were not set up")
        self.fx = _fixture
        self.apache_lines_before = len(self.fx.apache.access_lines())
        self.tokens = []  # every Negotiate token a raw client sent: never logged either

    def start_proxy(self):
        text = h.config(
            h.server_section(workers=self.workers),
            h.certificate_section("front", h.Cert(self.dir.path, "front", MAIL, [MAIL])),
            '[[listener]]\nname = "web"\nbind = "127.0.0.1:0"\nmode = "l7"\n',
            '[[route]]\nlistener = "web"\npaths = ["/cgi-bin", "/open"]\npool = "web"\n',
            f'[[server]]\nname = "mbx01"\naddress = "{self.fx.apache.address}"\npin = "{self.fx.cert.thumbprint}"\n',
            '[[pool]]\nname = "web"\nservers = ["mbx01"]\n',
        )
        self.g = self.start(text)
        self.port = self.g.port("web")
        return self.g

    def url(self, path):
        return f"https://{MAIL}:{self.port}{path}"

    def curl(self, who, urls, http="--http1.1", negotiate=True):
        """curl as `who` (alice, bob or anonymous) fetching `urls` on one
        connection; returns [(status, http_version, body)] per URL."""
        args = ["curl", "-sS", "-k", "--resolve", f"{MAIL}:{self.port}:127.0.0.1", http,
                "--max-time", str(30 * h.SLOW), "-w", "\n@@@ %{http_code} %{http_version} @@@\n"]
        if negotiate:
            args += ["--negotiate", "-u", ":"]
        p = subprocess.run(args + list(urls), capture_output=True, text=True, timeout=60 * h.SLOW,
                           env=self.fx.env[who])
        self.assertEqual(p.returncode, 0, (who, p.stdout, p.stderr))
        parts = re.split(r"\n@@@ (\d+) (\S+) @@@\n", p.stdout)
        results = [(int(parts[i + 1]), parts[i + 2], parts[i].encode()) for i in range(0, len(parts) - 1, 3)]
        self.assertEqual(len(results), len(urls), p.stdout)
        return results

    def token(self, user):
        t = kr.negotiate_token(self.fx.env[user], f"HTTP@{MAIL}", timeout=20 * h.SLOW)
        self.tokens.append(t)
        return t

    def login(self, user, path):
        """A raw client that sent a real SPNEGO token once; returns (client, backend port)."""
        c = RawClient(self.port)
        status, headers, body = c.request(path, "Negotiate " + self.token(user))
        self.assertEqual(status, 200, body)
        who = whoami(body)
        self.assertEqual(who[0], f"{user}@{REALM}", body)
        self.assertIn("true", ",".join(headers.get("persistent-auth", [])).lower(), headers)
        return c, who[1]

    def assert_anonymous(self, results, what="anonymous"):
        for status, body in results:
            self.assertEqual(status, 401, (what, body))
            self.assertNotIn(b"user=", body, what)
            self.assertNotIn(b"alice", body, what)
            self.assertNotIn(b"bob", body, what)

    def anonymous_raw(self, path, requests=3):
        c = RawClient(self.port)
        try:
            return [c.request(f"{path}/{i}")[::2] for i in range(requests)]
        finally:
            c.close()

    def anonymous_curl(self, path, http="--http1.1", requests=2):
        return [(code, body) for code, _, body in
                self.curl("anonymous", [self.url(f"{path}/{i}") for i in range(requests)], http=http, negotiate=False)]

    def assert_user_answers(self, results, user, http_version="1.1"):
        ports = set()
        for code, version, body in results:
            self.assertEqual(code, 200, (user, body))
            self.assertEqual(version, http_version, (user, results))
            who = whoami(body)
            self.assertIsNotNone(who, body)
            self.assertEqual(who[0], f"{user}@{REALM}", (user, results))
            ports.add(who[1])
        # curl with several URLs kept its one connection, and Gatehouse its one
        # backend connection for it.
        self.assertEqual(len(ports), 1, (user, results))
        return ports.pop()

    def assert_backend_connections_never_change_hands(self):
        """Apache's own log: on one backend connection (Gatehouse's source port),
        no request is answered as a user other than the first one it saw."""
        lines = self.fx.apache.access_lines()[self.apache_lines_before:]
        users = {}
        for line in lines:
            port, user = line.split(" ")[:2]
            if user == "-":
                self.assertNotIn(port, users, f"anonymous request on {users.get(port)}'s connection: {line}")
                continue
            self.assertEqual(users.setdefault(port, user), user, f"backend connection changed user: {line}")
        return users

    def assert_access_log_binds(self):
        """Gatehouse's own view: every answer as a user was on a bound backend
        connection and names Negotiate; and here every /cgi-bin answer binds
        (a user's, or a 401 offering Negotiate), so no backend connection may
        ever be reused by another client connection than the one it served
        first."""
        time.sleep(0.3)
        seen = set()
        for a in list(self.g.access):
            if not str(a.get("path", "")).startswith("/cgi-bin/"):
                continue
            if a.get("status") == 200:
                self.assertIs(a.get("bound"), True, a)
                self.assertEqual((a.get("auth") or {}).get("scheme"), "Negotiate", a)
            if a.get("backend_reused"):
                self.assertIn(a["client"], seen, f"a backend connection changed client connections: {a}")
            seen.add(a.get("client"))

    def assert_no_secret_logged(self):
        time.sleep(0.3)
        text = "\n".join(self.g.raw_stderr) + "\n" + "\n".join(json.dumps(a) for a in self.g.access)
        self.assertNotIn(PASSWORD_MARK, text)
        for pw in PASSWORDS.values():
            self.assertNotIn(pw, text)
        for t in self.tokens:
            self.assertNotIn(t, text)
            self.assertNotIn(t[:40], text)

    # --- The cases ------------------------------------------------------------

    def run_interleaved(self, http):
        self.start_proxy()
        # A raw user: one real token, then plain requests ride on the connection.
        u, port = self.login("alice", "/cgi-bin/whoami/raw-login")
        # An anonymous keep-alive client and a plain curl meanwhile: 401, never alice.
        a = RawClient(self.port)
        self.assert_anonymous([a.request("/cgi-bin/whoami/anon-a1")[::2] for _ in range(3)])
        self.assert_anonymous(self.anonymous_curl("/cgi-bin/whoami/anon-curl", http=http))
        status, _, body = u.request("/cgi-bin/whoami/raw-again")
        self.assertEqual((status, whoami(body)), (200, (ALICE, port)), body)
        self.assert_anonymous([a.request("/cgi-bin/whoami/anon-a2")[::2] for _ in range(2)])

        # Everything at once: curl --negotiate users, the raw user, anonymous
        # raw keep-alive clients and plain curls.
        stop = threading.Event()

        def raw_user_loop():
            answers = []
            deadline = time.monotonic() + 60 * h.SLOW
            while not stop.is_set() and time.monotonic() < deadline:
                status, _, body = u.request("/cgi-bin/whoami/raw-loop")
                answers.append((status, whoami(body)))
                time.sleep(0.01)
            return answers

        def anon(i):
            if i % 3 == 0:
                return self.anonymous_curl(f"/cgi-bin/whoami/anon-par-curl{i}", http=http)
            return self.anonymous_raw(f"/cgi-bin/whoami/anon-par-raw{i}", requests=2 + i % 3)

        def user(name, i):
            return name, self.curl(name, [self.url(f"/cgi-bin/whoami/{name}-{i}-{k}") for k in range(4)], http=http)

        with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
            loop = pool.submit(raw_user_loop)
            try:
                users = [pool.submit(user, name, i) for i in range(3) for name in ("alice", "bob")]
                anons = [pool.submit(anon, i) for i in range(30)]
                for f in users:
                    name, results = f.result()
                    self.assert_user_answers(results, name, "1.1")
                for f in anons:
                    self.assert_anonymous(f.result())
            finally:
                stop.set()  # also when an assertion failed: the pool waits for the loop
            answers = loop.result()
        self.assertTrue(answers)
        for status, who in answers:
            self.assertEqual((status, who), (200, (ALICE, port)))

        # The user leaves; anonymous clients right after get nothing of it.
        u.close()
        a.close()
        self.assert_anonymous(self.anonymous_raw("/cgi-bin/whoami/after-raw", 3))
        results = self.curl("alice", [self.url(f"/cgi-bin/whoami/last-{k}") for k in range(3)], http=http)
        self.assert_user_answers(results, "alice", "1.1")
        self.assert_anonymous(self.anonymous_raw("/cgi-bin/whoami/after-curl", 3))
        self.assert_anonymous(self.anonymous_curl("/cgi-bin/whoami/after-curl-anon", http=http))
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            for r in pool.map(lambda i: self.anonymous_raw(f"/cgi-bin/whoami/after-par{i}", 2), range(8)):
                self.assert_anonymous(r)

        users = self.assert_backend_connections_never_change_hands()
        self.assertIn(str(port), users)
        self.assert_access_log_binds()
        self.assert_no_secret_logged()

    def test_user_and_anonymous_clients_interleaved_http1(self):
        self.run_interleaved("--http1.1")

    def test_user_and_anonymous_clients_interleaved_http2(self):
        # Negotiate streams get RST_STREAM HTTP_1_1_REQUIRED; curl retries over
        # HTTP/1.1 (so every user answer says 1.1) and ends up as itself.
        self.run_interleaved("--http2")

    def test_curl_http2_negotiate_retries_over_http1(self):
        self.start_proxy()
        # The unauthenticated path still speaks HTTP/2 (nothing to bind there).
        p = subprocess.run(["curl", "-sS", "-k", "--http2", "--resolve", f"{MAIL}:{self.port}:127.0.0.1",
                            "--max-time", str(30 * h.SLOW), "-o", "/dev/null", "-w", "%{http_version}",
                            self.url("/open/index.txt")], capture_output=True, text=True, timeout=60 * h.SLOW)
        self.assertEqual((p.returncode, p.stdout), (0, "2"), p.stderr)
        results = self.curl("alice", [self.url(f"/cgi-bin/whoami/h2-{k}") for k in range(4)], http="--http2")
        self.assert_user_answers(results, "alice", "1.1")
        self.g.wait_access(path="/cgi-bin/whoami/h2-3")
        h2 = [a for a in self.g.access if a.get("path") == "/cgi-bin/whoami/h2-0" and a.get("status") == 200]
        self.assertEqual(len(h2), 1, self.g.access)
        self.assert_anonymous(self.anonymous_curl("/cgi-bin/whoami/h2-anon", http="--http2"))

    def test_access_log_says_negotiate_and_bound_and_never_the_secret(self):
        self.start_proxy()
        u, _ = self.login("alice", "/cgi-bin/whoami/log-login")
        status, _, body = u.request("/cgi-bin/whoami/log-next")
        self.assertEqual(whoami(body)[0], ALICE, body)
        u.close()
        results = self.curl("bob", [self.url(f"/cgi-bin/whoami/log-curl-{k}") for k in range(3)])
        self.assert_user_answers(results, "bob")
        self.assert_anonymous(self.anonymous_raw("/cgi-bin/whoami/log-anon", 2))
        self.g.wait_access(path="/cgi-bin/whoami/log-anon/1")
        time.sleep(0.3)

        def line(path):
            found = [a for a in self.g.access if a.get("path") == path]
            self.assertEqual(len(found), 1, (path, self.g.access))
            return found[0]

        login = line("/cgi-bin/whoami/log-login")
        self.assertEqual(login["status"], 200)
        self.assertEqual(login["auth"]["scheme"], "Negotiate", login)
        self.assertIs(login["bound"], True, login)
        # A Kerberos AP-REQ names its client only inside the encrypted part:
        # if Gatehouse names a user at all, it must not be a wrong one.
        if "user" in login["auth"]:
            self.assertIn(login["auth"]["user"].lower(), ("alice", ALICE.lower()), login)
        # No Authorization header on this one (the connection is alice's, and
        # Apache said Persistent-Auth): still logged as the connection's Negotiate.
        nxt = line("/cgi-bin/whoami/log-next")
        self.assertEqual(nxt["status"], 200)
        self.assertIs(nxt["bound"], True, nxt)
        self.assertEqual(nxt["auth"]["scheme"], "Negotiate", nxt)
        # curl sends the header on the first request only (Persistent-Auth: true).
        for k in range(3):
            c = line(f"/cgi-bin/whoami/log-curl-{k}")
            self.assertEqual(c["status"], 200)
            self.assertIs(c["bound"], True, c)
            self.assertEqual(c["auth"]["scheme"], "Negotiate", c)
        for k in range(2):
            anon = line(f"/cgi-bin/whoami/log-anon/{k}")
            self.assertEqual(anon["status"], 401)
            self.assertIsNone((anon.get("auth") or {}).get("user"), anon)
        self.assert_access_log_binds()
        self.assert_no_secret_logged()


class NegotiateTwoWorkersTest(NegotiateTest):
    workers = 2


if __name__ == "__main__":
    unittest.main()
