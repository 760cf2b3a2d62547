"""Redirects and emergency deny rules, with the shipped conf/examples/mitigations.toml
run on loopback: the ProxyLogon and ProxyNotShell mitigations refuse their
attacks while ordinary OWA and Autodiscover requests pass; port 80 sends
http to https (301), "/" to "/owa/" (302, "=/" matches nothing else), and
answers the Autodiscover HTTP redirect method (302). Real curl, real TLS,
HTTPS backends that say who answered."""

import os
import re
import shutil
import socket
import subprocess
import unittest
import urllib.request

import harness as h

EXAMPLES = os.path.join(h.HERE, "..", "..", "conf", "examples")
MAIL = "mail.contoso.com"
AUTODISCOVER = "autodiscover.contoso.com"


class MitigationsExampleTest(h.GatehouseTestCase):
    @classmethod
    def setUpClass(cls):
        cls.certs = h.TempDir()
        certs = os.path.join(cls.certs.path, "certs")
        os.makedirs(certs)
        cls.front = h.Cert(certs, "mail", MAIL, [MAIL, AUTODISCOVER], key="rsa2048")
        cls.ca = h.Cert(certs, "exchange-ca", "mbx01.contoso.com", ["mbx01.contoso.com", "mbx02.contoso.com"])
        shutil.copy(cls.ca.cert, os.path.join(certs, "exchange-ca.pem"))

    @classmethod
    def tearDownClass(cls):
        cls.certs.cleanup()

    def example_text(self):
        with open(os.path.join(EXAMPLES, "mitigations.toml")) as f:
            return f.read()

    def setUp(self):
        super().setUp()
        shutil.copytree(os.path.join(self.certs.path, "certs"), self.dir.file("certs"))
        self.mbx = [self.backend(h.HttpsBackend(n, self.ca)) for n in ("mbx01", "mbx02")]
        text = self.example_text()
        text = re.sub(r'bind = "[^"]*"', 'bind = "127.0.0.1:0"', text)
        text = text.replace('admin = "127.0.0.1:9901"', 'admin = "127.0.0.1:0"').replace("workers = 0", "workers = 1")
        for i, b in enumerate(self.mbx):
            text = text.replace(f'address = "10.0.1.1{i + 1}:443"', f'address = "{b.address}"')
        self.g = self.start(text)
        self.https = self.g.port("https")
        self.http = self.g.port("http")

    def curl(self, url, extra=()):
        """(status, headers+body text)."""
        args = ["curl", "-sk", "--path-as-is", "-i", "--max-time", str(20 * h.SLOW),
                "--resolve", f"{MAIL}:{self.https}:127.0.0.1", "--resolve", f"{AUTODISCOVER}:{self.https}:127.0.0.1",
                "--resolve", f"{MAIL}:{self.http}:127.0.0.1",
                "--resolve", f"autodiscover.fabrikam.com:{self.http}:127.0.0.1", *extra, url]
        p = subprocess.run(args, capture_output=True, text=True, timeout=30 * h.SLOW)
        m = re.match(r"HTTP/[\d.]+ (\d+)", p.stdout)
        return (int(m.group(1)) if m else 0), p.stdout.lower()  # HTTP/2 names are lower case

    def test_example_checks_clean(self):
        path = self.dir.write("mitigations.toml", self.example_text())
        p = h.run(["check", "--exchange", "--strict", "-c", path], check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("0 errors, 0 warnings", p.stdout + p.stderr)

    def test_proxynotshell_is_refused_and_autodiscover_passes(self):
        attack = ("/autodiscover/autodiscover.json?@x.com/owa/?&Email=autodiscover/autodiscover.json%3f@x.com/"
                  "powershell")
        for host in (MAIL, AUTODISCOVER):
            status, out = self.curl(f"https://{host}:{self.https}{attack}")
            self.assertEqual(status, 403, out)
            # Encoded in the query, or in the path's spelling: still refused.
            status, out = self.curl(f"https://{host}:{self.https}/Autodiscover/%61utodiscover.json?a=%50owerShell")
            self.assertEqual(status, 403, out)
        ok = ["/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.json?Email=a@contoso.com&Protocol=EWS"]
        for path in ok:
            status, out = self.curl(f"https://{AUTODISCOVER}:{self.https}{path}")
            self.assertEqual(status, 200, out)
        ev = self.g.wait_event("request_denied")
        self.assertEqual(ev["rule"], 3)

    def test_proxylogon_cookies_are_refused_and_owa_passes(self):
        status, out = self.curl(f"https://{MAIL}:{self.https}/owa/auth/x.js",
                                ["-H", "Cookie: X-AnonResource=true; X-AnonResource-Backend=localhost/ecp/default.flt?~3"])
        self.assertEqual(status, 403, out)
        status, out = self.curl(f"https://{MAIL}:{self.https}/ecp/y.js",
                                ["-H", "Cookie: X-BEResource=localhost/owa/auth/logon.aspx?~1942062522"])
        self.assertEqual(status, 403, out)
        status, out = self.curl(f"https://{MAIL}:{self.https}/owa/", ["-H", "Cookie: ClientId=ABC; X-OWA-CANARY=x"])
        self.assertEqual(status, 200, out)
        self.assertIn("x-backend: mbx0", out)
        # Counted per rule, listed on /status.
        admin = f"http://127.0.0.1:{self.g.port('admin')}"
        with urllib.request.urlopen(admin + "/metrics", timeout=10) as r:
            metrics = r.read().decode()
        self.assertRegex(metrics, r'gatehouse_deny_rule_hits_total\{rule="1"[^}]*\} 1')
        self.assertRegex(metrics, r'gatehouse_deny_rule_hits_total\{rule="2"[^}]*\} 1')
        with urllib.request.urlopen(admin + "/status", timeout=10) as r:
            self.assertIn("X-AnonResource-Backend", r.read().decode())

    def test_redirects(self):
        status, out = self.curl(f"http://{MAIL}:{self.http}/")
        self.assertEqual(status, 301, out)
        self.assertIn(f"location: https://{MAIL}/", out)
        status, out = self.curl(f"http://{MAIL}:{self.http}/owa/?path=/mail")
        self.assertEqual(status, 301, out)
        self.assertIn(f"location: https://{MAIL}/owa/?path=/mail", out)
        # "=/" sends "/" (and only "/") to /owa/.
        status, out = self.curl(f"https://{MAIL}:{self.https}/")
        self.assertEqual(status, 302, out)
        self.assertIn(f"location: https://{MAIL}/owa/", out)
        status, out = self.curl(f"https://{MAIL}:{self.https}/owa/")
        self.assertEqual(status, 200, out)
        # The Autodiscover HTTP redirect method (MS-OXDISCO 3.1.5.4).
        status, out = self.curl(f"http://autodiscover.fabrikam.com:{self.http}/Autodiscover/Autodiscover.xml")
        self.assertEqual(status, 302, out)
        self.assertIn("location: https://autodiscover.contoso.com/autodiscover/autodiscover.xml", out)
        line = self.g.wait_access(mode="redirect", status=302)
        self.assertEqual(line["location"], "https://autodiscover.contoso.com/Autodiscover/Autodiscover.xml")

    def test_redirect_listener_refuses_nonsense(self):
        with socket.create_connection(("127.0.0.1", self.http), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")  # no Host: nowhere to redirect to
            reply = s.recv(4096)
        self.assertTrue(reply.startswith(b"HTTP/1.1 400"), reply)
        with socket.create_connection(("127.0.0.1", self.http), timeout=10) as s:
            s.sendall(b"GARBAGE\r\n\r\n")
            reply = s.recv(4096)
        self.assertTrue(reply.startswith(b"HTTP/1.1 400"), reply)


if __name__ == "__main__":
    unittest.main()
