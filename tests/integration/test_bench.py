"""`gatehouse bench handshake` checked against what the server saw: one
gatehouse l4 listener (an ECDSA and an RSA certificate for the same names, a
pool with an EchoBackend), and the tool's claims about full and resumed
handshakes and certificate types compared with gatehouse's own access log
(one JSON line per connection with "resumed" and "certificate"). Also: the
--json figures are consistent, and a server that will not resume makes the
tool fail loudly. The same checks, shorter, for bench/ssl_client.py, the
OpenSSL client compare.sh runs beside it."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import unittest

import harness
from harness import Cert, EchoBackend, Gatehouse, TempDir, certificate_section, config, free_port, server_section

COUNT = 200
SSL_CLIENT = os.path.join(harness.HERE, "..", "..", "bench", "ssl_client.py")
CONCURRENCY = 8

# Both certificates cover *.bench.test; each test sends its own SNI, so its
# connections can be told apart in the one access log.
LISTENER = '[[listener]]\nname = "bench"\nbind = "127.0.0.1:0"\nmode = "l4"\npool = "echo"\n'


def echo_pool(echo):
    return (f'[[server]]\nname = "echo1"\naddress = "{echo.address}"\n'
            '[[pool]]\nname = "echo"\nservers = ["echo1"]\ntls = "plain"\n')


def wait_listening(port):
    """Until 127.0.0.1:PORT accepts connections (10 s at most)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)


@contextlib.contextmanager
def never_resuming_server(cert):
    """openssl s_server with no tickets and no session cache: it never resumes.
    Yields its port."""
    port = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", str(port), "-cert", cert.cert, "-key", cert.key, "-www",
         "-quiet", "-no_ticket", "-num_tickets", "0", "-no_cache"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)
        yield port
    finally:
        server.kill()
        server.wait()
        server.stdin.close()


