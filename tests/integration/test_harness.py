"""The test harness's own backends: a stopped LoopbackServer never answers a
connection meant for a later one, even when the test process is stopped and
continued (as a VM or cgroup freezer does on a busy CI machine), which makes
the kernel restart blocked system calls with the descriptor numbers they had."""

import os
import socket
import ssl
import subprocess
import threading
import unittest

import harness as h


class NamedServer(h.LoopbackServer):
    """Sends its name to every connection, then closes it."""

    def __init__(self, name):
        self.name = name
        super().__init__(None, backlog=16)

    def _serve(self, raw):
        raw.sendall(self.name)


class TlsHolder(h.LoopbackServer):
    """TLS; holds every connection open, reading until it ends."""

    def __init__(self, cert):
        self.ended = []
        self.done = threading.Event()
        super().__init__(cert, backlog=16)

    def _serve(self, raw):
        try:
            with self.tls(raw) as conn:
                while conn.recv(100):
                    pass
            self.ended.append("eof")
        except (ssl.SSLError, OSError) as e:
            self.ended.append(type(e).__name__)
        self.done.set()


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


class LoopbackServerClosesConnections(unittest.TestCase):
    """A stopped server (a mailbox server going down) ends its connections,
    TLS ones included, and those still in their handshake."""

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(h.GATEHOUSE):
            raise unittest.SkipTest(f"gatehouse binary not found at {h.GATEHOUSE}")
        cls.dir = h.TempDir()
        cls.cert = h.Cert(cls.dir.path, "mbx01", "mbx01.contoso.test", ["mbx01.contoso.test"])

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    def _wait_closed(self, sock):
        sock.settimeout(10 * h.SLOW)
        try:
            while sock.recv(100):
                pass
        except ConnectionResetError:
            pass

    def test_stop_ends_an_established_tls_connection(self):
        server = TlsHolder(self.cert)
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10 * h.SLOW)
        with h.client_context().wrap_socket(raw) as s:
            s.sendall(b"hello")
            server.stop()
            self._wait_closed(s)
        self.assertTrue(server.done.wait(10 * h.SLOW))

    def test_stop_ends_a_connection_that_never_starts_its_handshake(self):
        server = TlsHolder(self.cert)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10 * h.SLOW) as s:
            while server.connections == 0:
                threading.Event().wait(0.01)
            server.stop()
            self._wait_closed(s)
        self.assertTrue(server.done.wait(10 * h.SLOW))


if __name__ == "__main__":
    unittest.main()
