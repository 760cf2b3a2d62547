"""Memory per idle L4 connection: 10,000 established, idle client connections
through an l4 listener, TLS on the client side (ECDSA P-256 front certificate)
and on the backend side (a backend pinned by thumbprint, tls = "verify"), must
keep Gatehouse's RSS under 170 MiB, about 16 KiB per proxied pair over its
9 MiB at rest (measured: about 13 KiB; a stream that waits holds no receive
buffer, BoringSSL sheds its handshake configuration, the relay's coroutines
are few and small, and their frames come from malloc at their own size).

The backend and the clients are separate Python processes (so that their
sockets count against their own open-files limit, not the test's) driven by
one epoll loop each over non-blocking ssl.SSLSocket objects. asyncio's own TLS
transport is not used: it allocates a 256 KiB read buffer per connection.

Every pair is proven end to end before it counts: after its handshake the
client sends one byte and waits for the backend's echo of it. With all pairs
open and idle, the test reads VmRSS/RssAnon from /proc/PID/status and counts
the descriptors in /proc/PID/fd (two sockets per pair).

Gatehouse needs more than 20,000 descriptors for 10,000 pairs: the test raises
RLIMIT_NOFILE (inherited by gatehouse and the peers) to 65,536; where it may
not (no CAP_SYS_RESOURCE), it measures as many pairs as the hard limit allows
and says so. Sanitized builds open 1,000 pairs and only print the figures."""

import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
import unittest

import harness as h

MAIL = "mail.contoso.test"
N = 1_000 if h.SANITIZED else 10_000
LIMIT_MIB = 170
WORKERS = 2
CLIENT_PROCESSES = 2
CONCURRENCY = 200  # handshakes in flight, over all client processes
NOFILE = 65_536

