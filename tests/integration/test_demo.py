"""`gatehouse demo --port 0`: starts quickly, prints curl commands that work
when pasted as printed, and stops cleanly on SIGTERM."""

import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
import unittest

import harness


class Demo(unittest.TestCase):

    def setUp(self):
        if not os.path.exists(harness.GATEHOUSE):
            self.fail(f"gatehouse binary not found at {harness.GATEHOUSE}")
        self.lines = queue.Queue()
        self.stdout = []
        self.stderr = []
        self.started = time.monotonic()
        self.proc = subprocess.Popen([harness.GATEHOUSE, "demo", "--port", "0"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(self._cleanup)
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, False), daemon=True).start()

    def _pump(self, stream, sink, is_stdout):
        for line in stream:
            sink.append(line.rstrip("\n"))
            if is_stdout:
                self.lines.put((time.monotonic(), line.rstrip("\n")))
        if is_stdout:
            self.lines.put((time.monotonic(), None))

    def _cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()
        for line in self.stdout:
            m = re.search(r"Files and config: (\S+)/gatehouse\.toml", line)
            if m and os.path.basename(m.group(1)).startswith("gatehouse-demo-"):
                shutil.rmtree(m.group(1), ignore_errors=True)

    def wait_commands(self):
        """The printed curl command lines, and the seconds from spawn until
        they were all printed."""
        deadline = self.started + 30 * harness.SLOW
        commands = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail("demo printed no curl commands within the deadline:\n" + "\n".join(self.stdout + self.stderr))
            try:
                at, line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.fail(f"demo exited ({self.proc.wait()}) before printing its commands:\n" +
                          "\n".join(self.stdout + self.stderr))
            if line.strip().startswith("curl "):
                commands.append(line.strip())
            elif "Press Ctrl-C" in line:
                # The last line of what the demo prints.
                return commands, at - self.started

    def curl(self, command):
        """Runs a printed curl command exactly as printed, plus flags that only
        shape the output; returns (status code, body)."""
        args = shlex.split(command) + ["-sS", "--max-time", str(10 * harness.SLOW), "-w", "\n%{http_code}"]
        p = subprocess.run(args, capture_output=True, text=True, timeout=30 * harness.SLOW)
        self.assertEqual(p.returncode, 0, f"{command}\nexited {p.returncode}: {p.stderr}")
        body, _, code = p.stdout.rpartition("\n")
        return code, body

    def access_lines(self, **fields):
        out = []
        for line in list(self.stdout):
            if line.startswith("{"):
                obj = json.loads(line)
                if all(obj.get(k) == v for k, v in fields.items()):
                    out.append(obj)
        return out

    def test_demo(self):
        commands, elapsed = self.wait_commands()
        limit = 10 if harness.SANITIZED else 2
        print(f"\ndemo printed its commands {elapsed:.3f} s after spawn (limit {limit} s)")
        self.assertGreaterEqual(len(commands), 4, commands)
        self.assertLess(elapsed, limit, "demo took too long to start")
        self.assertTrue(all("127.0.0.1" in c for c in commands), commands)

        # L7: /owa goes to MBX01 over HTTP/1.1, /mapi to MBX02 over HTTP/2.
        l7 = [c for c in commands if "--http1.1" in c or "--http2" in c]
        self.assertEqual(len(l7), 2, commands)
        code, body = self.curl(l7[0])
        self.assertEqual(code, "200", f"{l7[0]}\n{body}")
        self.assertRegex(body, r"^mailbox MBX01 answered: GET /owa/")
        code, body = self.curl(l7[1])
        self.assertEqual(code, "200", f"{l7[1]}\n{body}")
        self.assertRegex(body, r"^mailbox MBX02 answered: GET /mapi/")
        deadline = time.monotonic() + 10 * harness.SLOW
        while time.monotonic() < deadline and len(self.access_lines(listener="mail")) < 2:
            time.sleep(0.05)
        protocols = sorted(a["protocol"] for a in self.access_lines(listener="mail"))
        self.assertEqual(protocols, ["HTTP/1.1", "HTTP/2"], "\n".join(self.stdout))

        # L4: TLS terminated and re-encrypted, whatever the bytes.
        l4 = [c for c in commands if c not in l7]
        code, body = self.curl(l4[0])
        self.assertEqual(code, "200", f"{l4[0]}\n{body}")
        self.assertRegex(body, r"^mailbox MBX0[12] answered: GET ")
        code, body = self.curl(l4[1])
        self.assertEqual(code, "200", f"{l4[1]}\n{body}")
        self.assertRegex(body, r"^mailbox MBX0[12] answered: GET ")

        # The access log (stdout) shows both connections, with the
        # certificate each client could use.
        deadline = time.monotonic() + 10 * harness.SLOW
        while time.monotonic() < deadline and len(self.access_lines(listener="mail-l4")) < 2:
            time.sleep(0.05)
        ecdsa = self.access_lines(sni="mail.contoso.test")
        rsa = self.access_lines(sni="autodiscover.contoso.test")
        self.assertTrue(ecdsa and rsa, "\n".join(self.stdout))
        self.assertEqual(ecdsa[0]["certificate"], "contoso-ecdsa")
        self.assertEqual(rsa[0]["certificate"], "contoso-rsa")
        self.assertEqual(rsa[0]["tls_version"], "TLSv1.2")
        self.assertIn(ecdsa[0]["server"], ("mbx01", "mbx02"))

        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(20 * harness.SLOW)
        except subprocess.TimeoutExpired:
            self.fail("demo did not stop within 20 s of SIGTERM")
        self.assertEqual(rc, 0, "\n".join(self.stderr))


if __name__ == "__main__":
    unittest.main()
