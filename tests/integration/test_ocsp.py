"""OCSP stapling: `ocsp = "PATH"` (a response file) and `ocsp = "auto"`.

A CA run by `openssl ca` issues the served certificate (the PEM file holds
the leaf, then the CA); a local `openssl ocsp -index ... -port` responder
answers for it. `openssl s_client -status` shows what gatehouse staples: the
good response, and never one for another certificate, one signed by a key
the issuer did not authorise, or an expired one (made with Python's
cryptography, since `openssl ocsp` only issues current responses). A reload
re-reads the file. With "auto", gatehouse fetches from the responder in the
certificate's Authority Information Access, refreshes at half the validity,
keeps the last good response while the responder is down, and stops
stapling (with a warning) when that response expires."""

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import time
import unittest
import urllib.request

import harness as h
from test_client_certs import TestCA, openssl

MAIL = "mail.contoso.test"


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def listener_section():
    return '[[listener]]\nname = "web"\nbind = "127.0.0.1:0"\nmode = "l7"\n'


def certificate_section(cert, key, ocsp):
    return f'[[certificate]]\nname = "front"\ncert = "{cert}"\nkey = "{key}"\nocsp = "{ocsp}"\n'


def stapled(port, tls="-tls1_3"):
    """(status line, s_client output) of the staple `openssl s_client -status` got."""
    p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", MAIL, "-status", tls],
                       input="", capture_output=True, text=True, timeout=30 * h.SLOW)
    out = p.stdout + p.stderr
    if "OCSP response: no response sent" in out:
        return None, out
    if "OCSP Response Status: successful" in out and "Cert Status: good" in out:
        return "good", out
    return "other", out


