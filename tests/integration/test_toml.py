"""Configuration files are standard TOML: the shipped examples, the config
`gatehouse demo` writes and every TOML block of the manuals load with
Python's tomllib, so any TOML tool can read and write them. Files that still
call the settings table [server] (beside [[server]] tables, which standard
TOML refuses) keep working, with a warning naming the file and line."""

import glob
import os
import re
import shutil
import signal
import subprocess
import threading
import tomllib
import unittest

import harness
from harness import Cert, GatehouseTestCase, HttpsBackend, certificate_section, config, run

REPO = os.path.abspath(os.path.join(harness.HERE, "..", ".."))
EXAMPLES = sorted(glob.glob(os.path.join(REPO, "conf", "examples", "*.toml")))
MANUALS = [os.path.join(REPO, "README.md"), os.path.join(REPO, "conf", "README.md")]


class StandardToml(unittest.TestCase):

    def test_examples_are_standard_toml(self):
        self.assertGreaterEqual(len(EXAMPLES), 2, "conf/examples/*.toml not found")
        for path in EXAMPLES:
            with self.subTest(example=os.path.basename(path)):
                with open(path, "rb") as f:
                    doc = tomllib.load(f)
                self.assertIn("global", doc)
                self.assertNotIn("server", [k for k, v in doc.items() if isinstance(v, dict)])
                self.assertIsInstance(doc["server"], list)

    def test_manual_blocks_are_standard_toml(self):
        """Every ```toml block of README.md and conf/README.md parses, so an
        operator can paste any of them into a file."""
        for manual in MANUALS:
            with open(manual) as f:
                text = f.read()
            blocks = re.findall(r"^```toml\n(.*?)^```", text, re.S | re.M)
            self.assertTrue(blocks, f"{manual} has no toml block")
            for i, block in enumerate(blocks):
                with self.subTest(manual=os.path.relpath(manual, REPO), block=i):
                    try:
                        tomllib.loads(block)
                    except tomllib.TOMLDecodeError as e:
                        self.fail(f"{manual}, toml block {i}: {e}\n{block}")
                    self.assertNotRegex(block, r"(?m)^\s*\[server\]", "write [global], not [server]")

    def test_demo_config_is_standard_toml(self):
        proc = subprocess.Popen([harness.GATEHOUSE, "demo", "--port", "0"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines, stderr = [], []
        found = threading.Event()

        def pump_out():
            for line in proc.stdout:
                lines.append(line)
                if "Files and config:" in line:
                    found.set()
            found.set()

        def pump_err():
            for line in proc.stderr:
                stderr.append(line)

        threads = [threading.Thread(target=pump_out, daemon=True), threading.Thread(target=pump_err, daemon=True)]
        for t in threads:
            t.start()
        path = None
        try:
            found.wait(30 * harness.SLOW)
            for line in lines:
                m = re.search(r"Files and config: (\S+\.toml)", line)
                if m:
                    path = m.group(1)
            self.assertIsNotNone(path, "demo printed no config path:\n" + "".join(lines + stderr))
            with open(path, "rb") as f:
                doc = tomllib.load(f)
            self.assertIn("global", doc)
            self.assertEqual(len(doc["server"]), 2)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30 * harness.SLOW)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for t in threads:
                t.join(5)
            proc.stdout.close()
            proc.stderr.close()
            if path and os.path.basename(os.path.dirname(path)).startswith("gatehouse-demo-"):
                shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        self.assertFalse(any("[server] is the old name" in line for line in stderr), "".join(stderr))


class OldServerTable(GatehouseTestCase):
    """A file written before [global]: [server] settings beside [[server]]."""

    def old_file(self, backend_port):
        cert = Cert(self.dir.path, "front", "mail.contoso.test", sans=["mail.contoso.test"])
        text = config(
            '# written before [global]\n[server]\nworkers = 1\nadmin = ""\naccess_log = "-"\ndrain_timeout = "2s"\n',
            certificate_section("front", cert),
            '[[listener]]\nname = "https"\nbind = "127.0.0.1:0"\nmode = "l7"\n',
            '[[route]]\nlistener = "https"\npool = "p"\n',
            f'[[server]]\nname = "b1"\naddress = "127.0.0.1:{backend_port}"\n',
            '[[pool]]\nname = "p"\nservers = ["b1"]\ntls = "plain"\n')
        path = self.dir.write("old.toml", text)
        line = text.splitlines().index("[server]") + 1
        return path, line, cert

    def assertWarns(self, text, path, line):
        self.assertRegex(text, rf"{re.escape(path)}:{line}: server: \[server\] is the old name of the settings "
                               r"table; write \[global\] instead")

    def test_run_serves_and_warns(self):
        backend = self.backend(HttpsBackend("b1", None, tls=False))
        path, line, cert = self.old_file(backend.port)
        with open(path) as f:
            g = self.start(f.read(), name="old.toml")
        port = g.port("https")
        self.assertWarns("\n".join(g.raw_stderr), self.dir.file("old.toml"), line)
        p = subprocess.run(["curl", "-sS", "--max-time", "10", "--resolve", f"mail.contoso.test:{port}:127.0.0.1",
                            "--cacert", cert.cert, f"https://mail.contoso.test:{port}/owa/"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_check_warns_and_strict_exits_2(self):
        path, line, _ = self.old_file(9)
        p = run(["check", "-c", path], check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertWarns(p.stdout + p.stderr, path, line)
        self.assertEqual(run(["check", "-c", path, "--strict"], check=False).returncode, 2)
        with open(path) as f:
            text = f.read()
        path = self.dir.write("new.toml", text.replace("\n[server]\n", "\n[global]\n"))
        p = run(["check", "-c", path, "--strict"], check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertNotIn("old name", p.stdout + p.stderr)
        with open(path, "rb") as f:
            tomllib.load(f)


if __name__ == "__main__":
    unittest.main()
