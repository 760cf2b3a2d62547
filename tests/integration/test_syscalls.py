"""What a TLS connection costs Gatehouse in system calls, watched with strace
on the running worker while real TLS clients connect, handshake and close.

A connection is taken with accept4(), which returns the client's address and
a non-blocking socket that inherits TCP_NODELAY from the listening socket, so
no connection needs getpeername(), ioctl(FIONBIO) or setsockopt(TCP_NODELAY).
A client that closed its side gets nothing more written to it (no
close_notify that would only meet a closed socket and fail with EPIPE)."""

import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import unittest

import harness
from harness import Cert, GatehouseTestCase, certificate_section, config, server_section

CONNECTIONS = 20
TRACED = "accept4,accept,getpeername,ioctl,setsockopt,sendto,recvfrom,close"
LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(\w+)\((.*)\)\s+=\s+(-?\d+)(.*)$")


def tls_client(port, name):
    """Handshakes (TLS 1.3), waits briefly for the server's session tickets,
    then closes without close_notify, as many clients do."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        tls = ctx.wrap_socket(raw, server_hostname=name)
        tls.settimeout(0.2)
        try:
            tls.recv(1)  # the tickets arrive after the handshake; no application data comes
        except (TimeoutError, socket.timeout, ssl.SSLError):
            pass
        tls.close()


class Syscalls(GatehouseTestCase):

    def test_accept_and_close_need_no_extra_system_calls(self):
        if shutil.which("strace") is None:
            self.skipTest("strace is not installed (the set-up installs it)")
        cert = Cert(self.dir.path, "mail", "mail.contoso.test")
        gh = self.start(config(
            server_section(), certificate_section("mail", cert),
            '[[listener]]\nname = "web"\nbind = "127.0.0.1:0"\nmode = "l7"\n',
            '[[route]]\nlistener = "web"\npaths = ["/"]\npool = "mbx"\n',
            '[[server]]\nname = "mbx01"\naddress = "127.0.0.1:9"\n',
            '[[pool]]\nname = "mbx"\nservers = ["mbx01"]\ntls = "plain"\n'))
        port = gh.port("web")
        tls_client(port, "mail.contoso.test")  # warm: the first connection's one-time work is not counted

        trace = self.dir.path + "/strace.txt"
        strace = subprocess.Popen(["strace", "-f", "-qq", "-e", f"trace={TRACED}", "-o", trace,
                                   "-p", str(gh.proc.pid)], stderr=subprocess.PIPE, text=True)
        self._stops.append(lambda: strace.poll() is None and strace.kill())
        time.sleep(1.0)  # strace attaches to every thread
        if strace.poll() is not None:
            self.skipTest(f"strace cannot attach here: {strace.stderr.read()[:300]}")
        for _ in range(CONNECTIONS):
            tls_client(port, "mail.contoso.test")
        time.sleep(0.5)  # the last closes reach the worker
        strace.send_signal(signal.SIGINT)
        strace.wait(timeout=10)
        with open(trace) as f:
            calls = [m.groups() for m in map(LINE.match, f) if m]

        def named(name):
            return [c for c in calls if c[1] == name]

        accepted = [c for c in named("accept4") if int(c[3]) >= 0]
        self.assertGreaterEqual(len(accepted), CONNECTIONS, "connections are taken with accept4()")
        self.assertTrue(all("SOCK_NONBLOCK" in c[2] and "sin_port" in c[2] for c in accepted),
                        f"accept4 gives the address and a non-blocking socket: {accepted[:2]}")
        self.assertEqual([c for c in named("accept") if int(c[3]) >= 0], [], "no plain accept()")
        self.assertEqual(named("getpeername"), [], "the client's address comes from accept4")
        self.assertEqual([c for c in named("ioctl") if "FIONBIO" in c[2]], [], "no ioctl(FIONBIO) per connection")
        self.assertEqual([c for c in named("setsockopt") if "TCP_NODELAY" in c[2]], [],
                         "TCP_NODELAY is inherited from the listening socket")

        # Nothing is written to a connection after its client's end was read.
        ended, late = set(), []
        for pid, name, args, result, rest in calls:
            fd = args.split(",", 1)[0]
            if name == "recvfrom" and result == "0":
                ended.add(fd)
            elif name == "sendto" and fd in ended:
                late.append((name, args[:40], result, rest.strip()))
            elif name == "close":
                ended.discard(fd)
        self.assertEqual(late, [], "writes after the client closed")
        failed_sends = [c for c in named("sendto") if "EPIPE" in c[4] or "ECONNRESET" in c[4]]
        self.assertEqual(failed_sends, [])


if __name__ == "__main__":
    unittest.main()
