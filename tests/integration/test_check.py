"""`gatehouse check -c FILE [--exchange] [--strict]`: every error with
file:line and key, the certificate coverage of every route host name,
warnings, the Exchange lints of --exchange (and the shipped examples passing
them), exit codes (0 ok, 1 errors, 2 warnings only with --strict).

Configs are written with marker comments ("# @name") at the ends of lines so
that each test knows which line an error must name."""

import os
import re
import shutil
import subprocess

from harness import Cert, GatehouseTestCase, run

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "conf", "examples")


def line_of(text, marker):
    """1-based number of the line carrying `# @marker`."""
    for n, line in enumerate(text.splitlines(), 1):
        if line.rstrip().endswith("# @" + marker):
            return n
    raise AssertionError(f"marker {marker} not in config:\n{text}")


def openssl_cert(directory, stem, cn, *addext, key="ec", digest=None, days=365):
    """A certificate shape `cert new` does not make, from the plain openssl CLI."""
    crt, keyfile = os.path.join(directory, stem + ".crt"), os.path.join(directory, stem + ".key")
    args = ["openssl", "req", "-x509", "-nodes", "-subj", "/CN=" + cn, "-days", str(days), "-keyout", keyfile,
            "-out", crt]
    args += ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if key == "ec" else ["-newkey", key]
    if digest:
        args.append("-" + digest)
    for ext in addext:
        args += ["-addext", ext]
    subprocess.run(args, check=True, capture_output=True, timeout=60)
    return crt, keyfile


BASE = """\
[global]
workers = 1
admin = ""
{server_extra}

[[certificate]]                                   # @cert-san
name = "san"                                      # @cert-san-name
cert = "{san_crt}"                                # @cert-san-cert
key = "{san_key}"                                 # @cert-san-key

[[certificate]]
name = "wild"
cert = "{wild_crt}"
key = "{wild_key}"

[[listener]]
name = "https"
bind = "127.0.0.1:0"                              # @bind
mode = "l7"
{listener_extra}

[[route]]                                         # @route
listener = "https"
hosts = [{hosts}]                                 # @hosts
pool = "owa"                                      # @route-pool
{route_extra}

[[server]]
name = "mbx01"                                    # @server-name
address = "127.0.0.1:8443"

[[pool]]
name = "owa"
servers = ["mbx01"]                               # @servers
tls = "{pool_tls}"                                # @pool-tls
{extra}
"""


