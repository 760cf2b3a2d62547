"""The binary uses exactly one BoringSSL, never OpenSSL 3: either Debian's
android-libboringssl (libssl.so.0 and libcrypto.so.0 under
/usr/lib/x86_64-linux-gnu/android), or the static build from Debian's source
(.ci/boringssl), and then no shared libssl or libcrypto at all. `--version` says
which."""

import os
import re
import subprocess
import unittest

import harness
from harness import Cert, EchoBackend, GatehouseTestCase, certificate_section, config, server_section

BORINGSSL_DIR = "/usr/lib/x86_64-linux-gnu/android/"
OPENSSL3 = re.compile(r"\blib(ssl|crypto)\.so\.3\b")
ANY_SHARED = re.compile(r"\blib(ssl|crypto)\.so\b")
STOCK = re.compile(r"^BoringSSL: Debian android-libboringssl \S+ \(OPENSSL_SMALL\)$", re.M)
FAST = re.compile(r"^BoringSSL: built from Debian source android-platform-external-boringssl \S+ "
                  r"without OPENSSL_SMALL \(static\)$", re.M)


def static_boringssl():
    """True when --version names the static build, False for Debian's shared one."""
    out = subprocess.run([harness.GATEHOUSE, "--version"], capture_output=True, text=True, timeout=30).stdout
    if FAST.search(out):
        return True
    if STOCK.search(out):
        return False
    raise AssertionError(f"--version names no known BoringSSL:\n{out}")


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
        self.assertIsNone(OPENSSL3.search(p.stdout), f"links OpenSSL 3:\n{p.stdout}")
        if static_boringssl():
            self.assertIsNone(ANY_SHARED.search(p.stdout), f"static BoringSSL, yet:\n{p.stdout}")
            return
        for name in ("libssl.so.0", "libcrypto.so.0"):
            self.assertIn(name, libs, p.stdout)
            self.assertTrue(os.path.realpath(libs[name]).startswith(BORINGSSL_DIR) or
                            libs[name].startswith(BORINGSSL_DIR), f"{name} => {libs[name]}")

    def test_needed_entries(self):
        p = subprocess.run(["readelf", "-d", harness.GATEHOUSE], capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            self.skipTest("readelf unavailable: " + p.stderr)
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", p.stdout)
        if static_boringssl():
            self.assertFalse([n for n in needed if ANY_SHARED.search(n)], needed)
            return
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
        self.assertFalse([p for p in paths if OPENSSL3.search(p)], sorted(paths))
        if static_boringssl():
            self.assertFalse([p for p in paths if ANY_SHARED.search(p)], sorted(paths))
            return
        self.assertTrue(any(p.startswith(BORINGSSL_DIR) and "libssl.so.0" in p for p in paths), sorted(paths))
        self.assertTrue(any(p.startswith(BORINGSSL_DIR) and "libcrypto.so.0" in p for p in paths), sorted(paths))

    def test_version_names_boringssl(self):
        out = subprocess.run([harness.GATEHOUSE, "--version"], capture_output=True, text=True, timeout=30).stdout
        self.assertTrue(out.startswith("gatehouse "), out)
        self.assertTrue(FAST.search(out) or STOCK.search(out), out)


if __name__ == "__main__":
    unittest.main()