class Ocsp(h.GatehouseTestCase):
    @classmethod
    def setUpClass(cls):
        cls.certs = h.TempDir()
        d = cls.certs.path
        cls.ca = TestCA(d, "ca", "Gatehouse Test Server CA")
        leaf = cls.ca.issue("mail", f"/CN={MAIL}", eku="serverAuth", sans=[f"DNS:{MAIL}"])
        other = cls.ca.issue("other", "/CN=other.contoso.test", eku="serverAuth", sans=["DNS:other.contoso.test"])
        cls.leaf_cert = leaf.cert
        cls.key = leaf.key
        # Leaf first, then its issuer: what the OCSP response is checked against.
        cls.chain = os.path.join(d, "mail-chain.pem")
        with open(cls.chain, "w") as f:
            f.write(read(leaf.cert) + read(cls.ca.cert))

        # The real responder, on loopback.
        port = h.free_port()
        responder = subprocess.Popen(
            ["openssl", "ocsp", "-index", os.path.join(cls.ca.dir, "index.txt"), "-port", str(port), "-rsigner",
             cls.ca.cert, "-rkey", cls.ca.key, "-CA", cls.ca.cert, "-ndays", "1", "-ignore_err"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            cls.good = os.path.join(d, "good.der")
            cls.for_other = os.path.join(d, "other.der")
            for cert, out in ((leaf.cert, cls.good), (other.cert, cls.for_other)):
                deadline = time.monotonic() + 20
                while True:
                    p = subprocess.run(["openssl", "ocsp", "-issuer", cls.ca.cert, "-cert", cert, "-url",
                                        f"http://127.0.0.1:{port}", "-respout", out, "-no_nonce", "-CAfile",
                                        cls.ca.cert], capture_output=True, text=True, timeout=30)
                    if p.returncode == 0 and os.path.exists(out):
                        break
                    if time.monotonic() > deadline:
                        raise AssertionError("the openssl ocsp responder did not answer:\n" + p.stdout + p.stderr)
                    time.sleep(0.2)
        finally:
            responder.terminate()
            responder.wait(10)

        # Signed by a CA that did not issue the certificate (offline responder mode).
        cls.other_ca = TestCA(d, "other-ca", "Unrelated CA")
        request = os.path.join(d, "request.der")
        openssl("ocsp", "-issuer", cls.ca.cert, "-cert", leaf.cert, "-reqout", request, "-no_nonce")
        cls.wrong_signer = os.path.join(d, "wrong-signer.der")
        openssl("ocsp", "-index", os.path.join(cls.ca.dir, "index.txt"), "-CA", cls.ca.cert, "-rsigner",
                cls.other_ca.cert, "-rkey", cls.other_ca.key, "-reqin", request, "-respout", cls.wrong_signer,
                "-ndays", "1")

        cls.truncated = os.path.join(d, "truncated.der")
        with open(cls.good, "rb") as f, open(cls.truncated, "wb") as out:
            out.write(f.read()[:300])

        cls.expired = os.path.join(d, "expired.der")
        try:
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.x509 import ocsp
        except ImportError:
            cls.expired = None
        else:
            ca = x509.load_pem_x509_certificate(read(cls.ca.cert, "rb"))
            ca_key = serialization.load_pem_private_key(read(cls.ca.key, "rb"), None)
            cert = x509.load_pem_x509_certificate(read(leaf.cert, "rb"))
            now = datetime.datetime.utcnow()
            builder = ocsp.OCSPResponseBuilder().add_response(
                cert=cert, issuer=ca, algorithm=hashes.SHA1(), cert_status=ocsp.OCSPCertStatus.GOOD,
                this_update=now - datetime.timedelta(days=2), next_update=now - datetime.timedelta(days=1),
                revocation_time=None, revocation_reason=None).responder_id(ocsp.OCSPResponderEncoding.HASH, ca)
            with open(cls.expired, "wb") as f:
                f.write(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))

    @classmethod
    def tearDownClass(cls):
        cls.certs.cleanup()

    def start_with(self, response_file, admin=False):
        path = self.dir.file("staple.der")
        shutil.copy(response_file, path)
        server = h.server_section()
        if admin:
            server = server.replace('admin = ""', 'admin = "127.0.0.1:0"')
        g = self.start(h.config(server, certificate_section(self.chain, self.key, path), listener_section()))
        return g, g.port("web"), path

    def test_good_response_is_stapled(self):
        g, port, _ = self.start_with(self.good, admin=True)
        for tls in ("-tls1_2", "-tls1_3"):
            with self.subTest(tls=tls):
                status, out = stapled(port, tls)
                self.assertEqual(status, "good", out)
        ev = g.wait_event("ocsp_staple", certificate="front")
        self.assertTrue(ev["state"].startswith("good until"), ev)
        admin = f"http://127.0.0.1:{g.port('admin')}"
        with urllib.request.urlopen(admin + "/metrics", timeout=10) as r:
            metrics = r.read().decode()
        m = re.search(r'^gatehouse_ocsp_staple_expiry_seconds\{certificate="front"\} (\d+)$', metrics, re.M)
        self.assertIsNotNone(m, metrics)
        self.assertGreater(int(m.group(1)), 3600)  # `openssl ocsp -ndays 1`
        with urllib.request.urlopen(admin + "/status.json", timeout=10) as r:
            status = json.load(r)
        [front] = [c for c in status["certificates"] if c["name"] == "front"]
        self.assertTrue(front["ocsp"].startswith("good until"), front)

    def test_unusable_responses_are_never_stapled(self):
        cases = [("for another certificate", self.for_other, "another certificate"),
                 ("signed by another CA", self.wrong_signer, "signature does not verify"),
                 ("truncated", self.truncated, "not a DER OCSP response")]
        if self.expired:
            cases.append(("expired", self.expired, "expired"))
        else:
            print("skipping the expired response: python3 has no cryptography module to make one")
        for what, response, reason in cases:
            with self.subTest(what=what):
                g, port, _ = self.start_with(response)
                status, out = stapled(port)
                self.assertIsNone(status, f"{what} was stapled:\n{out}")
                ev = g.wait_event("ocsp_not_stapled", certificate="front")
                self.assertIn(reason, ev["reason"])
                g.stop()

    def test_reload_reads_the_file_again(self):
        g, port, path = self.start_with(self.for_other)
        self.assertIsNone(stapled(port)[0])
        shutil.copy(self.good, path)
        g.signal(signal.SIGHUP)
        g.wait_event("reloaded")
        status, out = stapled(port)
        self.assertEqual(status, "good", out)
        if self.expired:
            shutil.copy(self.expired, path)
            g.signal(signal.SIGHUP)
            g.wait_for(lambda o: o.get("event") == "reloaded" and o.get("generation", 0) >= 3, g.events)
            self.assertIsNone(stapled(port)[0], "an expired response must not be stapled")

    def test_check_shows_the_ocsp_state(self):
        path = self.dir.file("staple.der")
        shutil.copy(self.good, path)
        config = self.dir.write("gatehouse.toml", h.config(h.server_section(),
                                                           certificate_section(self.chain, self.key, path),
                                                           listener_section()))
        p = h.run(["check", "-c", config], check=False)
        self.assertIn(f"certificate front: OCSP response {path}: good until", p.stdout)
        shutil.copy(self.wrong_signer, path)
        p = h.run(["check", "-c", config, "--strict"], check=False)
        self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
        self.assertIn("NOT STAPLED", p.stdout)
        self.assertIn('certificate "front".ocsp', p.stdout)

    def test_auto_without_responder_url_is_refused(self):
        # The served certificate names no OCSP responder: nothing to fetch from.
        config = self.dir.write("gatehouse.toml", h.config(h.server_section(),
                                                           certificate_section(self.chain, self.key, "auto"),
                                                           listener_section()))
        p = h.run(["run", "-c", config], check=False, timeout=30)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn('certificate "front".ocsp', p.stderr)
        self.assertIn("no http:// OCSP responder", p.stderr)
        p = h.run(["check", "-c", config], check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("no http:// OCSP responder", p.stderr)


class OcspAuto(h.GatehouseTestCase):
    """ocsp = "auto" against a real `openssl ocsp` responder named in the
    certificate's Authority Information Access, whose responses are valid
    for one minute (the shortest it makes), so refresh and expiry happen
    within the test."""

    def test_fetches_refreshes_and_stops_stapling_when_the_responder_is_gone(self):
        d = self.dir.path
        port = h.free_port()
        ca = TestCA(d, "ca", "Gatehouse Test Server CA")
        leaf = ca.issue("mail", f"/CN={MAIL}", eku="serverAuth", sans=[f"DNS:{MAIL}"],
                        extra=f"authorityInfoAccess = OCSP;URI:http://127.0.0.1:{port}/ocsp\n")
        chain = os.path.join(d, "mail-chain.pem")
        with open(chain, "w") as f:
            f.write(read(leaf.cert) + read(ca.cert))
        responder = subprocess.Popen(
            ["openssl", "ocsp", "-index", os.path.join(ca.dir, "index.txt"), "-port", str(port), "-rsigner", ca.cert,
             "-rkey", ca.key, "-CA", ca.cert, "-nmin", "1", "-ignore_err"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self._stops.append(lambda: (responder.kill(), responder.wait()))

        config = self.dir.write("gatehouse.toml", h.config(h.server_section(), certificate_section(chain, leaf.key, "auto"),
                                                           listener_section()))
        p = h.run(["check", "-c", config], check=False)
        self.assertIn(f"certificate front: OCSP fetched from http://127.0.0.1:{port}/ocsp", p.stdout)
        server = h.server_section().replace('admin = ""', 'admin = "127.0.0.1:0"')
        g = self.start(h.config(server, certificate_section(chain, leaf.key, "auto"), listener_section()))
        web = g.port("web")
        g.wait_event("ocsp_fetched", certificate="front", timeout=30)
        status, out = stapled(web)
        self.assertEqual(status, "good", out)

        # Refreshed at half the validity (30 s of 60 s), not at its end.
        g.wait_for(lambda _: sum(1 for o in list(g.events) if o.get("event") == "ocsp_fetched") >= 2, [None],
                   timeout=60, what="a second ocsp_fetched")
        fetched = [o for o in list(g.events) if o.get("event") == "ocsp_fetched"]
        self.assertNotIn("ocsp_staple_expired", [o.get("event") for o in g.events])

        # Responder down: the last good response is kept while it is current,
        # then nothing is stapled and a warning says so.
        responder.kill()
        responder.wait()
        failed = g.wait_event("ocsp_fetch_failed", certificate="front", timeout=60)
        self.assertIn("last good response", failed["stapling"])
        self.assertEqual(stapled(web)[0], "good", "the last good response is stapled until its nextUpdate")
        g.wait_event("ocsp_staple_expired", certificate="front", timeout=90)
        status, out = stapled(web)
        self.assertIsNone(status, "an expired response must never be stapled:\n" + out)
        with urllib.request.urlopen(f"http://127.0.0.1:{g.port('admin')}/metrics", timeout=10) as r:
            self.assertIn('gatehouse_ocsp_staple_expiry_seconds{certificate="front"} 0\n', r.read().decode())
        retries = [o["retry_in"] for o in list(g.events) if o.get("event") == "ocsp_fetch_failed"]
        seconds = [int(r.rstrip("s")) for r in retries]
        self.assertEqual(seconds, sorted(seconds), f"retries back off: {retries}")
        self.assertGreaterEqual(len(fetched), 2)


if __name__ == "__main__":
    unittest.main()
