"""Windows authentication through l7, played by an attacker: a backend that
authenticates NTLM per TCP connection as IIS does (ntlm_backend.py), real
`curl --ntlm` clients over HTTP/1.1 and HTTP/2, raw clients that interleave
their handshakes, and anonymous clients that try to ride on an authenticated
backend connection. A backend connection that carried NTLM/Negotiate belongs
to its client connection: never pooled, never lent, closed with it."""

import concurrent.futures
import re
import signal
import subprocess
import threading
import time
import urllib.request

import harness as h
import ntlm_backend as nb

MAIL = "mail.contoso.test"
USERS = {f"user{i:02d}": f"Pw-{i:02d}-secret-Zq9" for i in range(1, 13)}
PASSWORD_MARK = "-secret-Zq9"  # in every password: must never appear in a log


class WindowsAuthTest(h.GatehouseTestCase):
    workers = 1

    def setUp(self):
        super().setUp()
        self.front = h.Cert(self.dir.path, "front", MAIL, [MAIL])
        self.mbx = h.Cert(self.dir.path, "mbx01", "mbx01", [], key="rsa2048")
        self.mbx2 = h.Cert(self.dir.path, "mbx02", "mbx02", [], key="rsa2048")
        self.b1 = self.backend(nb.NtlmBackend("mbx01", self.mbx, USERS))
        self.b2 = self.backend(nb.NtlmBackend("mbx02", self.mbx2, USERS))

    def start_proxy(self, admin=False, extra_routes=""):
        admin_line = f'admin = "127.0.0.1:{h.free_port()}"' if admin else ""
        text = h.config(
            h.server_section(workers=self.workers).replace('admin = ""', admin_line) if admin
            else h.server_section(workers=self.workers),
            h.certificate_section("front", self.front),
            '[[listener]]\nname = "web"\nbind = "127.0.0.1:0"\nmode = "l7"\n',
            extra_routes,
            '[[route]]\nlistener = "web"\npaths = ["/EWS"]\npool = "ews"\n',
            '[[route]]\nlistener = "web"\npaths = ["/mapi"]\npool = "mapi"\n',
            f'[[server]]\nname = "mbx01"\naddress = "{self.b1.address}"\npin = "{self.mbx.thumbprint}"\n',
            f'[[server]]\nname = "mbx02"\naddress = "{self.b2.address}"\npin = "{self.mbx2.thumbprint}"\n',
            '[[pool]]\nname = "ews"\nservers = ["mbx01", "mbx02"]\n',
            '[[pool]]\nname = "mapi"\nservers = ["mbx02"]\n',
        )
        try:
            self.g = self.start(text)
        except AssertionError as e:
            if not admin or "Address already in use" not in str(e):
                raise
            return self.start_proxy(admin, extra_routes)  # the free port was taken meanwhile: another
        self.port = self.g.port("web")
        if admin:
            self.admin = admin_line.split('"')[1]
        return self.g

    def curl(self, *args, http="--http1.1"):
        base = ["curl", "-sS", "-k", "--resolve", f"{MAIL}:{self.port}:127.0.0.1", http, "--max-time", str(30 * h.SLOW)]
        return subprocess.run(base + list(args), capture_output=True, text=True, timeout=60 * h.SLOW)

    def url(self, path):
        return f"https://{MAIL}:{self.port}{path}"

    def anonymous(self, path="/EWS/anon", requests=1):
        """Statuses and bodies an anonymous raw HTTP/1.1 client gets on one connection."""
        c = nb.RawClient(self.port, MAIL)
        try:
            return [c.request(path)[::2] for _ in range(requests)]
        finally:
            c.close()

    def ntlm_login(self, user, path="/EWS/login"):
        """A raw client that did the whole NTLM handshake; returns (client, body)."""
        c = nb.RawClient(self.port, MAIL)
        status, headers, _ = c.request(path, nb.ntlm_header(nb.type1()))
        self.assertEqual(status, 401)
        challenge = nb.challenge_of(headers)
        self.assertIsNotNone(challenge, headers)
        status, _, body = c.request(path, nb.ntlm_header(nb.type3(challenge, user, nb.DOMAIN, USERS[user])))
        self.assertEqual(status, 200, body)
        return c, body.decode()

    def assert_no_secret_logged(self):
        time.sleep(0.3)
        text = "\n".join(self.g.raw_stderr) + "\n" + "\n".join(str(a) for a in self.g.access)
        self.assertNotIn(PASSWORD_MARK, text)
        for pw in USERS.values():
            self.assertNotIn(pw, text)

    # --- The acceptance cases ----------------------------------------------

    def run_parallel_users(self, http):
        """12 curl --ntlm users, 3 requests each on one connection, while 90
        anonymous requests run beside them: every answer is its own user's,
        and no anonymous request ever gets one."""
        self.start_proxy()
        paths = ["/EWS/exchange.asmx", "/EWS/a", "/EWS/b"]

        def user_run(user):
            p = self.curl("--ntlm", "-u", f"{nb.DOMAIN}\\{user}:{USERS[user]}", *[self.url(x) for x in paths], http=http)
            return user, p

        def anon_run(i):
            if i % 3 == 0:
                p = self.curl("-o", "-", "-w", "\n%{http_code}", self.url("/EWS/anon"), http=http)
                body, _, code = p.stdout.rpartition("\n")
                return [(int(code or 0), body.encode())]
            return self.anonymous("/EWS/anon", requests=1 + i % 2)

        with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
            users = [pool.submit(user_run, u) for u in USERS]
            anons = [pool.submit(anon_run, i) for i in range(90)]
            for f in users:
                user, p = f.result()
                self.assertEqual(p.returncode, 0, p.stderr)
                lines = p.stdout.strip().splitlines()
                self.assertEqual(len(lines), 3, p.stdout)
                for line in lines:
                    self.assertTrue(line.startswith(f"user={nb.DOMAIN}\\{user} "), (user, p.stdout))
            for f in anons:
                for status, body in f.result():
                    self.assertEqual(status, 401, body)
                    self.assertNotIn(b"user=", body)
        self.assert_no_secret_logged()

    def test_parallel_curl_ntlm_users_and_anonymous_http1(self):
        self.run_parallel_users("--http1.1")

    def test_parallel_curl_ntlm_users_and_anonymous_http2(self):
        # HTTP/2 streams get HTTP_1_1_REQUIRED for NTLM; curl retries over
        # HTTP/1.1 and ends authenticated as itself.
        self.run_parallel_users("--http2")

    def test_interleaved_handshakes_both_succeed(self):
        self.start_proxy()
        a = nb.RawClient(self.port, MAIL)
        b = nb.RawClient(self.port, MAIL)
        try:
            sa, ha, _ = a.request("/EWS/x", nb.ntlm_header(nb.type1()))
            sb, hb, _ = b.request("/EWS/x", nb.ntlm_header(nb.type1()))
            self.assertEqual((sa, sb), (401, 401))
            ca, cb = nb.challenge_of(ha), nb.challenge_of(hb)
            self.assertNotEqual(ca, cb)
            sa, _, body_a = a.request("/EWS/x", nb.ntlm_header(nb.type3(ca, "user01", nb.DOMAIN, USERS["user01"])))
            sb, _, body_b = b.request("/EWS/x", nb.ntlm_header(nb.type3(cb, "user02", nb.DOMAIN, USERS["user02"])))
            self.assertEqual((sa, sb), (200, 200), (body_a, body_b))
            self.assertIn(b"user=CONTOSO\\user01 ", body_a)
            self.assertIn(b"user=CONTOSO\\user02 ", body_b)
            # Later requests without a header: still each one's own user.
            for _ in range(3):
                self.assertIn(b"user=CONTOSO\\user02 ", b.request("/EWS/y")[2])
                self.assertIn(b"user=CONTOSO\\user01 ", a.request("/EWS/y")[2])
        finally:
            a.close()
            b.close()

    def test_anonymous_clients_after_an_authenticated_one_leaves(self):
        self.start_proxy()
        c, body = self.ntlm_login("user03")
        self.assertIn("user=CONTOSO\\user03", body)
        c.request("/EWS/more")
        c.close()
        time.sleep(0.2)
        with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
            for result in pool.map(lambda _: self.anonymous("/EWS/after", 2), range(20)):
                for status, body in result:
                    self.assertEqual(status, 401)
                    self.assertNotIn(b"user=", body)

    def test_anonymous_client_meanwhile_and_type3_replayed_elsewhere(self):
        """An attacker with another connection gets nothing from a logged-in
        user's: not by asking anonymously, nor by replaying the user's Type 3."""
        self.start_proxy()
        c, _ = self.ntlm_login("user04")
        for status, body in self.anonymous("/EWS/steal", 3):
            self.assertEqual(status, 401)
            self.assertNotIn(b"user=", body)
        attacker = nb.RawClient(self.port, MAIL)
        try:
            stolen = nb.type3(b"\0" * 8, "user04", nb.DOMAIN, USERS["user04"])
            status, _, body = attacker.request("/EWS/steal", nb.ntlm_header(stolen))
            self.assertEqual(status, 401)
            self.assertNotIn(b"user=", body)
        finally:
            attacker.close()
        self.assertIn(b"user=CONTOSO\\user04 ", c.request("/EWS/still-me")[2])
        c.close()

    def test_bound_connection_stays_on_its_server_across_routes(self):
        """Every later request of a bound client goes on its connection, even
        one routed to another pool; that is logged."""
        self.start_proxy()
        c, body = self.ntlm_login("user05")
        server = re.search(r"server=(\S+)", body).group(1)
        conn = re.search(r"connection=(\d+)", body).group(1)
        for path in ["/EWS/a", "/EWS/b", "/mapi/emsmdb", "/EWS/c"]:
            status, _, answer = c.request(path)
            self.assertEqual(status, 200)
            self.assertIn(f"user=CONTOSO\\user05 server={server} connection={conn} ".encode(), answer)
        c.close()
        self.g.wait_event("bound_route_mismatch", bound_pool="ews", pool="mapi")

    def test_access_log_names_the_user_and_never_the_secret(self):
        self.start_proxy()
        c, _ = self.ntlm_login("user06")
        c.request("/EWS/next")
        c.close()
        p = self.curl("-u", "basicuser:" + USERS["user07"], self.url("/EWS/basic"))
        self.assertEqual(p.returncode, 0)
        self.g.wait_access(path="/EWS/next")
        line = self.g.wait_access(path="/EWS/next")
        self.assertEqual(line["auth"], {"scheme": "NTLM", "user": "CONTOSO\\user06"})
        self.assertIs(line["bound"], True)
        login = [a for a in self.g.access if a.get("path") == "/EWS/login" and a.get("status") == 200]
        self.assertEqual(login[0]["auth"]["user"], "CONTOSO\\user06")
        basic = self.g.wait_access(path="/EWS/basic")
        self.assertEqual(basic["auth"], {"scheme": "Basic", "user": "basicuser"})
        self.assert_no_secret_logged()

    def test_backend_closing_a_bound_connection_closes_the_client(self):
        self.start_proxy()
        # Closed with the response: the client connection ends after it.
        c, _ = self.ntlm_login("user08")
        status, headers, body = c.request("/EWS/close")
        self.assertEqual(status, 200)
        self.assertIn(b"user=CONTOSO\\user08", body)
        self.assertIn("close", ",".join(headers.get("connection", [])).lower())
        self.assertTrue(c.closed())
        c.close()
        # Closed while the client is quiet: its connection ends too, and
        # never falls back to another (anonymous or foreign) connection.
        c, _ = self.ntlm_login("user09")
        status, _, body = c.request("/EWS/idle-close")
        self.assertEqual(status, 200)
        self.assertTrue(c.closed(timeout=5 * h.SLOW))
        c.close()
        self.g.wait_event("bound_backend_closed")

    def test_bound_connection_survives_reload(self):
        self.start_proxy()
        c, _ = self.ntlm_login("user10")
        plain = nb.RawClient(self.port, MAIL)
        self.assertEqual(plain.request("/EWS/anon")[0], 401)  # bound too: offered NTLM
        self.g.signal(signal.SIGHUP)
        self.g.wait_event("reloaded", generation=2)
        time.sleep(0.3)
        status, _, body = c.request("/EWS/after-reload")
        self.assertEqual(status, 200)
        self.assertIn(b"user=CONTOSO\\user10", body)
        c.close()
        plain.close()

    def test_metrics_count_bound_connections(self):
        self.start_proxy(admin=True)

        def bound():
            text = urllib.request.urlopen(f"http://{self.admin}/metrics", timeout=10).read().decode()
            m = re.search(r'^gatehouse_bound_backend_connections\{pool="ews"\} (\d+)$', text, re.M)
            self.assertIsNotNone(m, text)
            return int(m.group(1))

        self.assertEqual(bound(), 0)
        a, _ = self.ntlm_login("user11")
        b, _ = self.ntlm_login("user12")
        self.assertEqual(bound(), 2)
        a.close()
        b.close()
        deadline = time.monotonic() + 5 * h.SLOW
        while bound() != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(bound(), 0)


