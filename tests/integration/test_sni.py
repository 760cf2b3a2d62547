"""Certificate choice by SNI through real handshakes: one gatehouse process
with several l4 listeners and certificates, and `openssl s_client` as the
client. Every case asserts WHICH certificate was served, by the SHA-256 of
its DER encoding (see SPEC.md, "Certificate choice")."""

import hashlib
import os
import ssl
import subprocess
import unittest

import harness
from harness import Cert, EchoBackend, Gatehouse, TempDir, certificate_section, config, served_certificate, \
    server_section

# A TLS 1.3 client that can only verify RSA signatures, and a TLS 1.2 client
# that only accepts RSA certificates (TESTING.md).
RSA_ONLY_TLS13 = ("-tls1_3", "-sigalgs", "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pkcs1_sha256")
RSA_ONLY_TLS12 = ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256")
ECDSA_TLS13 = ("-tls1_3",)
ECDSA_TLS12 = ("-tls1_2",)


class OpensslCert:
    """A certificate made with the plain openssl CLI: for shapes `cert new`
    does not make (a CN and no SAN at all)."""

    def __init__(self, directory, stem, cn, san=None):
        self.cert = os.path.join(directory, stem + ".crt")
        self.key = os.path.join(directory, stem + ".key")
        extra = ["-addext", "subjectAltName=" + san] if san else []
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-subj", "/CN=" + cn, "-days", "30", "-keyout", self.key, "-out", self.cert, *extra],
                       check=True, capture_output=True, timeout=30)
        text = subprocess.run(["openssl", "x509", "-in", self.cert, "-noout", "-text"], check=True,
                              capture_output=True, text=True).stdout
        assert ("Subject Alternative Name" in text) == bool(san), text
        with open(self.cert) as f:
            self.der = ssl.PEM_cert_to_DER_cert(f.read())
        self.sha256 = hashlib.sha256(self.der).hexdigest()


