"""The binary uses BoringSSL (Debian's android-libboringssl: libssl.so.0 and
libcrypto.so.0 under /usr/lib/x86_64-linux-gnu/android), never OpenSSL 3."""

import os
import re
import subprocess
import unittest

import harness
from harness import Cert, EchoBackend, GatehouseTestCase, certificate_section, config, server_section

BORINGSSL_DIR = "/usr/lib/x86_64-linux-gnu/android/"
OPENSSL3 = re.compile(r"\blib(ssl|crypto)\.so\.3\b")


class Link(GatehouseTestCase):

    def test_ldd(self):
        p = subprocess.run(["ldd", harness.GATEHOUSE], capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        libs = {}
        for line in p.stdout.splitlines():
            m = re.match(r"\s*(\S+) => (\S+)", line)
            if m:
                libs[m.group(1)] = m.group(2)
        self.assertNotIn("not found", p.stdout, p.stdout)
        for name in ("libssl.so.0", "libcrypto.so.0"):
            self.assertIn(name, libs, p.stdout)
            self.assertTrue(os.path.realpath(libs[name]).startswith(BORINGSSL_DIR) or
                            libs[name].startswith(BORINGSSL_DIR), f"{name} => {libs[name]}")
        self.assertIsNone(OPENSSL3.search(p.stdout), f"links OpenSSL 3:\n{p.stdout}")

    def test_needed_entries(self):
        p = subprocess.run(["readelf", "-d", harness.GATEHOUSE], capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            self.skipTest("readelf unavailable: " + p.stderr)
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", p.stdout)
        self.assertIn("libssl.so.0", needed)
        self.assertIn("libcrypto.so.0", needed)
        self.assertFalse([n for n in needed if OPENSSL3.search(n)], needed)

    def test_running_process_maps_boringssl_only(self):
        cert = Cert(self.dir.path, "mail", "mail.contoso.test")
        echo = self.backend(EchoBackend())
        gh = self.start(config(
            server_section(), certificate_section("mail", cert),
            '[[listener]]\nname = "tls"\nbind = "127.0.0.1:0"\nmode = "l4"\npool = "echo"\n',
            f'[[server]]\nname = "echo1"\naddress = "{echo.address}"\n',
            '[[pool]]\nname = "echo"\nservers = ["echo1"]\ntls = "plain"\n'))
        # One real handshake, so that the TLS code has run.
        got, out = harness.served_certificate(gh.port("tls"), "mail.contoso.test")
        self.assertEqual(got, cert.sha256, out)
        with open(f"/proc/{gh.proc.pid}/maps") as f:
            maps = f.read()
        paths = set(re.findall(r"(/\S+\.so[.\d]*)$", maps, re.M))
        self.assertTrue(any(p.startswith(BORINGSSL_DIR) and "libssl.so.0" in p for p in paths), sorted(paths))
        self.assertTrue(any(p.startswith(BORINGSSL_DIR) and "libcrypto.so.0" in p for p in paths), sorted(paths))
        self.assertFalse([p for p in paths if OPENSSL3.search(p)], sorted(paths))


if __name__ == "__main__":
    unittest.main()
