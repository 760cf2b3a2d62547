"""l7 connections across a reload (SIGHUP) and a stop (SIGTERM): a request in
flight finishes on the old config, an idle keep-alive connection is closed at
once instead of holding the old config for drain_timeout, new requests follow
the new routes, and an idle HTTP/2 connection gets GOAWAY so that a stop does
not wait for drain_timeout."""

import http.server
import socket
import socketserver
import ssl
import struct
import threading
import time
import unittest

import harness as h

MAIL = "mail.contoso.test"


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(2)
        body = f"{self.server.name} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


class SlowBackend:
    """HTTPS on loopback, self-signed; /slow answers after 2 s."""

    def __init__(self, name, cert):
        self.httpd = _Server(("127.0.0.1", 0), _SlowHandler)
        self.httpd.name = name
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert.cert, cert.key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def client(port, alpn="http/1.1"):
    ctx = h.client_context()
    ctx.set_alpn_protocols([alpn])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10 * h.SLOW), server_hostname=MAIL)
    return s


def get(s, path):
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {MAIL}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0].split(b":")[1])
    while len(body) < length:
        body += s.recv(65536)
    return int(head.split(b" ")[1]), body.decode()


def closed_within(s, seconds):
    """True when the peer closes `s` (EOF or reset) within `seconds`."""
    s.settimeout(seconds)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionError, ssl.SSLError):
        return True
    except (socket.timeout, TimeoutError):
        return False


def config(cert, route_pool, backends, drain="20s"):
    text = h.server_section(drain_timeout=drain) + h.certificate_section("mail", cert)
    text += '[[listener]]\nname = "web"\nbind = "127.0.0.1:0"\nmode = "l7"\n'
    text += f'[[route]]\nlistener = "web"\nhosts = ["{MAIL}"]\npool = "{route_pool}"\n'
    for name, (backend, bcert) in backends.items():
        text += f'[[server]]\nname = "{name}"\naddress = "{backend.address}"\npin = "{bcert.thumbprint}"\n'
        text += f'[[pool]]\nname = "{name}"\nservers = ["{name}"]\n'
    return text


class Lifecycle(h.GatehouseTestCase):
    def setUp(self):
        super().setUp()
        self.cert = h.Cert(self.dir.path, "mail", MAIL, [MAIL])
        self.c1 = h.Cert(self.dir.path, "mbx01", "MBX01", key="rsa2048")
        self.c2 = h.Cert(self.dir.path, "mbx02", "MBX02", key="rsa2048")
        self.b1 = self.backend(SlowBackend("MBX01", self.c1))
        self.b2 = self.backend(SlowBackend("MBX02", self.c2))
        self.backends = {"mbx01": (self.b1, self.c1), "mbx02": (self.b2, self.c2)}

    def test_reload_finishes_in_flight_requests_closes_idle_connections_and_routes_new_ones(self):
        g = self.start(config(self.cert, "mbx01", self.backends))
        port = g.port("web")
        idle = client(port)
        self.assertEqual(get(idle, "/owa/"), (200, "MBX01 /owa/\n"))
        busy = client(port)
        result = {}

        def slow():
            result["answer"] = get(busy, "/slow")

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.5)  # the slow request is at the backend

        self.dir.write("gatehouse.toml", config(self.cert, "mbx02", self.backends))
        g.signal(__import__("signal").SIGHUP)
        g.wait_event("reloaded", timeout=10 * h.SLOW)

        # The idle keep-alive connection goes now, not after drain_timeout (20 s).
        self.assertTrue(closed_within(idle, 5 * h.SLOW), "idle keep-alive connection kept the old config")
        idle.close()
        t.join(15 * h.SLOW)
        self.assertEqual(result.get("answer"), (200, "MBX01 /slow\n"), "in-flight request lost on reload")
        # New connections follow the new route.
        fresh = client(port)
        self.assertEqual(get(fresh, "/owa/"), (200, "MBX02 /owa/\n"))
        fresh.close()
        busy.close()

    def test_absolute_form_target_is_routed_by_its_authority_and_sent_in_origin_form(self):
        g = self.start(config(self.cert, "mbx01", self.backends))
        s = client(g.port("web"))
        # RFC 9112 3.2.2: the target's authority overrides Host.
        s.sendall(f"GET https://{MAIL}/owa/?a=1 HTTP/1.1\r\nHost: other.fabrikam.test\r\n\r\n".encode())
        data = b""
        while b"\n" not in data.partition(b"\r\n\r\n")[2]:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data)
        self.assertEqual(data.partition(b"\r\n\r\n")[2], b"MBX01 /owa/?a=1\n")

    def test_stop_sends_goaway_to_idle_http2_and_does_not_wait_for_drain_timeout(self):
        g = self.start(config(self.cert, "mbx01", self.backends, drain="20s"))
        port = g.port("web")
        h1 = client(port)
        self.assertEqual(get(h1, "/owa/")[0], 200)
        h2 = client(port, "h2")
        self.assertEqual(h2.selected_alpn_protocol(), "h2")
        h2.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack(">I", 0)[1:] + b"\x04\x00" + b"\x00\x00\x00\x00")
        started = time.monotonic()
        g.signal(__import__("signal").SIGTERM)
        frames = b""
        h2.settimeout(10 * h.SLOW)
        try:
            while True:
                chunk = h2.recv(65536)
                if not chunk:
                    break
                frames += chunk
        except (ConnectionError, ssl.SSLError, socket.timeout):
            pass
        goaway = False
        pos = 0
        while pos + 9 <= len(frames):
            length = int.from_bytes(frames[pos:pos + 3], "big")
            if frames[pos + 3] == 0x7:
                goaway = True
            pos += 9 + length
        self.assertTrue(goaway, f"no GOAWAY in {frames!r}")
        self.assertTrue(closed_within(h1, 10 * h.SLOW))
        h1.close()
        h2.close()
        rc = g.proc.wait(15 * h.SLOW)
        elapsed = time.monotonic() - started
        self.assertEqual(rc, 0)
        self.assertLess(elapsed, 10, "stop waited for drain_timeout with only idle connections open")


if __name__ == "__main__":
    unittest.main()