class Check(GatehouseTestCase):

    def setUp(self):
        super().setUp()
        self.san = Cert(self.dir.path, "san", "mail.contoso.com", ["mail.contoso.com", "autodiscover.contoso.com"])
        self.wild = Cert(self.dir.path, "wild", "*.contoso.com", ["*.contoso.com"], key="rsa2048")

    def write(self, hosts=("mail.contoso.com",), name="gatehouse.toml", **fields):
        values = dict(san_crt=self.san.cert, san_key=self.san.key, wild_crt=self.wild.cert, wild_key=self.wild.key,
                      server_extra="", listener_extra="", route_extra="", pool_tls="plain", extra="",
                      hosts=", ".join(f'"{h}"' for h in hosts))
        values.update(fields)
        text = BASE.format(**values)
        return self.dir.write(name, text), text

    def check(self, path, *flags):
        return run(["check", "-c", path, *flags], check=False)

    def assertError(self, path, text, marker, *words, p=None):
        """check exits 1 and prints `path:line:` (line of `marker`) on a line
        that also holds each of `words`."""
        p = p or self.check(path)
        self.assertEqual(p.returncode, 1, f"check should exit 1:\n{p.stdout}\n{p.stderr}")
        line = line_of(text, marker)
        prefix = f"{path}:{line}:"
        hits = [l for l in p.stderr.splitlines() if l.startswith(prefix)]
        self.assertTrue(hits, f"no error at {prefix} (marker {marker}); stderr:\n{p.stderr}")
        for word in words:
            self.assertTrue(any(word in h for h in hits), f"{word!r} not in the error at {prefix}:\n{p.stderr}")
        return p

    # --- a good config and its coverage table ---------------------------------

    def test_coverage_exact_and_wildcard(self):
        path, _ = self.write(hosts=("mail.contoso.com", "Autodiscover.Contoso.com", "owa.contoso.com",
                                    "*.contoso.com"))
        p = self.check(path)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(p.stderr, "")
        out = p.stdout
        self.assertRegex(out, r"(?m)^listener https \(l7, 127\.0\.0\.1:0\): default certificate san$")
        self.assertRegex(out, r"(?m)^\s+mail\.contoso\.com\s+san\s+exact\s*$")
        self.assertRegex(out, r"(?m)^\s+autodiscover\.contoso\.com\s+san\s+exact\s*$")
        self.assertRegex(out, r"(?m)^\s+owa\.contoso\.com\s+wild\s+wildcard\s*$")
        self.assertRegex(out, r"(?m)^\s+\*\.contoso\.com\s+wild\s+wildcard\s*$")
        self.assertRegex(out, r"(?m)^check: 0 errors, 0 warnings$")
        self.assertNotIn("MISSING", out)
        self.assertEqual(self.check(path, "--strict").returncode, 0)

    def test_missing_host(self):
        path, text = self.write(hosts=("mail.contoso.com", "smtp.fabrikam.com", "contoso.com", "a.b.contoso.com"))
        p = self.check(path)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertRegex(p.stdout, r"(?m)^\s+mail\.contoso\.com\s+san\s+exact\s*$")
        for host in ("smtp.fabrikam.com", "contoso.com", "a.b.contoso.com"):
            self.assertRegex(p.stdout, r"(?m)^\s+" + re.escape(host) + r"\s+-\s+MISSING\s*$")
            self.assertRegex(p.stderr, r"(?m)^" + re.escape(path) + r":\d+: route\[0\]\.hosts: .*covers " +
                             re.escape(host) + ":")
        self.assertRegex(p.stdout, r"(?m)^check: 3 errors")
        # The near misses are explained.
        self.assertIn("does not cover the bare contoso.com", p.stderr)
        self.assertIn("covers exactly one label", p.stderr)
        self.assertEqual(self.check(path, "--strict").returncode, 1)

    def test_missing_host_error_names_hosts_line(self):
        # The error's key is route[N].hosts, so its line must be the one of
        # the hosts key (as for every other key error), not the [[route]] header.
        path, text = self.write(hosts=("mail.contoso.com", "smtp.fabrikam.com"))
        self.assertError(path, text, "hosts", "route[0].hosts", "smtp.fabrikam.com")

    # --- errors with file:line ------------------------------------------------

    def test_unknown_key(self):
        path, text = self.write(listener_extra='colour = "blue"                                   # @unknown')
        self.assertError(path, text, "unknown", "colour")

    def test_wrong_type(self):
        path, text = self.write(listener_extra='strict_sni = "yes"                                # @type')
        self.assertError(path, text, "type", "strict_sni", "true or false")

    def test_bad_duration(self):
        path, text = self.write(listener_extra='idle_timeout = "5 minutes"                        # @duration')
        self.assertError(path, text, "duration", "idle_timeout", "5 minutes")

    def test_bad_address(self):
        path, text = self.write(extra='[[server]]\nname = "mbx02"\naddress = "10.0.1.12"                     # @addr')
        self.assertError(path, text, "addr", "address", "10.0.1.12")
        path, text = self.write(name="v6.toml", extra='[[server]]\nname = "mbx02"\n'
                                                      'address = "::1:443"                        # @addr')
        self.assertError(path, text, "addr", "address", "brackets")

    def test_duplicate_name(self):
        path, text = self.write(extra='[[server]]\nname = "mbx01"                           # @dup\n'
                                      'address = "127.0.0.1:8444"')
        p = self.assertError(path, text, "dup", "mbx01", "duplicate")
        # Names where the first one is: its name key or its [[server]] header.
        first = line_of(text, "server-name")
        self.assertRegex(p.stderr, f"already defined at line ({first}|{first - 1})\\b")

    def test_dangling_route_to_pool(self):
        _, text = self.write()
        text = text.replace('pool = "owa"                                      # @route-pool',
                            'pool = "owa2"                                     # @route-pool')
        path = self.dir.write("gatehouse.toml", text)
        self.assertError(path, text, "route-pool", "owa2")

    def test_dangling_pool_to_server(self):
        path, text = self.write()
        text = text.replace('servers = ["mbx01"]', 'servers = ["mbx01", "mbx09"]')
        path = self.dir.write("gatehouse.toml", text)
        self.assertError(path, text, "servers", "mbx09")

    def test_dangling_listener_to_certificate(self):
        path, text = self.write(listener_extra='certificates = ["san", "nope"]                   # @certs')
        self.assertError(path, text, "certs", "nope")
        path, text = self.write(name="d.toml",
                                listener_extra='default_certificate = "nope"                      # @default')
        self.assertError(path, text, "default", "default_certificate", "nope")

    def test_unreadable_file(self):
        missing = self.dir.file("no-such.crt")
        path, text = self.write(san_crt=missing)
        self.assertError(path, text, "cert-san-cert", "no-such.crt")
        path, text = self.write(name="t.toml", server_extra=f'ticket_keys = "{self.dir.file("no-such.keys")}" # @tk')
        self.assertError(path, text, "tk", "ticket_keys", "no-such.keys")

    def test_mode_specific_key_in_wrong_mode(self):
        # pool is for l4/passthrough listeners, not l7.
        path, text = self.write(listener_extra='pool = "owa"                                      # @l7pool')
        self.assertError(path, text, "l7pool", "pool")
        # paths only for routes on l7 listeners.
        path, text = self.write(name="l4.toml", route_extra='paths = ["/owa"]                                  # @paths')
        text = text.replace('mode = "l7"', 'mode = "l4"')
        path = self.dir.write("l4.toml", text)
        self.assertError(path, text, "paths", "paths")

    def test_key_mismatch(self):
        path, text = self.write(san_key=self.wild.key)
        p = self.check(path)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn(self.wild.key, p.stderr)
        self.assertIn("does not match", p.stderr)
        lines = (line_of(text, "cert-san"), line_of(text, "cert-san-key"))
        self.assertTrue(any(f"{path}:{n}:" in p.stderr for n in lines),
                        f"the error names neither the [[certificate]] line nor its key line {lines}:\n{p.stderr}")
        # `run` refuses the same file (as an l4 listener, which this build
        # serves) with the same cause and starts nothing.
        path = self.dir.write("l4.toml", text.replace('mode = "l7"', 'mode = "l4"'))
        r = run(["run", "-c", path], check=False, timeout=30)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(self.wild.key, r.stderr)

    def test_all_errors_reported_at_once(self):
        path, text = self.write(
            listener_extra='colour = "blue"                                   # @unknown\n'
                           'idle_timeout = "soon"                             # @duration',
            extra='[[server]]\nname = "mbx02"\naddress = "nowhere"                         # @addr')
        p = self.check(path)
        for marker in ("unknown", "duration", "addr"):
            self.assertError(path, text, marker, p=p)
        self.assertRegex(p.stdout, r"(?m)^check: 3 errors")

    def test_config_file_missing(self):
        p = self.check(self.dir.file("nope.toml"))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("nope.toml", p.stderr)

    def test_bad_ticket_key_file(self):
        # `run` refuses a ticket key file that is not 80 (or 48) byte keys;
        # check must report it too rather than say the config is fine.
        good = self.dir.file("good.keys")
        with open(good, "wb") as f:
            f.write(os.urandom(80))
        path, text = self.write(name="good.toml", server_extra=f'ticket_keys = "{good}"   # @tk')
        p = self.check(path)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        bad = self.dir.file("bad.keys")
        with open(bad, "wb") as f:
            f.write(os.urandom(10))
        path, text = self.write(name="bad.toml", server_extra=f'ticket_keys = "{bad}"   # @tk')
        r = run(["run", "-c", self.dir.write("bad-l4.toml", text.replace('mode = "l7"', 'mode = "l4"'))],
                check=False, timeout=30)
        self.assertNotEqual(r.returncode, 0, "run accepted a 10-byte ticket key file")
        self.assertError(path, text, "tk", "ticket_keys", bad)

    def test_bad_pool_ca_file(self):
        # A ca file without any certificate: `run` refuses it, check must too.
        path, text = self.write(name="good.toml", pool_tls="verify",
                                extra=f'ca = "{self.san.cert}"                              # @ca')
        p = self.check(path)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        junk = self.dir.write("junk-ca.pem", "this is not a certificate\n")
        path, text = self.write(name="bad.toml", pool_tls="verify",
                                extra=f'ca = "{junk}"                              # @ca')
        r = run(["run", "-c", self.dir.write("bad-l4.toml", text.replace('mode = "l7"', 'mode = "l4"'))],
                check=False, timeout=30)
        self.assertNotEqual(r.returncode, 0, "run accepted a ca file without certificates")
        self.assertIn(junk, r.stderr)
        self.assertError(path, text, "ca", "ca", junk)

    # --- warnings and --strict ------------------------------------------------

    def test_certificate_warnings(self):
        # A SHA-1 signature and an EKU without serverAuth: each warned at its
        # [[certificate]] line, naming the certificate.
        cases = [("sha1", openssl_cert(self.dir.path, "sha1", "mail.contoso.com", "subjectAltName=DNS:mail.contoso.com",
                                       key="rsa:2048", digest="sha1"), "sha1WithRSAEncryption"),
                 ("eku", openssl_cert(self.dir.path, "eku", "mail.contoso.com", "subjectAltName=DNS:mail.contoso.com",
                                      "extendedKeyUsage=clientAuth"), "Server Authentication")]
        for what, (crt, keyfile), word in cases:
            with self.subTest(what=what):
                path, text = self.write(name=what + ".toml", san_crt=crt, san_key=keyfile)
                p = self.check(path)
                self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                prefix = f"warning: {path}:{line_of(text, 'cert-san')}:"
                hits = [l for l in p.stdout.splitlines() if l.startswith(prefix) and word in l]
                self.assertTrue(hits, f"no {what} warning at {prefix}:\n{p.stdout}")
                self.assertIn('"san"', hits[0])
                self.assertEqual(self.check(path, "--strict").returncode, 2)

    def test_single_label_wildcard_certificate_refused(self):
        crt, keyfile = openssl_cert(self.dir.path, "tld", "x", "subjectAltName=DNS:*.com,DNS:mail.contoso.com")
        path, text = self.write(san_crt=crt, san_key=keyfile)
        p = self.check(path)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertError(path, text, "cert-san", crt, "*.com", p=p)

    def test_wildcard_route_with_only_exact_names_warns(self):
        path, text = self.write(hosts=("*.contoso.com",), wild_crt=self.san.cert, wild_key=self.san.key)
        p = self.check(path)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertRegex(p.stdout, r"(?m)^\s+\*\.contoso\.com\s+.*exact names only\s*$")
        lines = (line_of(text, "route"), line_of(text, "hosts"))
        self.assertTrue(any(re.search(f"(?m)^warning: {re.escape(path)}:{n}:.*\\*\\.contoso\\.com", p.stdout)
                            for n in lines), p.stdout)
        self.assertEqual(self.check(path, "--strict").returncode, 2)

    def test_insecure_pool_warns_and_strict_exits_2(self):
        path, text = self.write(pool_tls="insecure")
        p = self.check(path)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        line = line_of(text, "pool-tls")
        self.assertRegex(p.stdout, r"(?m)^warning: " + re.escape(f"{path}:{line}:") + r".*insecure")
        self.assertRegex(p.stdout, r"(?m)^check: 0 errors, 1 warning$")
        p = self.check(path, "--strict")
        self.assertEqual(p.returncode, 2, p.stdout + p.stderr)

    def test_expiry_warnings(self):
        soon = Cert(self.dir.path, "soon", "mail.contoso.com", ["mail.contoso.com"], days=10)
        path, text = self.write(san_crt=soon.cert, san_key=soon.key)
        p = self.check(path)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        line = line_of(text, "cert-san")
        self.assertRegex(p.stdout, r"(?m)^warning: " + re.escape(f"{path}:{line}:") + r".*expires")
        self.assertEqual(self.check(path, "--strict").returncode, 2)
        old = Cert(self.dir.path, "old", "mail.contoso.com", ["mail.contoso.com", "old.fabrikam.com"], days=1,
                   not_before="2001-01-01")
        path, text = self.write(name="old.toml", san_crt=old.cert, san_key=old.key,
                                hosts=("mail.contoso.com", "old.fabrikam.com"))
        p = self.check(path)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertRegex(p.stdout, r"(?m)^warning: " + re.escape(f"{path}:{line}:") + r".*expired")
        # The valid wildcard is preferred to the expired exact name; the
        # expired certificate serves only what nothing else covers.
        self.assertRegex(p.stdout, r"(?m)^\s+mail\.contoso\.com\s+wild\s+wildcard\s*$")
        self.assertRegex(p.stdout, r"(?m)^\s+old\.fabrikam\.com\s+san \(expired\)\s+exact\s*$")

    # --- --exchange -------------------------------------------------------------

    def test_exchange_lints(self):
        # MAPI with the listener's 5m idle_timeout, /ecp open to everyone, a
        # health probe on "/", h2 offered by default beside Windows logins.
        path, text = self.write(route_extra='paths = ["/owa", "/ecp", "/mapi"]                # @paths',
                                extra='health = { kind = "http", path = "/" }            # @health')
        plain = self.check(path)
        self.assertEqual(plain.returncode, 0, plain.stdout + plain.stderr)
        self.assertRegex(plain.stdout, r"(?m)^check: 0 errors, 0 warnings$")
        self.assertEqual(self.check(path, "--strict").returncode, 0)

        p = self.check(path, "--exchange")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertRegex(p.stdout, r"(?m)^check: 0 errors, 4 warnings$")
        listener = text.splitlines().index("[[listener]]") + 1
        expected = [
            (line_of(text, "paths"), "route[0].paths", "route carries /mapi with an idle_timeout of 5m",
             'idle_timeout = "65m"'),
            (line_of(text, "paths"), "route[0].paths", "reach /ecp (the Exchange admin center)",
             'allow = ["internal ranges"]'),
            (line_of(text, "health"), 'pool "owa".health.path', 'health probes "/"', "probe /owa/healthcheck.htm"),
            (listener, 'listener "https"', "offers h2", "HTTP_1_1_REQUIRED"),
        ]
        for line, key, *words in expected:
            prefix = f"warning: {path}:{line}: {key}: "
            hits = [l for l in p.stdout.splitlines() if l.startswith(prefix) and all(w in l for w in words)]
            self.assertTrue(hits, f"no warning {prefix}{words}:\n{p.stdout}")
        p = self.check(path, "--exchange", "--strict")
        self.assertEqual(p.returncode, 2, p.stdout + p.stderr)

    def test_exchange_autodiscover_name(self):
        path, text = self.write(hosts=("mail.contoso.com", "autodiscover.fabrikam.com"),
                                listener_extra='alpn = ["http/1.1"]',
                                route_extra='paths = ["/Autodiscover"]')
        p = self.check(path, "--exchange")
        self.assertError(path, text, "hosts", "autodiscover.fabrikam.com", p=p)
        self.assertRegex(p.stdout, r"(?m)^warning: " + re.escape(f"{path}:{line_of(text, 'hosts')}: route[0].hosts: ")
                         + r".*add autodiscover\.fabrikam\.com as a SAN to certificate \"san\".*"
                         r"HTTP redirect method")

    def test_exchange_examples_are_clean(self):
        certs = os.path.join(self.dir.path, "certs")
        os.makedirs(certs)
        Cert(certs, "mail", "mail.contoso.com", key="rsa2048",
             sans=["mail.contoso.com", "mail-dc1.contoso.com", "mail-dc2.contoso.com", "autodiscover.contoso.com"])
        shutil.copy(Cert(certs, "exchange-ca", "ca.contoso.com").cert, os.path.join(certs, "exchange-ca.pem"))
        for name in ("unbound.toml", "bound.toml"):
            with self.subTest(example=name):
                path = os.path.join(self.dir.path, name)
                shutil.copy(os.path.join(EXAMPLES, name), path)
                p = self.check(path, "--exchange", "--strict")
                self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                self.assertNotIn("warning:", p.stdout)
                self.assertRegex(p.stdout, r"(?m)^check: 0 errors, 0 warnings$")


if __name__ == "__main__":
    import unittest

    unittest.main()