# One helper for both roles, run as `python3 peer.py backend|client ...`.
# Each prints JSON lines on stdout and ends when its stdin ends or its
# deadline passes, closing every socket it holds.
PEER = r'''
import errno, json, os, select, socket, ssl, sys, time

def say(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()

def stdin_closed():
    try:
        return os.read(0, 4096) == b""
    except OSError:
        return True

def backend(cert, key, deadline):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4096)
    lsock.setblocking(False)
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    ep.register(0, select.EPOLLIN)
    conns = {}  # fd -> [sslsock, established, pending output]
    stats = {"accepted": 0, "handshakes": 0, "handshake_errors": 0, "echoed": 0, "closed": 0}
    say(port=lsock.getsockname()[1])
    end = time.monotonic() + deadline

    def close(fd):
        s = conns.pop(fd)[0]
        try:
            ep.unregister(fd)
        except OSError:
            pass
        s.close()
        stats["closed"] += 1

    def step(fd):
        c = conns[fd]
        s = c[0]
        if not c[1]:
            try:
                s.do_handshake()
            except ssl.SSLWantReadError:
                ep.modify(fd, select.EPOLLIN)
                return
            except ssl.SSLWantWriteError:
                ep.modify(fd, select.EPOLLOUT)
                return
            except (ssl.SSLError, OSError):
                stats["handshake_errors"] += 1
                close(fd)
                return
            c[1] = True
            stats["handshakes"] += 1
            ep.modify(fd, select.EPOLLIN)
        while True:
            if c[2]:
                try:
                    n = s.send(c[2])
                    c[2] = c[2][n:]
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    ep.modify(fd, select.EPOLLIN | select.EPOLLOUT)
                    return
                except (ssl.SSLError, OSError):
                    close(fd)
                    return
                if c[2]:
                    continue
                ep.modify(fd, select.EPOLLIN)
            try:
                data = s.recv(65536)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                ep.modify(fd, select.EPOLLIN | select.EPOLLOUT)
                return
            except (ssl.SSLError, OSError):
                close(fd)
                return
            if not data:
                close(fd)
                return
            stats["echoed"] += len(data)
            c[2] += data

    running = True
    while running and time.monotonic() < end:
        for fd, ev in ep.poll(1.0):
            if fd == 0:
                if stdin_closed():
                    running = False
                    break
            elif fd == lsock.fileno():
                while True:
                    try:
                        raw, _ = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as e:
                        say(accept_error=str(e))
                        break
                    raw.setblocking(False)
                    s = ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
                    conns[s.fileno()] = [s, False, b""]
                    ep.register(s.fileno(), select.EPOLLIN)
                    stats["accepted"] += 1
                    step(s.fileno())
            elif fd in conns:
                step(fd)
    stats["open_at_exit"] = len(conns)
    for fd in list(conns):
        close(fd)
    say(stats=stats)

def client(port, sni, count, concurrency, stage_timeout, deadline):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ep = select.epoll()
    ep.register(0, select.EPOLLIN)
    # fd -> [socket, state, started]; states: connect, handshake, echo, idle
    conns = {}
    errors = {}
    stats = {"established": 0, "failed": 0}
    started_at = time.monotonic()
    end = started_at + deadline
    opened = 0
    inflight = 0

    def fail(fd, why):
        nonlocal inflight
        c = conns.pop(fd)
        if c[1] != "idle":
            inflight -= 1
        try:
            ep.unregister(fd)
        except OSError:
            pass
        c[0].close()
        stats["failed"] += 1
        errors[why] = errors.get(why, 0) + 1

    def step(fd):
        nonlocal inflight
        c = conns[fd]
        if c[1] == "connect":
            err = c[0].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                fail(fd, "connect: " + os.strerror(err))
                return
            ep.unregister(fd)
            c[0] = ctx.wrap_socket(c[0], server_hostname=sni, do_handshake_on_connect=False)
            ep.register(fd, select.EPOLLIN)
            c[1] = "handshake"
        if c[1] == "handshake":
            try:
                c[0].do_handshake()
            except ssl.SSLWantReadError:
                ep.modify(fd, select.EPOLLIN)
                return
            except ssl.SSLWantWriteError:
                ep.modify(fd, select.EPOLLOUT)
                return
            except (ssl.SSLError, OSError) as e:
                fail(fd, "handshake: " + type(e).__name__ + ": " + str(e)[:120])
                return
            try:
                c[0].send(b"x")
            except (ssl.SSLError, OSError) as e:
                fail(fd, "send: " + type(e).__name__ + ": " + str(e)[:120])
                return
            c[1] = "echo"
            ep.modify(fd, select.EPOLLIN)
        try:
            data = c[0].recv(16)
        except ssl.SSLWantReadError:
            return
        except (ssl.SSLError, OSError) as e:
            fail(fd, c[1] + ": " + type(e).__name__ + ": " + str(e)[:120])
            return
        if c[1] == "echo":
            if data != b"x":
                fail(fd, "echo: got %r" % data[:16])
                return
            c[1] = "idle"
            inflight -= 1
            stats["established"] += 1
        elif not data:
            fail(fd, "closed while idle")
        else:
            fail(fd, "unexpected data while idle")

    reported = False
    running = True
    next_scan = 0.0
    while running and time.monotonic() < end:
        while opened < count and inflight < concurrency:
            s = socket.socket()
            s.setblocking(False)
            r = s.connect_ex(("127.0.0.1", port))
            opened += 1
            inflight += 1
            conns[s.fileno()] = [s, "connect", time.monotonic()]
            if r not in (0, errno.EINPROGRESS):
                fail(s.fileno(), "connect: " + os.strerror(r))
                continue
            ep.register(s.fileno(), select.EPOLLOUT)
        for fd, ev in ep.poll(0.5):
            if fd == 0:
                if stdin_closed():
                    running = False
                    break
            elif fd in conns:
                step(fd)
        now = time.monotonic()
        if now >= next_scan:
            next_scan = now + 1.0
            for fd in [fd for fd, c in conns.items() if c[1] != "idle" and now - c[2] > stage_timeout]:
                fail(fd, conns[fd][1] + ": no progress within %ds" % stage_timeout)
        if not reported and opened == count and inflight == 0:
            reported = True
            say(ready=True, seconds=round(now - started_at, 2), errors=errors, **stats)
    if not reported:
        say(ready=False, seconds=round(time.monotonic() - started_at, 2), errors=errors, **stats)
    # Connections the proxy ended while everything was meant to be idle.
    say(final=True, still_open=len(conns), errors=errors, **stats)
    for c in conns.values():
        c[0].close()

if __name__ == "__main__":
    if sys.argv[1] == "backend":
        backend(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    else:
        client(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]),
               float(sys.argv[7]))
'''


