"""L4 under load, smoke sized (a C++ test does the 64 MiB version): a burst of
10,000 TCP connections that never complete a handshake must not hurt the
proxy, and 50 concurrent TLS streams of 4 MiB each must come back intact."""

import asyncio
import hashlib
import os
import random
import resource
import select
import socket
import ssl
import struct
import time
import unittest

import harness as h

MAIL = "mail.contoso.test"
BURST = 10_000
BATCH = 500


def l4_config(front, echo, cert, workers, extra=""):
    return h.config(
        h.server_section(workers),
        h.certificate_section("front", front),
        f'[[listener]]\nname = "l4"\nbind = "127.0.0.1:0"\nmode = "l4"\npool = "echo"\n{extra}\n',
        f'[[server]]\nname = "mbx01"\naddress = "{echo.address}"\npin = "{cert.thumbprint}"\n',
        '[[pool]]\nname = "echo"\nservers = ["mbx01"]\n',
    )


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


PATTERN = bytes(range(251)) * 1024  # byte k of a stream is k % 251


def pattern_at(offset, n):
    out = b""
    while len(out) < n:
        start = (offset + len(out)) % 251
        out += PATTERN[start:start + min(n - len(out), len(PATTERN) - 251)]
    return out


class FirehoseBackend(h.LoopbackServer):
    """A plain TCP backend that writes the pattern as fast as the connection
    takes it, and counts what the kernel accepted."""

    def __init__(self):
        self.sent = 0
        super().__init__(None, backlog=16)

    def _serve(self, conn):
        try:
            while True:
                chunk = pattern_at(self.sent, 65536)
                self.sent += conn.send(chunk)
        except OSError:
            pass


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class L4Stress(h.GatehouseTestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(h.GATEHOUSE):
            raise unittest.SkipTest(f"gatehouse binary not found at {h.GATEHOUSE}")
        cls.certs = h.TempDir()
        cls.front = h.Cert(cls.certs.path, "front", MAIL, [MAIL])
        cls.mbx01 = h.Cert(cls.certs.path, "mbx01", "mbx01.contoso.test", ["mbx01.contoso.test"])

    @classmethod
    def tearDownClass(cls):
        cls.certs.cleanup()

    def echo_once(self, port, payload=b"still serving\n"):
        ctx = h.client_context(self.front.cert)
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10 * h.SLOW),
                             server_hostname=MAIL) as s:
            s.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        self.assertEqual(got, payload)

    def test_burst_of_10000_connections_then_still_serving(self):
        # Both ends count on one machine, but in separate processes: this one
        # holds up to BURST sockets, gatehouse (which inherits the limit) as many.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = BURST + 1000
        if hard != resource.RLIM_INFINITY and hard < need:
            self.skipTest(f"open files hard limit {hard} < {need}")
        if soft != resource.RLIM_INFINITY and soft < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))

        echo = self.backend(h.EchoBackend(self.mbx01))
        g = self.start(l4_config(self.front, echo, self.mbx01, workers=2, extra='handshake_timeout = "20s"'))
        port = g.port("l4")
        pid = g.proc.pid
        self.echo_once(port)
        baseline = open_fds(pid)

        held = []
        started = time.monotonic()
        linger0 = struct.pack("ii", 1, 0)
        try:
            for first in range(0, BURST, BATCH):
                batch = []
                for i in range(first, first + BATCH):
                    s = socket.socket()
                    s.setblocking(False)
                    s.connect_ex(("127.0.0.1", port))
                    batch.append((i, s))
                poller = select.poll()
                for _, s in batch:
                    poller.register(s, select.POLLOUT)
                pending = {s.fileno() for _, s in batch}
                deadline = time.monotonic() + 20 * h.SLOW
                while pending and time.monotonic() < deadline:
                    for fd, _ in poller.poll(200):
                        pending.discard(fd)
                        poller.unregister(fd)
                self.assertFalse(pending, f"{len(pending)} connects of batch {first // BATCH} did not complete")
                for i, s in batch:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    self.assertEqual(err, 0, f"connection {i}: {os.strerror(err)}")
                    kind = i % 4
                    if kind == 0:  # connect and go
                        s.close()
                    elif kind == 1:  # garbage, then held open
                        s.send(b"GET / HTTP/1.1\r\nHost: mail.contoso.test\r\n\r\n")
                        held.append(s)
                    elif kind == 2:  # a broken record header and go, with a reset
                        s.send(b"\x16\x03\x01\xff\xff" + os.urandom(64))
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
                        s.close()
                    else:  # silent, held open
                        held.append(s)
            self.assertIsNone(g.proc.poll(), "gatehouse died during the burst")
            # Serving a real client while thousands of stalled connections are open.
            self.echo_once(port, b"during the burst\n")
        finally:
            for n, s in enumerate(held):
                if n % 2:
                    try:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
                    except OSError:
                        pass
                s.close()
        opened_in = time.monotonic() - started

        self.assertIsNone(g.proc.poll(), "gatehouse died after the burst")
        self.echo_once(port, b"after the burst\n")
        # Every connection of the burst is let go: no descriptor leak.
        deadline = time.monotonic() + 20 * h.SLOW
        while time.monotonic() < deadline and open_fds(pid) > baseline + 16:
            time.sleep(0.2)
        self.assertLessEqual(open_fds(pid), baseline + 16,
                             f"gatehouse holds {open_fds(pid)} descriptors, {baseline} before the burst")
        self.assertFalse([e for e in g.events if e.get("event") in ("accept_failed", "max_connections")][:5])
        self.assertEqual(echo.connections, 3, "no connection of the burst may reach the backend")
        print(f"\n{BURST} connections opened in {opened_in:.1f}s; "
              f"{sum(1 for e in g.events if e.get('event') == 'handshake_failed')} handshake_failed events")

    def test_slow_reader_backpressure(self):
        # A client that stops reading must stop the backend, not fill the proxy's memory.
        fire = self.backend(FirehoseBackend())
        g = self.start(h.config(
            h.server_section(1), h.certificate_section("front", self.front),
            '[[listener]]\nname = "l4"\nbind = "127.0.0.1:0"\nmode = "l4"\npool = "fire"\n',
            f'[[server]]\nname = "fire"\naddress = "{fire.address}"\n',
            '[[pool]]\nname = "fire"\nservers = ["fire"]\ntls = "plain"\n'))
        port = g.port("l4")
        before = rss_bytes(g.proc.pid)
        ctx = h.client_context(self.front.cert)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10 * h.SLOW)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        with ctx.wrap_socket(raw, server_hostname=MAIL) as s:
            first = s.recv(1)  # the stream is flowing
            time.sleep(2)  # then the client reads nothing
            stalled = fire.sent
            time.sleep(1)
            growth = rss_bytes(g.proc.pid) - before
            self.assertLess(fire.sent - stalled, 1 << 20, "the backend kept sending while the client read nothing")
            self.assertLess(fire.sent, 64 << 20, f"{fire.sent} bytes left the backend for a client that reads nothing")
            self.assertLess(growth, 16 << 20, f"gatehouse grew by {growth >> 20} MiB buffering for a stalled client")
            # Reading resumes and every byte is there, in order.
            want = 32 << 20
            got = first
            offset = 0
            while offset + len(got) < want:
                chunk = s.recv(1 << 20)
                self.assertTrue(chunk, "stream ended early")
                got += chunk
                if len(got) >= 1 << 20:
                    self.assertTrue(got == pattern_at(offset, len(got)), f"corrupted near byte {offset}")
                    offset += len(got)
                    got = b""
            self.assertTrue(got == pattern_at(offset, len(got)))

    def test_50_concurrent_4mib_streams_checksums(self):
        echo = self.backend(h.EchoBackend(self.mbx01))
        g = self.start(l4_config(self.front, echo, self.mbx01, workers=2))
        port = g.port("l4")
        size = 4 * 1024 * 1024
        streams = 50
        ctx = h.client_context(self.front.cert)

        async def one(i):
            data = random.Random(i).randbytes(size)
            sent = hashlib.sha256(data).hexdigest()
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=MAIL)
            local = writer.get_extra_info("sockname")

            async def send():
                view = memoryview(data)
                for off in range(0, size, 256 * 1024):
                    writer.write(view[off:off + 256 * 1024])
                    await writer.drain()

            sender = asyncio.ensure_future(send())
            digest = hashlib.sha256()
            got = 0
            while got < size:
                chunk = await reader.read(256 * 1024)
                if not chunk:
                    break
                digest.update(chunk)
                got += len(chunk)
            await sender
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 5)
            except (OSError, ssl.SSLError, asyncio.TimeoutError):
                pass
            return i, "%s:%d" % local[:2], sent, digest.hexdigest(), got

        async def main():
            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(streams))), 70 * h.SLOW)

        started = time.monotonic()
        results = asyncio.run(main())
        elapsed = time.monotonic() - started
        for i, client, sent, received, got in results:
            self.assertEqual(got, size, f"stream {i}: {got} of {size} bytes came back")
            self.assertEqual(received, sent, f"stream {i}: echo differs from what was sent")
        self.assertEqual(echo.connections, streams)
        for i, client, *_ in results:
            line = g.wait_access(client=client)
            self.assertEqual((line["bytes_in"], line["bytes_out"]), (size, size), f"stream {i}")
        self.assertIsNone(g.proc.poll())
        print(f"\n{streams} x {size >> 20} MiB echoed through gatehouse in {elapsed:.1f}s "
              f"({2 * streams * size / elapsed / 1e6:.0f} MB/s both ways)")


if __name__ == "__main__":
    unittest.main()
