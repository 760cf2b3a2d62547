"""The test harness's own backends: a stopped LoopbackServer never answers a
connection meant for a later one, even when the test process is stopped and
continued (as a VM or cgroup freezer does on a busy CI machine), which makes
the kernel restart blocked system calls with the descriptor numbers they had."""

import os
import socket
import subprocess
import unittest

import harness as h


class NamedServer(h.LoopbackServer):
    """Sends its name to every connection, then closes it."""

    def __init__(self, name):
        self.name = name
        super().__init__(None, backlog=16)

    def _serve(self, raw):
        raw.sendall(self.name)


def pause_this_process(seconds=0.2):
    """SIGSTOP then SIGCONT on this process, sent by a child."""
    subprocess.run(["sh", "-c", f"kill -STOP {os.getpid()}; sleep {seconds}; kill -CONT {os.getpid()}"],
                   check=True, timeout=30)


def greeting(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10 * h.SLOW) as s:
        data = b""
        while chunk := s.recv(100):
            data += chunk
        return data


class LoopbackServerStop(unittest.TestCase):
    def test_stopped_server_never_takes_a_later_servers_connections(self):
        for _ in range(5):
            old = NamedServer(b"old")
            self.assertEqual(greeting(old.port), b"old")
            old.stop()
            new = NamedServer(b"new")
            try:
                pause_this_process()
                self.assertEqual(greeting(new.port), b"new")
                self.assertEqual(old.connections, 1, "the stopped server accepted a later server's connection")
            finally:
                new.stop()


if __name__ == "__main__":
    unittest.main()