def status_kib(pid):
    """VmRSS, RssAnon and VmHWM of `pid` in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


class Peer:
    """A helper process (PEER) whose JSON lines are collected by a thread."""

    def __init__(self, script, args):
        self.proc = subprocess.Popen([sys.executable, script] + [str(a) for a in args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.stderr = []
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True),
                         threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True)]
        for t in self._threads:
            t.start()

    def _pump(self, stream, sink):
        for line in stream:
            try:
                obj = json.loads(line)
            except ValueError:
                obj = {"text": line.rstrip("\n")}
            with self._cond:
                sink.append(obj)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, key, timeout):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for obj in self.lines:
                    if key in obj:
                        return obj
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._threads[0].is_alive()):
                    raise AssertionError(f"helper {self.proc.args[2]} gave no {key!r} line within {timeout:.0f}s "
                                         f"(exit {self.proc.poll()}); stdout {self.lines[-5:]}; "
                                         f"stderr {[o.get('text') for o in self.stderr[-20:]]}")
                self._cond.wait(min(left, 0.2))

    def close_stdin(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def stop(self, timeout=30):
        self.close_stdin()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self._threads:
            t.join(5)
        if not any(t.is_alive() for t in self._threads):
            for f in (self.proc.stdout, self.proc.stderr):
                f.close()


class L4Memory(h.GatehouseTestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(h.GATEHOUSE):
            raise unittest.SkipTest(f"gatehouse binary not found at {h.GATEHOUSE}")
        cls.certs = h.TempDir()
        cls.front = h.Cert(cls.certs.path, "front", MAIL, [MAIL], key="ec256")
        cls.mbx01 = h.Cert(cls.certs.path, "mbx01", "mbx01.contoso.test", ["mbx01.contoso.test"], key="ec256")

    @classmethod
    def tearDownClass(cls):
        cls.certs.cleanup()

    def raise_nofile(self):
        """Raises the open-files limit, which gatehouse and the peers inherit,
        to NOFILE; returns the soft limit in force (lower when not allowed)."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if NOFILE <= soft or soft == resource.RLIM_INFINITY:
            return soft
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, max(NOFILE, hard)))
        except (ValueError, OSError) as e:
            # Not root, or root without CAP_SYS_RESOURCE: up to the hard limit.
            print(f"\ncannot raise the open-files limit to {NOFILE} ({e}); using the hard limit {hard}")
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    def test_10000_idle_tls_pairs_under_200_mib(self):
        t0 = time.monotonic()
        limit = self.raise_nofile()

        script = self.dir.write("peer.py", PEER)
        life = 300 * h.SLOW  # the peers end by themselves after this
        backend = Peer(script, ["backend", self.mbx01.cert, self.mbx01.key, life])
        self._stops.append(backend.stop)
        bport = backend.wait_line("port", 30)["port"]

        g = self.start(h.config(
            h.server_section(WORKERS),
            h.certificate_section("front", self.front),
            '[[listener]]\nname = "l4"\nbind = "127.0.0.1:0"\nmode = "l4"\npool = "echo"\n'
            'handshake_timeout = "30s"\nidle_timeout = "5m"\n',
            f'[[server]]\nname = "mbx01"\naddress = "127.0.0.1:{bport}"\npin = "{self.mbx01.thumbprint}"\n',
            '[[pool]]\nname = "echo"\nservers = ["mbx01"]\ntls = "verify"\n'))
        port = g.port("l4")
        pid = g.proc.pid

        fds_idle = open_fds(pid)
        # Warm up: a few pairs open and close, so that the baseline includes
        # what the first connection allocates once (contexts, sessions, stacks).
        warm = Peer(script, ["client", port, MAIL, 20, 10, 20 * h.SLOW, 60 * h.SLOW])
        self._stops.append(warm.stop)
        ready = warm.wait_line("ready", 60 * h.SLOW)
        self.assertEqual(ready["established"], 20, f"warm-up pairs failed: {ready}")
        warm.stop()
        deadline = time.monotonic() + 20 * h.SLOW
        while open_fds(pid) > fds_idle and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        fds_before = open_fds(pid)
        before = status_kib(pid)
        n = N
        if limit != resource.RLIM_INFINITY and 2 * N + fds_before + 32 > limit:
            # Gatehouse holds two sockets per pair; the peers fewer.
            n = (limit - fds_before - 32) // 2
            print(f"\nonly {n} pairs fit in the open-files limit {limit}: measuring {n} instead of {N}")
            self.assertGreater(n, 100, "too few descriptors for a meaningful measurement")

        # N pairs, spread over several client processes.
        started = time.monotonic()
        clients = []
        share = [n // CLIENT_PROCESSES + (1 if i < n % CLIENT_PROCESSES else 0) for i in range(CLIENT_PROCESSES)]
        for count in share:
            c = Peer(script, ["client", port, MAIL, count, CONCURRENCY // CLIENT_PROCESSES, 30 * h.SLOW, life])
            self._stops.append(c.stop)
            clients.append(c)
        results = [c.wait_line("ready", 120 * h.SLOW) for c in clients]
        opened_in = time.monotonic() - started
        established = sum(r["established"] for r in results)
        errors = {}
        for r in results:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        self.assertIsNone(g.proc.poll(), f"gatehouse exited ({g.proc.returncode}) while the pairs were opened:\n"
                          + "\n".join(g.raw_stderr[-20:]))
        self.assertTrue(all(r["ready"] for r in results), f"the clients did not finish: {results}")
        self.assertEqual(established, n, f"{n - established} of {n} pairs failed: {errors}")

        # All pairs open and idle: let the workers settle, then measure.
        time.sleep(2)
        fds_with = open_fds(pid)
        with_n = status_kib(pid)
        per_pair = (with_n["VmRSS"] - before["VmRSS"]) / n
        per_pair_anon = (with_n["RssAnon"] - before["RssAnon"]) / n
        print(f"\n{n} idle TLS pairs through an l4 listener (workers = {WORKERS}), opened in {opened_in:.1f}s"
              f"\n  gatehouse VmRSS  before {before['VmRSS'] / 1024:.1f} MiB, with {n} pairs "
              f"{with_n['VmRSS'] / 1024:.1f} MiB (limit {LIMIT_MIB} MiB), peak {with_n['VmHWM'] / 1024:.1f} MiB"
              f"\n  gatehouse RssAnon before {before['RssAnon'] / 1024:.1f} MiB, with {n} pairs "
              f"{with_n['RssAnon'] / 1024:.1f} MiB"
              f"\n  per pair: {per_pair:.1f} KiB RSS ({per_pair_anon:.1f} KiB anonymous)"
              f"\n  gatehouse descriptors: {fds_before} before, {fds_with} with {n} pairs "
              f"({(fds_with - fds_before) / n:.2f} per pair)")
        self.assertGreaterEqual(fds_with - fds_before, 2 * n,
                                f"gatehouse holds {fds_with} descriptors, {fds_before} before: fewer than two per pair")
        self.assertLessEqual(fds_with - fds_before, 2 * n + 64)

        # Still idle and still there: none was dropped while measuring.
        for c in clients:
            c.stop(60 * h.SLOW)
        finals = [c.wait_line("final", 5) for c in clients]
        dropped = sum(f["failed"] for f in finals) - sum(r["failed"] for r in results)
        self.assertEqual(dropped, 0, f"{dropped} pairs ended while idle: {[f['errors'] for f in finals]}")
        self.assertIsNone(g.proc.poll(), f"gatehouse exited ({g.proc.returncode}):\n" + "\n".join(g.raw_stderr[-20:]))

        # Every pair is let go once the clients close.
        deadline = time.monotonic() + 30 * h.SLOW
        while open_fds(pid) > fds_before + 16 and time.monotonic() < deadline:
            time.sleep(0.2)
        fds_after = open_fds(pid)
        after = status_kib(pid)
        self.assertLessEqual(fds_after, fds_before + 16,
                             f"gatehouse holds {fds_after} descriptors after the clients closed, {fds_before} before")
        problems = [e for e in g.events if e.get("event") in ("accept_failed", "max_connections")]
        self.assertFalse(problems[:5])
        backend.stop(30)
        stats = backend.wait_line("stats", 5)["stats"]
        print(f"  after closing: {fds_after} descriptors, VmRSS {after['VmRSS'] / 1024:.1f} MiB; "
              f"backend {stats}; total {time.monotonic() - t0:.1f}s")
        if h.SANITIZED:
            print(f"  sanitized build: the {LIMIT_MIB} MiB limit is not checked (shadow memory)")
        else:
            self.assertLess(with_n["VmRSS"], LIMIT_MIB * 1024,
                            f"gatehouse VmRSS {with_n['VmRSS'] / 1024:.1f} MiB with {n} idle pairs "
                            f"({per_pair:.1f} KiB per pair)")


if __name__ == "__main__":
    unittest.main()