class BenchHandshake(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(harness.GATEHOUSE):
            raise unittest.SkipTest(f"gatehouse binary not found at {harness.GATEHOUSE}")
        cls.dir = TempDir()
        d = cls.dir.path
        cls.ec = Cert(d, "ec", "bench.test", ["bench.test", "*.bench.test"], key="ec256")
        cls.rsa = Cert(d, "rsa", "bench.test", ["bench.test", "*.bench.test"], key="rsa2048")
        cls.echo = EchoBackend()
        path = cls.dir.write("gatehouse.toml", config(server_section(workers=1),
                                                      certificate_section("ec", cls.ec),
                                                      certificate_section("rsa", cls.rsa),
                                                      LISTENER, echo_pool(cls.echo)))
        cls.gh = Gatehouse(path)
        cls.port = cls.gh.port("bench")
        cls.target = f"127.0.0.1:{cls.port}"

    @classmethod
    def tearDownClass(cls):
        cls.gh.stop()
        cls.echo.stop()
        cls.dir.cleanup()

    # --- helpers -----------------------------------------------------------

    def bench(self, *args, expect_ok=True):
        """Runs the tool with --json; returns (CompletedProcess, parsed JSON)."""
        out = self.dir.file(f"bench-{time.monotonic_ns()}.json")
        p = harness.run(["bench", "handshake", *args, "--json", out], timeout=60, check=False)
        if expect_ok and p.returncode != 0:
            self.fail(f"bench handshake {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        with open(out) as f:
            return p, json.load(f)

    def ssl_client(self, target, sni, mode, sig="ecdsa", expect=0):
        """bench/ssl_client.py for about a second with two processes; returns
        (CompletedProcess, parsed JSON)."""
        out = self.dir.file(f"ssl-client-{time.monotonic_ns()}.json")
        p = subprocess.run([sys.executable, SSL_CLIENT, "--target", target, "--sni", sni, "--mode", mode,
                            "--sig", sig, "--processes", "2", "--cpu", "any", "--duration", "1",
                            "--server-pid", str(self.gh.proc.pid), "--json", out],
                           capture_output=True, text=True, timeout=60 * harness.SLOW)
        self.assertEqual(p.returncode, expect,
                         f"ssl_client {mode} {sig} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        with open(out) as f:
            return p, json.load(f)

    def server_lines(self, sni, n):
        """Waits for `n` access log lines with this SNI; returns them (and
        checks no more arrive shortly after)."""
        def lines():
            return [o for o in list(self.gh.access) if o.get("sni") == sni]

        deadline = time.monotonic() + 15 * harness.SLOW
        while len(lines()) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        got = lines()
        self.assertEqual(len(got), n, f"gatehouse logged {len(got)} connections with SNI {sni}, expected {n}")
        return got

    def assertConsistent(self, j, count):
        self.assertEqual(j["total"], count)
        self.assertEqual(j["errors_total"], 0, j["errors"])
        self.assertEqual(j["full"] + j["resumed"], j["total"])
        self.assertGreater(j["duration_seconds"], 0)
        self.assertAlmostEqual(j["handshakes_per_second"], j["total"] / j["duration_seconds"],
                               delta=0.05 * j["handshakes_per_second"])
        lat = j["latency_ms"]
        self.assertGreater(lat["p50"], 0)
        self.assertLessEqual(lat["p50"], lat["p90"])
        self.assertLessEqual(lat["p90"], lat["p99"])
        self.assertLessEqual(lat["p99"], lat["max"])
        self.assertTrue(j["ok"])
        self.assertEqual(j["problems"], [])

    # --- tests -------------------------------------------------------------

    def test_resume_never_gives_only_full_handshakes(self):
        sni = "never.bench.test"
        _, j = self.bench("--target", self.target, "--sni", sni, "--resume", "never", "--count", str(COUNT),
                          "--concurrency", str(CONCURRENCY), "--server-pid", str(self.gh.proc.pid))
        self.assertConsistent(j, COUNT)
        self.assertEqual((j["full"], j["resumed"]), (COUNT, 0))
        # Server side: every one of the COUNT connections was a full handshake.
        lines = self.server_lines(sni, COUNT)
        self.assertEqual(sum(1 for o in lines if o["resumed"] is False), COUNT)
        # The CPU figure is there (its size is not asserted: tests assert behaviour).
        self.assertIsInstance(j["server_cpu_us_per_handshake"], (int, float))
        self.assertGreaterEqual(j["server_cpu_us_per_handshake"], 0)

    def resume_always(self, version, sni):
        p, j = self.bench("--target", self.target, "--sni", sni, "--resume", "always", "--count", str(COUNT),
                          "--concurrency", str(CONCURRENCY), "--tls", version, expect_ok=False)
        warmup = j.get("warmup", {}).get("handshakes", 0)
        self.assertEqual(warmup, CONCURRENCY, "one warm-up handshake per connection loop")
        if p.returncode != 0:
            hint = ""
            if version == "1.3" and j.get("warmup", {}).get("without_session"):
                hint = ("\nGatehouse sent no TLS 1.3 session ticket to a client that has not been sent data: "
                        "BoringSSL holds NewSessionTicket back until the server's first write, so the front "
                        "handshake must be followed by a zero-byte SSL_write to flush the tickets.")
            self.fail(f"bench --resume always --tls {version} exited {p.returncode}:\n{p.stdout}\n{p.stderr}{hint}")
        self.assertConsistent(j, COUNT)
        self.assertEqual((j["full"], j["resumed"]), (0, COUNT))
        self.assertEqual(j["tls_versions"], {f"TLSv{version}": COUNT})
        # Server side: the warm-up connections were full, all the others resumed.
        lines = self.server_lines(sni, COUNT + warmup)
        self.assertEqual(sum(1 for o in lines if o["resumed"] is True), COUNT)
        self.assertEqual(sum(1 for o in lines if o["resumed"] is False), warmup)

    def test_resume_always_gives_only_resumed_handshakes_tls13(self):
        self.resume_always("1.3", "always13.bench.test")

    def test_resume_always_gives_only_resumed_handshakes_tls12(self):
        self.resume_always("1.2", "always12.bench.test")

    def test_sig_chooses_the_certificate_type(self):
        n = 20
        for sig, cert, key_type in (("rsa", "rsa", "RSA-2048"), ("ecdsa", "ec", "ECDSA P-256")):
            for version in ("1.3", "1.2"):
                with self.subTest(sig=sig, tls=version):
                    sni = f"{sig}{version.replace('.', '')}.bench.test"
                    _, j = self.bench("--target", self.target, "--sni", sni, "--sig", sig, "--tls", version,
                                      "--count", str(n), "--concurrency", "4")
                    self.assertConsistent(j, n)
                    self.assertEqual(j["certificate_key_types"], {key_type: n})
                    lines = self.server_lines(sni, n)
                    self.assertEqual({o["certificate"] for o in lines}, {cert})

    def test_sni_names_rotate(self):
        names = ["a.bench.test", "b.bench.test", "c.bench.test"]
        _, j = self.bench("--target", self.target, "--sni", ",".join(names), "--count", "30", "--concurrency", "3")
        self.assertConsistent(j, 30)
        for name in names:
            self.server_lines(name, 10)

    def test_refused_resumption_fails_loudly(self):
        with never_resuming_server(self.ec) as port:
            for version in ("1.3", "1.2"):
                with self.subTest(tls=version):
                    p, j = self.bench("--target", f"127.0.0.1:{port}", "--resume", "always", "--count", "20",
                                      "--concurrency", "2", "--tls", version, expect_ok=False)
                    self.assertNotEqual(p.returncode, 0, p.stdout + p.stderr)
                    self.assertIn("FAILED", p.stderr)
                    self.assertIn("--resume always", p.stderr)
                    self.assertFalse(j["ok"])
                    self.assertEqual(j["resumed"], 0)
                    self.assertEqual(j["full"], 20)
                    self.assertTrue(j["problems"])
            # Control: the same server satisfies --resume never.
            p, j = self.bench("--target", f"127.0.0.1:{port}", "--resume", "never", "--count", "10",
                              "--concurrency", "2")
            self.assertEqual(j["full"], 10)

    def test_openssl_client_full_and_resumed_as_the_server_saw_them(self):
        for mode, sig, cert, key_type in (("full", "ecdsa", "ec", "ECDSA P-256"), ("full", "rsa", "rsa", "RSA-2048"),
                                          ("resumed", "ecdsa", "ec", "ECDSA P-256")):
            with self.subTest(mode=mode, sig=sig):
                sni = f"openssl-{mode}-{sig}.bench.test"
                _, j = self.ssl_client(self.target, sni, mode, sig)
                total = j["total"]
                self.assertGreater(total, 0)
                self.assertEqual(j["errors_total"], 0, j["errors"])
                self.assertTrue(j["ok"], j["problems"])
                self.assertEqual(j["certificate_key_types"], {key_type: total})
                self.assertEqual(j["tls_versions"], {"TLSv1.3": total})
                self.assertIsInstance(j["server_cpu_us_per_handshake"], (int, float))
                warmup = j.get("warmup", {}).get("handshakes", 0)
                if mode == "resumed":
                    self.assertEqual((j["full"], j["resumed"]), (0, total))
                    self.assertEqual(warmup, 2, "one warm-up handshake per process")
                else:
                    self.assertEqual((j["full"], j["resumed"]), (total, 0))
                # Server side: what the client claimed, connection by connection.
                lines = self.server_lines(sni, total + warmup)
                self.assertEqual({o["certificate"] for o in lines}, {cert})
                self.assertEqual(sum(1 for o in lines if o["resumed"] is True), total if mode == "resumed" else 0)

    def test_openssl_client_fails_loudly_without_resumption_or_with_another_key_type(self):
        with never_resuming_server(self.ec) as port:
            p, j = self.ssl_client(f"127.0.0.1:{port}", "bench.test", "resumed", expect=3)
            self.assertIn("FAILED", p.stderr)
            self.assertFalse(j["ok"])
            self.assertEqual(j["resumed"], 0)
            self.assertGreater(j["full"], 0)
            # An ECDSA-only server cannot serve a client that accepts only RSA.
            p, j = self.ssl_client(f"127.0.0.1:{port}", "bench.test", "full", "rsa", expect=1)
            self.assertEqual(j["total"], 0)
            self.assertGreater(j["errors_total"], 0)

    def test_bad_flags_are_refused(self):
        for args, word in ((["--target", "nonsense"], "--target"),
                           (["--target", self.target, "--duration", "ten"], "--duration"),
                           (["--target", self.target, "--resume", "sometimes"], "--resume"),
                           (["--target", self.target, "--server-pid", "999999999"], "--server-pid")):
            with self.subTest(args=args):
                p = harness.run(["bench", "handshake", *args], check=False)
                self.assertNotEqual(p.returncode, 0)
                self.assertIn(word, p.stderr)


if __name__ == "__main__":
    unittest.main()