class WindowsAuthTwoWorkersTest(WindowsAuthTest):
    workers = 2


if __name__ == "__main__":
    import unittest

    unittest.main()


class ExtendedProtectionTest(h.GatehouseTestCase):
    """Windows logins pass Extended Protection only when the Mailbox server
    presents the certificate clients see on Gatehouse's front end."""

    def setUp(self):
        super().setUp()
        self.front = h.Cert(self.dir.path, "front", MAIL, [MAIL], key="rsa2048")
        self.other = h.Cert(self.dir.path, "mbx01", "mbx01", [], key="rsa2048")

    def config(self, mapi_pin, owa_pin, admin="", health=""):
        return h.config(
            h.server_section().replace('admin = ""', f'admin = "{admin}"'),
            h.certificate_section("front", self.front),
            '[[listener]]\nname = "web"\nbind = "127.0.0.1:0"\nmode = "l7"\n',
            f'[[route]]\nlistener = "web"\nhosts = ["{MAIL}"]\npaths = ["/mapi", "/EWS"]\npool = "mapi"\n',
            f'[[route]]\nlistener = "web"\nhosts = ["{MAIL}"]\npaths = ["/owa"]\npool = "owa"\n',
            f'[[server]]\nname = "mbx01"\naddress = "{self.addr1}"\npin = "{mapi_pin}"\n',
            f'[[server]]\nname = "mbx02"\naddress = "{self.addr2}"\npin = "{owa_pin}"\n',
            f'[[pool]]\nname = "mapi"\nservers = ["mbx01"]\n{health}',
            f'[[pool]]\nname = "owa"\nservers = ["mbx02"]\n{health}',
        )

    addr1 = "127.0.0.1:1"
    addr2 = "127.0.0.1:2"

    def test_check_warns_on_a_mismatch_and_strict_fails(self):
        path = self.dir.write("ep.toml", self.config(self.other.thumbprint, self.other.thumbprint))
        p = h.run(["check", "-c", path], check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        warnings = [l for l in p.stdout.splitlines() if "Extended Protection" in l]
        # Only the /mapi + /EWS route: /owa takes forms logins.
        self.assertEqual(len(warnings), 1, p.stdout)
        w = warnings[0]
        for part in ('pool "mapi"', 'server "mbx01"', self.other.thumbprint, self.front.thumbprint, "/mapi", 'certificate "front"'):
            self.assertIn(part, w)
        self.assertIn("route[0].pool", w)
        strict = h.run(["check", "--strict", "-c", path], check=False)
        self.assertEqual(strict.returncode, 2, strict.stdout)

    def test_check_is_quiet_when_the_server_presents_the_front_certificate(self):
        path = self.dir.write("ep.toml", self.config(self.front.thumbprint, self.other.thumbprint))
        p = h.run(["check", "-c", path], check=False)
        self.assertNotIn("Extended Protection", p.stdout + p.stderr)
        # The same with the SHA-256 pin form.
        path = self.dir.write("ep2.toml", self.config(self.front.pin(), self.other.thumbprint))
        p = h.run(["check", "-c", path], check=False)
        self.assertNotIn("Extended Protection", p.stdout + p.stderr)

    def test_status_shows_per_server_whether_extended_protection_works(self):
        same = self.backend(nb.NtlmBackend("mbx01", self.front, USERS))
        different = self.backend(nb.NtlmBackend("mbx02", self.other, USERS))
        self.addr1, self.addr2 = same.address, different.address
        admin = f"127.0.0.1:{h.free_port()}"
        health = 'health = { kind = "tls", interval = "200ms", timeout = "2s", rise = 1, fall = 1 }\n'
        text = self.config(self.front.thumbprint, self.other.thumbprint, admin=admin, health=health)
        # The owa pool carries no Windows logins; give mbx02 a /mapi route too.
        text += '[[route]]\nlistener = "web"\nhosts = ["mail.contoso.test"]\npaths = ["/oab"]\npool = "oab"\n'
        text += f'[[pool]]\nname = "oab"\nservers = ["mbx02"]\n{health}'
        self.start(text)
        import json

        deadline = time.monotonic() + 10 * h.SLOW
        while True:
            status = json.loads(urllib.request.urlopen(f"http://{admin}/status.json", timeout=10).read())
            servers = {(p["name"], s["name"]): s for p in status["pools"] for s in p["servers"]}
            if all(s.get("presented_thumbprint") for s in servers.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(servers[("mapi", "mbx01")]["extended_protection"], "same certificate")
        self.assertEqual(servers[("oab", "mbx02")]["extended_protection"], "different certificate")
        self.assertEqual(servers[("oab", "mbx02")]["presented_thumbprint"], self.other.thumbprint)
        self.assertNotIn("extended_protection", servers[("owa", "mbx02")])
        html = urllib.request.urlopen(f"http://{admin}/status", timeout=10).read().decode()
        self.assertIn("Extended Protection", html)
        self.assertIn("different certificate", html)