class SniTest(unittest.TestCase):
    """One gatehouse for the whole table (keeps the file well under a minute)."""

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(harness.GATEHOUSE):
            raise unittest.SkipTest(f"gatehouse binary not found at {harness.GATEHOUSE}")
        cls.dir = TempDir()
        d = cls.dir.path
        c = cls.certs = {}
        c["san"] = Cert(d, "san", "mail.contoso.com", ["mail.contoso.com", "autodiscover.contoso.com"])
        c["wild"] = Cert(d, "wild", "*.contoso.com", ["*.contoso.com"])
        c["default"] = Cert(d, "default", "default.test", ["default.test"])
        # Two certificates for one name, in both listener orders, so that
        # neither "RSA client gets RSA" nor "ECDSA client gets ECDSA" can pass
        # merely because that certificate is listed first.
        c["dual-ec"] = Cert(d, "dual-ec", "both.contoso.net", ["both.contoso.net"], key="ec256")
        c["dual-rsa"] = Cert(d, "dual-rsa", "both.contoso.net", ["both.contoso.net"], key="rsa2048")
        c["dual2-rsa"] = Cert(d, "dual2-rsa", "both2.contoso.net", ["both2.contoso.net"], key="rsa2048")
        c["dual2-ec"] = Cert(d, "dual2-ec", "both2.contoso.net", ["both2.contoso.net"], key="ec256")
        # An expired certificate listed before a valid one for the same name,
        # and an expired one that is alone for its name.
        c["renew-expired"] = Cert(d, "renew-expired", "renew.contoso.org", ["renew.contoso.org"],
                                  days=1, not_before="2001-01-01")
        c["renew-valid"] = Cert(d, "renew-valid", "renew.contoso.org", ["renew.contoso.org"])
        c["old-expired"] = Cert(d, "old-expired", "old.contoso.org", ["old.contoso.org"],
                                days=1, not_before="2001-01-01")
        # CN a.contoso.test, SAN b.contoso.test: the CN must not count.
        c["cn-and-san"] = Cert(d, "cn-and-san", "a.contoso.test", ["b.contoso.test"])
        # CN only, no SAN extension at all: the CN counts.
        c["cn-only"] = OpensslCert(d, "cn-only", "cnonly.contoso.test")
        # A SAN written in upper case by the issuer (cert new would lower-case it).
        c["upper-san"] = OpensslCert(d, "upper-san", "x", san="DNS:Upper.Contoso.Test")

        cls.echo = EchoBackend()
        main_certs = ["san", "wild", "default", "dual-ec", "dual-rsa", "dual2-rsa", "dual2-ec", "renew-expired",
                      "renew-valid", "old-expired", "cn-and-san", "cn-only", "upper-san"]
        sections = [server_section(workers=2)]
        sections += [certificate_section(name, cert) for name, cert in c.items()]
        quoted = lambda names: "[" + ", ".join(f'"{n}"' for n in names) + "]"  # noqa: E731
        sections.append(f'[[listener]]\nname = "main"\nbind = "127.0.0.1:0"\nmode = "l4"\n'
                        f'certificates = {quoted(main_certs)}\ndefault_certificate = "default"\npool = "echo"\n')
        # No default_certificate: the first listed one is the default.
        sections.append('[[listener]]\nname = "first"\nbind = "127.0.0.1:0"\nmode = "l4"\n'
                        'certificates = ["wild", "san"]\npool = "echo"\n')
        sections.append('[[listener]]\nname = "strict"\nbind = "127.0.0.1:0"\nmode = "l4"\n'
                        'certificates = ["san", "default"]\nstrict_sni = true\npool = "echo"\n')
        sections.append(f'[[server]]\nname = "echo1"\naddress = "{cls.echo.address}"\n')
        sections.append('[[pool]]\nname = "echo"\nservers = ["echo1"]\ntls = "plain"\n')
        path = cls.dir.write("gatehouse.toml", config(*sections))
        try:
            cls.gh = Gatehouse(path)
        except Exception:
            cls.echo.stop()
            cls.dir.cleanup()
            raise
        cls.main = cls.gh.port("main")
        cls.first = cls.gh.port("first")
        cls.strict = cls.gh.port("strict")

    @classmethod
    def tearDownClass(cls):
        cls.gh.stop()
        cls.echo.stop()
        cls.dir.cleanup()

    def assertServed(self, port, sni, cert_name, extra=()):
        got, out = served_certificate(port, sni, extra)
        self.assertIsNotNone(got, f"handshake with SNI {sni!r} {extra} failed:\n{out}")
        names = [n for n, c in self.certs.items() if c.sha256 == got]
        self.assertEqual(got, self.certs[cert_name].sha256,
                         f"SNI {sni!r} {list(extra)}: expected certificate {cert_name}, got {names or got}")
        return out

    # --- exact names ---------------------------------------------------------

    def test_exact_san(self):
        self.assertServed(self.main, "mail.contoso.com", "san")

    def test_second_san(self):
        self.assertServed(self.main, "autodiscover.contoso.com", "san")

    def test_uppercase_sni(self):
        self.assertServed(self.main, "MAIL.Contoso.COM", "san")

    def test_trailing_dot(self):
        self.assertServed(self.main, "mail.contoso.com.", "san")

    def test_uppercase_san_in_certificate(self):
        self.assertServed(self.main, "upper.contoso.test", "upper-san")
        self.assertServed(self.main, "UPPER.contoso.TEST", "upper-san")

    def test_access_log_names_certificate(self):
        self.assertServed(self.main, "autodiscover.contoso.com", "san")
        line = self.gh.wait_access(listener="main", sni="autodiscover.contoso.com")
        self.assertEqual(line.get("certificate"), "san", line)
        self.assertFalse(line.get("resumed"), line)
        self.assertIn(line.get("tls_version"), ("TLSv1.3", "TLSv1.2"), line)

    # --- wildcards -----------------------------------------------------------

    def test_wildcard_one_level(self):
        self.assertServed(self.main, "owa.contoso.com", "wild")

    def test_exact_beats_wildcard(self):
        # mail.contoso.com is covered by both san (exact) and wild; wild is
        # listed first in "first", so only the exact-first rule gives san.
        self.assertServed(self.first, "mail.contoso.com", "san")

    def test_literal_wildcard_sni_gets_default(self):
        # A client sending "*.contoso.com" is not a name the wildcard covers.
        self.assertServed(self.main, "*.contoso.com", "default")

    def test_wildcard_two_levels_gets_default(self):
        self.assertServed(self.main, "a.b.contoso.com", "default")

    def test_apex_not_covered_by_wildcard(self):
        self.assertServed(self.main, "contoso.com", "default")

    # --- default and strict --------------------------------------------------

    def test_no_sni_gets_configured_default(self):
        # default_certificate = "default", which is third in the list.
        self.assertServed(self.main, None, "default")

    def test_unknown_sni_gets_configured_default(self):
        self.assertServed(self.main, "unknown.example.net", "default")

    def test_default_is_first_listed_when_not_set(self):
        self.assertServed(self.first, None, "wild")
        self.assertServed(self.first, "unknown.example.net", "wild")

    def test_strict_sni_known_name_served(self):
        self.assertServed(self.strict, "mail.contoso.com", "san")
        self.assertServed(self.strict, "default.test", "default")

    def test_strict_sni_unknown_name_unrecognized_name_alert(self):
        got, out = served_certificate(self.strict, "unknown.example.net")
        self.assertIsNone(got, f"strict_sni served a certificate for an unknown name:\n{out}")
        # OpenSSL prints the alert as "tlsv1 unrecognized name ... SSL alert number 112".
        self.assertIn("unrecognized name", out)
        self.assertIn("alert number 112", out)
        ev = self.gh.wait_event("handshake_failed", listener="strict", sni="unknown.example.net")
        self.assertTrue(ev.get("client", "").startswith("127.0.0.1:"), ev)

    def test_strict_sni_absent_name_refused(self):
        got, out = served_certificate(self.strict, None)
        self.assertIsNone(got, f"strict_sni served a certificate without SNI:\n{out}")
        self.assertIn("alert number 112", out)

    # --- key types -----------------------------------------------------------

    def test_rsa_only_tls13_client_gets_rsa(self):
        self.assertServed(self.main, "both.contoso.net", "dual-rsa", RSA_ONLY_TLS13)
        self.assertServed(self.main, "both2.contoso.net", "dual2-rsa", RSA_ONLY_TLS13)

    def test_rsa_only_tls12_client_gets_rsa(self):
        self.assertServed(self.main, "both.contoso.net", "dual-rsa", RSA_ONLY_TLS12)
        self.assertServed(self.main, "both2.contoso.net", "dual2-rsa", RSA_ONLY_TLS12)

    def test_ecdsa_client_gets_ecdsa(self):
        for extra in (ECDSA_TLS13, ECDSA_TLS12):
            self.assertServed(self.main, "both.contoso.net", "dual-ec", extra)
            self.assertServed(self.main, "both2.contoso.net", "dual2-ec", extra)

    # --- expiry --------------------------------------------------------------

    def test_expired_passed_over_for_valid(self):
        self.assertServed(self.main, "renew.contoso.org", "renew-valid")

    def test_expired_served_when_only_one(self):
        self.assertServed(self.main, "old.contoso.org", "old-expired")

    # --- CN versus SAN -------------------------------------------------------

    def test_cn_ignored_when_san_present(self):
        self.assertServed(self.main, "b.contoso.test", "cn-and-san")
        self.assertServed(self.main, "a.contoso.test", "default")

    def test_cn_used_without_san(self):
        self.assertServed(self.main, "cnonly.contoso.test", "cn-only")


if __name__ == "__main__":
    unittest.main()
