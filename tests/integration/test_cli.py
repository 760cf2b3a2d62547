"""The command line: `cert new`, `cert inspect`, `cert pin`, `--version`,
`help`, and clear messages for bad flags. Certificates are checked with the
plain openssl CLI as an independent reader."""

import base64
import datetime
import hashlib
import json
import os
import re
import stat
import subprocess
import unittest

import harness
from harness import Cert, EchoBackend, GatehouseTestCase, certificate_section, config, run, server_section


def openssl(*args, input=None):
    p = subprocess.run(["openssl", *args], capture_output=True, text=True, input=input, timeout=30)
    return p


def der_of(pem_file):
    return subprocess.run(["openssl", "x509", "-in", pem_file, "-outform", "DER"], capture_output=True,
                          check=True, timeout=30).stdout


def spki_pin(pem_file):
    """sha256/BASE64 of the SubjectPublicKeyInfo, computed with openssl."""
    pub = subprocess.run(["openssl", "x509", "-in", pem_file, "-noout", "-pubkey"], capture_output=True,
                         check=True, timeout=30).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub, capture_output=True,
                         check=True, timeout=30).stdout
    return "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def parse_list(text):
    """`Name : value` lines (Format-List style) -> dict of the first block."""
    out = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        name, sep, value = line.partition(" : ")
        if sep:
            out[name.strip()] = value.strip()
    return out


