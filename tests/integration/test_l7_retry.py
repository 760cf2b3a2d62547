"""A request that reached a backend which then died without answering a byte
is sent once more, to another server, when that is safe: a GET (or another
idempotent method) without a body. A POST is never sent twice, and neither is
a request carrying Windows credentials."""

import socket
import ssl

import harness as h
import test_l7 as l7t

MAIL = "mail.contoso.test"


class DiesOnRequest(h.LoopbackServer):
    """Reads a request head, then closes the connection without a byte of answer."""

    def __init__(self, cert):
        self.heads = []
        super().__init__(cert)

    def _serve(self, raw):
        conn = raw
        try:
            raw.settimeout(10)
            conn = self.tls(raw)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            with self.lock:
                self.heads.append(data.split(b"\r\n", 1)[0].decode())
        except (OSError, ssl.SSLError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass


class Retry(h.GatehouseTestCase):
    def setUp(self):
        super().setUp()
        front = h.Cert(self.dir.path, "front", MAIL, [MAIL])
        mbx = h.Cert(self.dir.path, "mbx", "mbx01", [])
        self.dead = self.backend(DiesOnRequest(mbx))
        self.good = self.backend(l7t.PyBackend("mbx02", mbx))
        self.g = self.start(h.config(
            h.server_section(),
            h.certificate_section("front", front),
            '[[listener]]\nname = "web"\nbind = "127.0.0.1:0"\nmode = "l7"\n',
            '[[route]]\nlistener = "web"\npool = "owa"\n',
            f'[[server]]\nname = "dies"\naddress = "{self.dead.address}"\npin = "{mbx.thumbprint}"\n',
            f'[[server]]\nname = "good"\naddress = "{self.good.address}"\npin = "{mbx.thumbprint}"\n',
            '[[pool]]\nname = "owa"\nservers = ["dies", "good"]\n',
        ))
        self.port = self.g.port("web")

    def request(self, method, path, body=None, extra=""):
        ctx = h.client_context()
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.port), timeout=10), server_hostname=MAIL) as s:
            head = f"{method} {path} HTTP/1.1\r\nHost: {MAIL}\r\nConnection: close\r\n{extra}"
            if body is not None:
                head += f"Content-Length: {len(body)}\r\n"
            s.sendall((head + "\r\n").encode() + (body or b""))
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return int(data.split(b" ", 2)[1]), data

    def test_get_is_answered_by_another_server(self):
        for i in range(4):  # round robin: half of them go to the dying server first
            status, data = self.request("GET", f"/owa/get-{i}")
            self.assertEqual(status, 200, data[:300])
            self.assertIn(b'"mbx02"', data)
        self.assertTrue(any("/owa/get-" in h_ for h_ in self.dead.heads), "no request reached the dying server")

    def test_post_is_never_sent_twice(self):
        statuses = [self.request("POST", f"/owa/post-{i}", body=b"x=1")[0] for i in range(4)]
        self.assertIn(502, statuses)
        posts = [target for _, target, _ in self.good.requests if "/owa/post-" in target]
        dead_posts = [x for x in self.dead.heads if "/owa/post-" in x]
        # No POST reached both servers.
        for line in dead_posts:
            path = line.split(" ")[1]
            self.assertNotIn(path, posts, f"{path} was sent to a second server")

    def test_windows_credentials_are_never_sent_twice(self):
        statuses = [self.request("GET", f"/owa/ntlm-{i}", extra="Authorization: NTLM TlRMTVNTUAABAAAAB4IIog==\r\n")[0]
                    for i in range(4)]
        self.assertIn(502, statuses)
