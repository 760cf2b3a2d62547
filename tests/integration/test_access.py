"""Access rules per route (allow/deny client ranges), played as an attacker:
/ecp is open to 127.0.0.2 only, and no spelling of the path, no forged
X-Forwarded-For, reaches the ecp backend from 127.0.0.1. The same rule on an
l4 route by SNI closes the connection. Real curl, real TLS, plain HTTPS
backends that say who answered."""

import socket
import ssl
import subprocess
import unittest

import harness as h

MAIL = "mail.contoso.test"
ADMIN = "admin.contoso.test"


class AccessRulesTest(h.GatehouseTestCase):
    @classmethod
    def setUpClass(cls):
        cls.certs = h.TempDir()
        cls.front = h.Cert(cls.certs.path, "front", MAIL, [MAIL, ADMIN])
        cls.mbx = h.Cert(cls.certs.path, "mbx", "mbx01", ["mbx01"], key="rsa2048")

    @classmethod
    def tearDownClass(cls):
        cls.certs.cleanup()

    def setUp(self):
        super().setUp()
        self.owa = self.backend(h.HttpsBackend("owa", self.mbx))
        self.ecp = self.backend(h.HttpsBackend("ecp", self.mbx))
        self.echo = self.backend(h.EchoBackend(self.mbx))
        pin = self.mbx.pin()
        self.g = self.start(h.config(
            h.server_section(),
            h.certificate_section("front", self.front),
            '[[listener]]\nname = "https"\nbind = "127.0.0.1:0"\n',
            '[[listener]]\nname = "imaps"\nbind = "127.0.0.1:0"\nmode = "l4"\n',
            f'[[route]]\nlistener = "https"\nhosts = ["{MAIL}"]\npool = "owa"\n',
            f'[[route]]\nlistener = "https"\nhosts = ["{MAIL}"]\npaths = ["/ecp", "/powershell"]\n'
            'allow = ["127.0.0.2/32"]\npool = "ecp"\n',
            f'[[route]]\nlistener = "imaps"\nhosts = ["{ADMIN}"]\nallow = ["127.0.0.2"]\npool = "echo"\n',
            f'[[route]]\nlistener = "imaps"\nhosts = ["{MAIL}"]\ndeny = ["127.0.0.0/30"]\npool = "echo"\n',
            f'[[server]]\nname = "owa1"\naddress = "{self.owa.address}"\npin = "{pin}"\n',
            f'[[server]]\nname = "ecp1"\naddress = "{self.ecp.address}"\npin = "{pin}"\n',
            f'[[server]]\nname = "echo1"\naddress = "{self.echo.address}"\npin = "{pin}"\n',
            '[[pool]]\nname = "owa"\nservers = ["owa1"]\n',
            '[[pool]]\nname = "ecp"\nservers = ["ecp1"]\n',
            '[[pool]]\nname = "echo"\nservers = ["echo1"]\n',
        ))
        self.port = self.g.port("https")

    def curl(self, path, source="127.0.0.1", extra=()):
        """(status, body) of a GET through Gatehouse from `source`."""
        args = ["curl", "-sk", "--path-as-is", "--interface", source, "--resolve", f"{MAIL}:{self.port}:127.0.0.1",
                "-o", "-", "-w", "\n%{http_code}", *extra, f"https://{MAIL}:{self.port}{path}"]
        p = subprocess.run(args, capture_output=True, text=True, timeout=20 * h.SLOW)
        body, _, code = p.stdout.rpartition("\n")
        return int(code or 0), body

    def test_allowed_address_reaches_ecp(self):
        status, body = self.curl("/ecp/", source="127.0.0.2")
        self.assertEqual(status, 200)
        self.assertTrue(body.startswith("ecp GET /ecp/"), body)
        status, body = self.curl("/owa/", source="127.0.0.1")
        self.assertEqual((status, body.split()[0]), (200, "owa"))

    def test_no_spelling_reaches_ecp_from_elsewhere(self):
        spellings = ["/ecp/", "/ECP/", "/%65cp/", "//ecp/", "/owa/../ecp/", "/owa/%2e%2e/ecp/", "/ecp;x/", "/ecp%2f",
                     "/ecp", "/Ecp/default.aspx?x=1", "/owa/%2E%2E/%45CP/", "/owa%5c..%5cecp/", "/PowerShell/",
                     "/%252e%252e/ecp/", "/ecp%00/"]
        for path in spellings:
            status, body = self.curl(path)
            self.assertIn(status, (400, 403), f"{path}: {status} {body}")
            self.assertFalse(body.startswith("ecp "), path)
        forged = ["-H", "X-Forwarded-For: 127.0.0.2", "-H", "Forwarded: for=127.0.0.2", "-H", "X-Real-IP: 127.0.0.2"]
        status, body = self.curl("/ecp/", extra=forged)
        self.assertEqual(status, 403, body)
        self.assertEqual(self.ecp.handshakes, [])  # never even connected
        ev = self.g.wait_event("access_denied")
        self.assertIn("127.0.0.1", ev["client"])
        line = self.g.wait_access(status=403)
        self.assertNotIn("server", line)

    def test_l4_route_by_sni_closes_refused_clients(self):
        port = self.g.port("imaps")
        ctx = h.client_context()

        def echo_from(source, sni):
            with socket.create_connection(("127.0.0.1", port), timeout=10 * h.SLOW,
                                          source_address=(source, 0)) as raw:
                with ctx.wrap_socket(raw, server_hostname=sni) as tls:
                    tls.sendall(b"ping")
                    try:
                        return tls.recv(4)
                    except (ssl.SSLError, OSError):
                        return b""

        self.assertEqual(echo_from("127.0.0.2", ADMIN), b"ping")
        self.assertEqual(echo_from("127.0.0.1", ADMIN), b"")
        self.assertEqual(echo_from("127.0.0.1", MAIL), b"")  # deny 127.0.0.0/30
        self.assertEqual(echo_from("127.0.0.5", MAIL), b"ping")
        line = self.g.wait_access(mode="l4", sni=ADMIN, error="access denied")
        self.assertEqual(line["client"].split(":")[0], "127.0.0.1")


if __name__ == "__main__":
    unittest.main()
