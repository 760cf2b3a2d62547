"""No request is lost to a reload. Keep-alive HTTP/1.1 and HTTP/2 clients
keep one request in flight all the time while Gatehouse reloads 20 times:
every request sent is answered; an HTTP/1.1 connection is closed only after a
response that said `Connection: close` (or after it was quiet); an HTTP/2
connection only after GOAWAY, with every stream the client opened answered."""

import signal
import socket
import ssl
import threading
import time

import h2frames as f
import harness as h
import nginx_backend

MAIL = "mail.contoso.test"
RELOADS = 20


class Http1Client(threading.Thread):
    """Sequential keep-alive GETs; reconnects after a Connection: close."""

    def __init__(self, port, n, stop):
        super().__init__(daemon=True)
        self.port, self.n, self.stop = port, n, stop
        self.answered = 0
        self.closes_told = 0
        self.problems = []

    def connect(self):
        ctx = h.client_context()
        ctx.set_alpn_protocols(["http/1.1"])
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.port), timeout=10 * h.SLOW),
                            server_hostname=MAIL)
        return s

    def run(self):
        sock = None
        buf = b""
        i = 0
        try:
            while not self.stop.is_set():
                if sock is None:
                    sock, buf = self.connect(), b""
                i += 1
                path = f"/owa/h1-{self.n}-{i}"
                try:
                    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {MAIL}\r\n\r\n".encode())
                except OSError as e:
                    self.problems.append(f"{path}: send failed on a kept-alive connection ({e})")
                    return
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        self.problems.append(f"{path}: connection closed with the request unanswered")
                        return
                    buf += data
                head, _, rest = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                fields = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
                length = int(fields.get("content-length", "0"))
                while len(rest) < length:
                    data = sock.recv(65536)
                    if not data:
                        break
                    rest += data
                body, buf = rest[:length], rest[length:]
                if not lines[0].startswith("HTTP/1.1 200") or path.encode() not in body:
                    self.problems.append(f"{path}: {lines[0]} {body[:80]!r}")
                    return
                self.answered += 1
                if "close" in fields.get("connection", "").lower():
                    self.closes_told += 1
                    sock.close()
                    sock = None
        except (OSError, ssl.SSLError) as e:
            self.problems.append(f"request {i}: {e.__class__.__name__}: {e}")
        finally:
            if sock is not None:
                sock.close()


class Http2Client(threading.Thread):
    """Sequential requests on one HTTP/2 connection; a new one after GOAWAY."""

    def __init__(self, port, n, stop):
        super().__init__(daemon=True)
        self.port, self.n, self.stop = port, n, stop
        self.answered = 0
        self.goaways = 0
        self.problems = []

    def run(self):
        conn = client = None
        i = 0
        try:
            while not self.stop.is_set():
                if client is None or client.goaway is not None:
                    if client is not None:
                        self.goaways += 1
                        conn.close()
                    conn = f.TlsConn(self.port, alpn=["h2"], timeout=10 * h.SLOW)
                    client = f.H2Client(conn)
                    if not client.handshake(10 * h.SLOW):
                        self.problems.append(f"no SETTINGS ({conn.how})")
                        return
                i += 1
                path = f"/owa/h2-{self.n}-{i}"
                s = client.request(path, timeout=10 * h.SLOW)
                if s.status == 200 and path.encode() in bytes(s.body):
                    self.answered += 1
                    continue
                if client.goaway is not None and client.goaway[0] < s.id and s.status is None:
                    # Not taken (above the final GOAWAY's last stream): the
                    # client may send it again; it must not have been told
                    # to stop only after sending it. Count it as a retry.
                    self.problems.append(f"{path}: stream {s.id} above GOAWAY last stream {client.goaway[0]}")
                    return
                self.problems.append(f"{path}: status {s.status} reset {s.reset} goaway {client.goaway} "
                                     f"closed {conn.how}")
                return
        except Exception as e:  # noqa: BLE001 - reported
            self.problems.append(f"request {i}: {e.__class__.__name__}: {e}")
        finally:
            if conn is not None:
                conn.close()


class ReloadLoss(h.GatehouseTestCase):
    def run_reloads(self, workers):
        front = h.Cert(self.dir.path, "front", MAIL, [MAIL])
        mbx = h.Cert(self.dir.path, "mbx", "mbx01", [])
        nginx = nginx_backend.NginxBackend(self.dir.path, mbx, ["mbx01", "mbx02"])
        self._stops.append(nginx.stop)

        def text(server):
            return h.config(
                h.server_section(workers=workers, drain_timeout="10s"),
                h.certificate_section("front", front),
                '[[listener]]\nname = "web"\nbind = "127.0.0.1:0"\nmode = "l7"\n',
                '[[route]]\nlistener = "web"\npaths = ["/owa"]\npool = "owa"\n',
                f'[[server]]\nname = "mbx"\naddress = "{nginx.address(server)}"\npin = "{mbx.thumbprint}"\n',
                '[[pool]]\nname = "owa"\nservers = ["mbx"]\n',
            )

        g = self.start(text("mbx01"))
        port = g.port("web")
        stop = threading.Event()
        clients = [Http1Client(port, n, stop) for n in range(6)] + [Http2Client(port, n, stop) for n in range(3)]
        for c in clients:
            c.start()
        time.sleep(0.5)
        for r in range(RELOADS):
            # Alternate two configs that move the pool to the other backend.
            self.dir.write("gatehouse.toml", text("mbx02" if r % 2 == 0 else "mbx01"))
            g.signal(signal.SIGHUP)
            g.wait_event("reloaded", generation=r + 2, timeout=10 * h.SLOW)
            time.sleep(0.3)
        time.sleep(1.5)  # past the last drain's quiet period
        stop.set()
        for c in clients:
            c.join(30 * h.SLOW)
        h1 = [c for c in clients if isinstance(c, Http1Client)]
        h2 = [c for c in clients if isinstance(c, Http2Client)]
        answered = sum(c.answered for c in clients)
        print(f"\n  {RELOADS} reloads, {workers} worker(s): {answered} requests answered; HTTP/1.1 clients were told "
              f"Connection: close {sum(c.closes_told for c in h1)} times, HTTP/2 clients got GOAWAY "
              f"{sum(c.goaways for c in h2)} times")
        problems = [p for c in clients for p in c.problems]
        self.assertEqual(problems, [], "requests lost or connections closed untold across reloads")
        self.assertGreater(answered, 200)
        # The clients really moved to new generations, told each time.
        self.assertGreater(sum(c.closes_told for c in h1), 0)
        self.assertGreater(sum(c.goaways for c in h2), 0)

    def test_no_request_lost_across_20_reloads_one_worker(self):
        self.run_reloads(1)

    def test_no_request_lost_across_20_reloads_two_workers(self):
        self.run_reloads(2)