def iso(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")


class CertNew(GatehouseTestCase):

    def test_each_key_type(self):
        expected = {"rsa2048": ("RSA", 2048, "Public-Key: (2048 bit)"),
                    "rsa3072": ("RSA", 3072, "Public-Key: (3072 bit)"),
                    "ec256": ("ECDSA P-256", 256, "NIST CURVE: P-256"),
                    "ec384": ("ECDSA P-384", 384, "NIST CURVE: P-384")}
        for key, (key_type, bits, text_marker) in expected.items():
            with self.subTest(key=key):
                prefix = self.dir.file(key)
                p = run(["cert", "new", "--cn", "mail.contoso.test", "--san", "mail.contoso.test",
                         "--san", "autodiscover.contoso.test", "--key", key, "--out", prefix])
                self.assertIn(prefix + ".crt", p.stdout)
                self.assertIn(prefix + ".key", p.stdout)
                crt, keyfile = prefix + ".crt", prefix + ".key"
                self.assertEqual(stat.S_IMODE(os.stat(keyfile).st_mode), 0o600, "private key is not mode 0600")
                text = openssl("x509", "-in", crt, "-noout", "-text")
                self.assertEqual(text.returncode, 0, text.stderr)
                self.assertIn(text_marker, text.stdout)
                self.assertIn("DNS:mail.contoso.test, DNS:autodiscover.contoso.test", text.stdout)
                self.assertIn("TLS Web Server Authentication", text.stdout)
                # The key is the certificate's key (openssl's own reading of both).
                cert_pub = openssl("x509", "-in", crt, "-noout", "-pubkey").stdout
                key_pub = openssl("pkey", "-in", keyfile, "-pubout").stdout
                self.assertTrue(cert_pub.startswith("-----BEGIN PUBLIC KEY-----"), cert_pub)
                self.assertEqual(cert_pub, key_pub)
                info = json.loads(run(["cert", "inspect", "--json", crt]).stdout)[0]["certificates"][0]
                self.assertEqual(info["KeyType"], key_type)
                self.assertEqual(info["PublicKeySize"], bits)
                # Exchange's self-signed default: five years.
                days = (iso(info["NotAfter"]) - iso(info["NotBefore"])).days
                self.assertEqual(days, 1825)

    def test_days_and_not_before(self):
        prefix = self.dir.file("old")
        run(["cert", "new", "--cn", "old.contoso.test", "--key", "ec256", "--days", "10",
             "--not-before", "2020-02-03", "--out", prefix])
        info = json.loads(run(["cert", "inspect", "--json", prefix + ".crt"]).stdout)[0]["certificates"][0]
        self.assertEqual(info["NotBefore"], "2020-02-03T00:00:00Z")
        self.assertEqual(info["NotAfter"], "2020-02-13T00:00:00Z")
        # No --san: the SAN is the CN.
        self.assertEqual(info["CertificateDomains"], ["old.contoso.test"])
        enddate = openssl("x509", "-in", prefix + ".crt", "-noout", "-enddate").stdout
        self.assertIn("Feb 13 00:00:00 2020 GMT", enddate)

    def test_existing_key_file_gets_mode_0600(self):
        prefix = self.dir.file("mail")
        with open(prefix + ".key", "w") as f:
            f.write("old\n")
        os.chmod(prefix + ".key", 0o644)
        run(["cert", "new", "--cn", "mail.contoso.test", "--key", "ec256", "--out", prefix])
        self.assertEqual(stat.S_IMODE(os.stat(prefix + ".key").st_mode), 0o600)
        with open(prefix + ".key") as f:
            self.assertIn("PRIVATE KEY", f.read())

    def test_csr_verifies(self):
        prefix = self.dir.file("req")
        run(["cert", "new", "--cn", "mail.contoso.test", "--san", "mail.contoso.test", "--san",
             "autodiscover.contoso.test", "--key", "rsa2048", "--csr", "--out", prefix])
        self.assertTrue(os.path.exists(prefix + ".csr"))
        self.assertFalse(os.path.exists(prefix + ".crt"), "--csr also wrote a certificate")
        self.assertEqual(stat.S_IMODE(os.stat(prefix + ".key").st_mode), 0o600)
        p = openssl("req", "-in", prefix + ".csr", "-verify", "-noout")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("verify OK", p.stdout + p.stderr)
        text = openssl("req", "-in", prefix + ".csr", "-noout", "-text").stdout
        self.assertIn("CN = mail.contoso.test", text)
        self.assertIn("DNS:mail.contoso.test, DNS:autodiscover.contoso.test", text)
        # The CSR carries the key written beside it.
        csr_pub = openssl("req", "-in", prefix + ".csr", "-noout", "-pubkey").stdout
        key_pub = openssl("pkey", "-in", prefix + ".key", "-pubout").stdout
        self.assertEqual(csr_pub, key_pub)

    def test_bad_flags(self):
        out = self.dir.file("bad")
        cases = [
            (["--cn", "a.contoso.test", "--key", "dsa", "--out", out], ["--key", "dsa"]),
            (["--cn", "a.contoso.test", "--days", "0", "--out", out], ["--days"]),
            (["--cn", "a.contoso.test", "--not-before", "yesterday", "--out", out], ["--not-before", "yesterday"]),
            (["--cn", "a.contoso.test"], ["--out"]),
            (["--out", out], ["--cn"]),
            (["--cn", "a.contoso.test", "--san", "*.com", "--out", out], ["--san", "*.com"]),
            (["--cn", "a.contoso.test", "--san", "m*.contoso.test", "--out", out], ["--san"]),
            (["--cn", "a.contoso.test", "--bogus", "--out", out], ["--bogus"]),
            (["--cn", "a.contoso.test", "--out", self.dir.file("missing-dir/x")], ["missing-dir"]),
        ]
        for args, words in cases:
            with self.subTest(args=args):
                p = run(["cert", "new", *args], check=False)
                self.assertNotEqual(p.returncode, 0, p.stdout + p.stderr)
                self.assertNotIn("wrote", p.stdout)
                message = p.stderr.strip()
                self.assertTrue(message, "no message on stderr")
                self.assertLessEqual(len(message.splitlines()), 4, f"not one clear message:\n{message}")
                for w in words:
                    self.assertIn(w, message)
                self.assertFalse(os.path.exists(out + ".crt") or os.path.exists(out + ".key"),
                                 "files written despite the error")


class CertInspect(GatehouseTestCase):

    def setUp(self):
        super().setUp()
        self.cert = Cert(self.dir.path, "mail", "mail.contoso.test",
                         ["mail.contoso.test", "autodiscover.contoso.test"], key="rsa2048")

    def test_text(self):
        p = run(["cert", "inspect", self.cert.cert])
        props = parse_list(p.stdout)
        der = der_of(self.cert.cert)
        self.assertEqual(props["Subject"], "CN=mail.contoso.test")
        self.assertEqual(props["Issuer"], "CN=mail.contoso.test")
        self.assertEqual(props["Thumbprint"], hashlib.sha1(der).hexdigest().upper())
        self.assertRegex(props["Thumbprint"], r"^[0-9A-F]{40}$")
        self.assertEqual(props["CertificateDomains"], "{mail.contoso.test, autodiscover.contoso.test}")
        self.assertEqual(props["PublicKeySize"], "2048")
        self.assertEqual(props["IsSelfSigned"], "True")
        self.assertEqual(props["HasPrivateKey"], "True")
        self.assertEqual(props["Sha256Pin"], spki_pin(self.cert.cert))
        self.assertIn("Server Authentication", props["EnhancedKeyUsage"])
        self.assertEqual(props["SignatureAlgorithm"], "sha256WithRSAEncryption")
        for name in ("NotBefore", "NotAfter"):
            iso(props[name])

    def test_json(self):
        p = run(["cert", "inspect", "--json", self.cert.cert])
        doc = json.loads(p.stdout)
        self.assertEqual(len(doc), 1)
        self.assertEqual(doc[0]["file"], self.cert.cert)
        info = doc[0]["certificates"][0]
        der = der_of(self.cert.cert)
        self.assertEqual(info["Subject"], "CN=mail.contoso.test")
        self.assertEqual(info["Thumbprint"], hashlib.sha1(der).hexdigest().upper())
        self.assertEqual(info["Thumbprint"], self.cert.thumbprint)
        self.assertEqual(info["CertificateDomains"], ["mail.contoso.test", "autodiscover.contoso.test"])
        self.assertEqual(info["PublicKeySize"], 2048)
        self.assertEqual(info["KeyType"], "RSA")
        self.assertIs(info["IsSelfSigned"], True)
        self.assertIs(info["HasPrivateKey"], True)
        self.assertEqual(info["Sha256Pin"], spki_pin(self.cert.cert))
        serial = openssl("x509", "-in", self.cert.cert, "-noout", "-serial").stdout.strip().split("=", 1)[1]
        self.assertEqual(info["SerialNumber"].lstrip("0"), serial.upper().lstrip("0"))

    def test_has_private_key_false_without_matching_key(self):
        os.rename(self.cert.key, self.dir.file("elsewhere.key"))
        info = json.loads(run(["cert", "inspect", "--json", self.cert.cert]).stdout)[0]["certificates"][0]
        self.assertIs(info["HasPrivateKey"], False)
        # A key beside it that belongs to another certificate does not count either.
        other = Cert(self.dir.path, "other", "other.contoso.test", key="rsa2048")
        os.rename(other.key, self.cert.key)
        self.assertEqual(parse_list(run(["cert", "inspect", self.cert.cert]).stdout)["HasPrivateKey"], "False")

    def test_chain_file_and_several_files(self):
        second = Cert(self.dir.path, "second", "second.contoso.test", key="ec384")
        bundle = self.dir.file("bundle.pem")
        with open(bundle, "w") as out, open(self.cert.cert) as first_pem, open(second.cert) as second_pem:
            out.write(first_pem.read() + second_pem.read())
        doc = json.loads(run(["cert", "inspect", "--json", bundle, second.cert]).stdout)
        self.assertEqual([len(d["certificates"]) for d in doc], [2, 1])
        self.assertEqual([c["Thumbprint"] for c in doc[0]["certificates"]], [self.cert.thumbprint, second.thumbprint])
        self.assertEqual(doc[1]["certificates"][0]["PublicKeySize"], 384)
        self.assertIs(doc[1]["certificates"][0]["HasPrivateKey"], True)

    def test_bad_files(self):
        p = run(["cert", "inspect", self.dir.file("nope.crt")], check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("nope.crt", p.stderr)
        junk = self.dir.write("junk.crt", "not a certificate\n")
        p = run(["cert", "inspect", junk], check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(junk, p.stderr)
        self.assertEqual(p.stdout, "")


class CertPin(GatehouseTestCase):

    def test_pin_backend(self):
        cert = Cert(self.dir.path, "mbx01", "MBX01", ["mbx01.contoso.test"], key="rsa2048")
        backend = self.backend(EchoBackend(cert))
        p = run(["cert", "pin", backend.address])
        props = parse_list(p.stdout)
        self.assertEqual(props["Thumbprint"], cert.thumbprint)
        self.assertEqual(props["Sha256Pin"], cert.pin())
        self.assertEqual(props["Sha256Pin"], spki_pin(cert.cert))
        self.assertEqual(props["Subject"], "CN=MBX01")
        self.assertIn("mbx01.contoso.test", props["CertificateDomains"])
        # Ready to paste into [[server]].
        self.assertRegex(p.stdout, r'(?m)^pin = "' + re.escape(cert.pin()) + '"')

    def test_pin_sni_selects_certificate(self):
        a = Cert(self.dir.path, "a", "a.contoso.test", key="ec256")
        b = Cert(self.dir.path, "b", "b.contoso.test", key="rsa2048")
        echo = self.backend(EchoBackend())
        gh = self.start(config(
            server_section(), certificate_section("a", a), certificate_section("b", b),
            '[[listener]]\nname = "tls"\nbind = "127.0.0.1:0"\nmode = "l4"\npool = "echo"\n',
            f'[[server]]\nname = "echo1"\naddress = "{echo.address}"\n',
            '[[pool]]\nname = "echo"\nservers = ["echo1"]\ntls = "plain"\n'))
        target = f"127.0.0.1:{gh.port('tls')}"
        for sni, cert in (("a.contoso.test", a), ("b.contoso.test", b)):
            with self.subTest(sni=sni):
                props = parse_list(run(["cert", "pin", target, "--sni", sni]).stdout)
                self.assertEqual(props["Thumbprint"], cert.thumbprint)
                self.assertEqual(props["Sha256Pin"], cert.pin())
        gh.wait_access(listener="tls", sni="b.contoso.test", certificate="b")

    def test_pin_errors(self):
        for target, words in (("no-port-here", ["no-port-here", "HOST:PORT"]),
                              (f"127.0.0.1:{harness.free_port()}", ["cannot connect"])):
            with self.subTest(target=target):
                p = run(["cert", "pin", target], check=False)
                self.assertNotEqual(p.returncode, 0)
                for w in words:
                    self.assertIn(w, p.stderr)


class VersionAndHelp(unittest.TestCase):

    def setUp(self):
        if not os.path.exists(harness.GATEHOUSE):
            self.fail(f"gatehouse binary not found at {harness.GATEHOUSE}")

    def test_version(self):
        p = run(["--version"])
        self.assertRegex(p.stdout.strip(), r"^gatehouse \d+\.\d+\.\d+")

    def test_help(self):
        p = run(["help"])
        for command in ("run", "demo", "check", "cert"):
            self.assertRegex(p.stdout, r"(?m)^\s+" + command + r"\b")

    def test_help_run(self):
        p = run(["help", "run"])
        self.assertIn("--config", p.stdout)
        self.assertIn("-c", p.stdout)
        self.assertIn("SIGHUP", p.stdout)

    def test_help_unknown_command(self):
        p = run(["help", "frobnicate"], check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("frobnicate", p.stderr)

    def test_run_flag_errors(self):
        p = run(["run"], check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("--config", p.stderr)
        p = run(["run", "-c", "/nonexistent/gatehouse.toml"], check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("/nonexistent/gatehouse.toml", p.stderr)
        p = run(["run", "-c", os.path.abspath(__file__), "--bogus"], check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("--bogus", p.stderr)

    def test_unknown_command_named(self):
        # "Bad input anywhere gets one clear message naming the ... flag":
        # a mistyped command should be named, not answered with a generic
        # "A subcommand is required".
        for args in (["frobnicate"], ["cert", "frobnicate"]):
            with self.subTest(args=args):
                p = run(args, check=False)
                self.assertNotEqual(p.returncode, 0)
                self.assertIn("frobnicate", p.stderr)


if __name__ == "__main__":
    unittest.main()
