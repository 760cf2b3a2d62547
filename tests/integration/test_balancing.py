"""Balancing, health and the admin endpoint end to end: the real gatehouse
binary in front of small Python HTTPS backends that present self-signed
certificates (like IIS on Exchange Mailbox servers) and answer per-protocol
health pages (/owa/healthcheck.htm, /mapi/healthcheck.htm, ...).

Covers source-IP affinity agreeing across workers and across two processes
(Maglev), signed affinity cookies (valid, tampered, drained server), health
per protocol (a server out for OWA and in for MAPI), the bound and unbound
namespace examples from conf/examples with a datacenter down, /metrics read by
the Prometheus text parser, /status rendered by headless Chromium, and
POST /reload with a broken and a good config."""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib

import harness as h

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "..", "..", "conf", "examples")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

MAIL = "mail.contoso.test"
PROBE_AGENT = "Gatehouse-HealthCheck"


# --- backends ---------------------------------------------------------------------

class MailboxBackend(h.LoopbackServer):
    """An HTTPS/1.1 keep-alive server on 127.0.0.1 presenting `cert`.

    Every answer is 200 with the backend's name in X-Backend and in the body,
    except paths in `.health` (lower-case path -> status), which answer that
    status: flip `.health["/owa/healthcheck.htm"] = 503` to take the server
    out of one protocol's pool. `.requests` records (host, path, user agent)
    of every request. `stop()` closes the listening socket and every open
    connection, so the proxy sees refused connects, as with a stopped IIS."""

    def __init__(self, name, cert):
        self.name = name
        self.health = {}
        self.requests = []
        super().__init__(cert, backlog=512)

    def _serve(self, raw):
        conn = raw
        try:
            raw.settimeout(30 * h.SLOW)
            conn = self.tls(raw)
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                fields = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    fields[k.strip().lower()] = v.strip()
                length = int(fields.get("content-length") or 0)
                while len(buf) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                buf = buf[length:]
                path = target.split("?", 1)[0]
                with self.lock:
                    self.requests.append((fields.get("host", ""), path, fields.get("user-agent", "")))
                    status = self.health.get(path.lower(), 200)
                body = f"{self.name} {method} {target}\n".encode()
                close = "close" in fields.get("connection", "").lower()
                answer = (f"HTTP/1.1 {status} {'OK' if status == 200 else 'Service Unavailable'}\r\n"
                          f"X-Backend: {self.name}\r\nContent-Type: text/plain\r\n"
                          f"Content-Length: {len(body)}\r\n"
                          f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n").encode()
                conn.sendall(answer + (body if method != "HEAD" else b""))
                if close:
                    return
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def traffic(self):
        """(host, path) of the requests that were not health probes."""
        with self.lock:
            return [(host, path) for host, path, agent in self.requests if agent != PROBE_AGENT]


# --- clients ----------------------------------------------------------------------

CLIENT_CTX = h.client_context()


class Client(http.client.HTTPSConnection):
    """A keep-alive HTTPS client to 127.0.0.1:port sending SNI `sni`,
    optionally from source address `source` (any 127.0.0.0/8 address)."""

    def __init__(self, port, sni=MAIL, source=None):
        super().__init__("127.0.0.1", port, context=CLIENT_CTX, timeout=15 * h.SLOW,
                         source_address=(source, 0) if source else None)
        self.sni = sni

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout, self.source_address)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.sni)

    def get(self, path, host=None, headers=None):
        """(status, response headers, body text)."""
        fields = {"Host": host or self.sni}
        fields.update(headers or {})
        self.request("GET", path, headers=fields)
        resp = self.getresponse()
        body = resp.read().decode("latin-1")
        return resp.status, resp.headers, body


def fetch(port, path, host=MAIL, source=None, headers=None):
    """One request on a new connection (Connection: close)."""
    c = Client(port, sni=host, source=source)
    try:
        fields = {"Connection": "close"}
        fields.update(headers or {})
        return c.get(path, host=host, headers=fields)
    finally:
        c.close()


def backend_of(headers):
    return headers.get("X-Backend")


class Admin:
    """The plain-HTTP admin endpoint of one gatehouse process."""

    def __init__(self, port):
        self.port = port
        self.base = f"http://127.0.0.1:{port}"

    def call(self, method, path):
        """(status, body text); HTTP errors are answers too."""
        req = urllib.request.Request(self.base + path, method=method, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(req, timeout=10 * h.SLOW) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def json(self, method, path):
        status, body = self.call(method, path)
        return status, json.loads(body)

    def status(self):
        status, doc = self.json("GET", "/status.json")
        assert status == 200, status
        return doc

    def server(self, pool, server):
        for p in self.status()["pools"]:
            if p["name"] == pool:
                for s in p["servers"]:
                    if s["name"] == server:
                        return s
        raise AssertionError(f"no server {server} in pool {pool} in /status.json")

    def pool(self, pool):
        for p in self.status()["pools"]:
            if p["name"] == pool:
                return p
        raise AssertionError(f"no pool {pool} in /status.json")

    def wait(self, predicate, timeout, what):
        """Polls /status.json until predicate(doc) holds; returns the doc."""
        deadline = time.monotonic() + timeout * h.SLOW
        doc = None
        while time.monotonic() < deadline:
            doc = self.status()
            if predicate(doc):
                return doc
            time.sleep(0.05)
        raise AssertionError(f"{what} not seen within {timeout * h.SLOW}s; last /status.json:\n"
                             + json.dumps(doc, indent=1))


def states(doc):
    """{(pool, server): state} from a /status.json document."""
    return {(p["name"], s["name"]): s["state"] for p in doc["pools"] for s in p["servers"]}


# --- config pieces -------------------------------------------------------------------

def q(items):
    return "[" + ", ".join('"' + x + '"' for x in items) + "]"


def server_section(workers=1, extra=""):
    return (f'[global]\nworkers = {workers}\nadmin = "127.0.0.1:0"\naccess_log = "-"\n'
            f'drain_timeout = "2s"\n{extra}\n')


def listener(name="web", mode="l7", extra=""):
    return f'[[listener]]\nname = "{name}"\nbind = "127.0.0.1:0"\nmode = "{mode}"\n{extra}\n'


def route(pool, listener_name="web", hosts=None, paths=None, affinity=None):
    text = f'[[route]]\nlistener = "{listener_name}"\npool = "{pool}"\n'
    if hosts is not None:
        text += f"hosts = {q(hosts)}\n"
    if paths is not None:
        text += f"paths = {q(paths)}\n"
    if affinity is not None:
        text += f'affinity = "{affinity}"\n'
    return text


def server(name, address, pin, site=None):
    text = f'[[server]]\nname = "{name}"\naddress = "{address}"\npin = "{pin}"\n'
    if site:
        text += f'site = "{site}"\n'
    return text


def pool(name, servers, balance="round_robin", health=None, extra=""):
    text = f'[[pool]]\nname = "{name}"\nservers = {q(servers)}\nbalance = "{balance}"\ntls = "verify"\n'
    if health:
        text += f"health = {health}\n"
    return text + extra + "\n"


def http_health(path, interval="500ms", rise=2, fall=2):
    return (f'{{ kind = "http", path = "{path}", expect = 200, interval = "{interval}", timeout = "500ms", '
            f'rise = {rise}, fall = {fall} }}')


def tcp_health(interval="200ms"):
    return f'{{ kind = "tcp", interval = "{interval}", timeout = "500ms", rise = 1, fall = 1 }}'


# --- PNG, decoded in pure Python ---------------------------------------------------------

def png_decode(data):
    """(width, height, channels, rows) of an 8-bit non-interlaced RGB or RGBA
    PNG; rows are bytearrays of width * channels bytes."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG signature")
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        crc = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        if zlib.crc32(kind + chunk) & 0xFFFFFFFF != crc:
            raise ValueError(f"bad CRC in {kind!r} chunk")
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if ihdr is None or not idat:
        raise ValueError("no IHDR or IDAT")
    width, height, depth, color, _compression, _filter, interlace = ihdr
    if depth != 8 or color not in (2, 6) or interlace != 0:
        raise ValueError(f"unsupported PNG: depth {depth} colour type {color} interlace {interlace}")
    channels = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    if len(raw) != height * (stride + 1):
        raise ValueError(f"image data is {len(raw)} bytes, expected {height * (stride + 1)}")
    rows, prev = [], bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if ftype == 1:  # Sub
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 0xFF
        elif ftype == 2:  # Up
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
        elif ftype == 3:  # Average
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:  # Paeth
            for i in range(stride):
                a = line[i - channels] if i >= channels else 0
                b = prev[i]
                c = prev[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        elif ftype != 0:
            raise ValueError(f"bad filter type {ftype} in row {y}")
        rows.append(line)
        prev = line
    return width, height, channels, rows


def count_colour(rows, channels, rgb):
    """Pixels of exactly colour `rgb` (alpha ignored)."""
    needle = bytes(rgb)
    n = 0
    for line in rows:
        start = line.find(needle)
        while start >= 0:
            if start % channels == 0:
                n += 1
            start = line.find(needle, start + 1)
    return n


# --- the tests ---------------------------------------------------------------------

class BalancingTest(h.GatehouseTestCase):

    def front(self):
        return h.Cert(self.dir.path, "front", MAIL, sans=[MAIL, "*.contoso.test"])

    def mailbox_cert(self, count=4):
        names = [f"mbx{i:02d}.contoso.com" for i in range(1, count + 1)]
        return h.Cert(self.dir.path, "mbx", names[0], sans=names)

    def mailboxes(self, cert, names):
        return {n: self.backend(MailboxBackend(n, cert)) for n in names}

    def start_with_admin(self, text, name="gatehouse.toml"):
        g = self.start(text, name=name)
        return g, Admin(g.port("admin"))

    # 1 -----------------------------------------------------------------------------
    def test_source_ip_affinity_agrees_across_workers_and_processes(self):
        front, mbx = self.front(), self.mailbox_cert()
        pin = mbx.pin()
        names = ["mbx01", "mbx02", "mbx03", "mbx04"]
        backends = self.mailboxes(mbx, names)
        text = h.config(
            server_section(workers=2), h.certificate_section("front", front),
            listener("web", "l7"), listener("tcp", "l4"),
            route("p", "web", affinity="source_ip"),
            route("p", "tcp", hosts=[MAIL], affinity="source_ip"),
            *[server(n, backends[n].address, pin) for n in names],
            pool("p", names, balance="round_robin"))
        first = self.start(text, name="one.toml")
        second = self.start(text, name="two.toml")
        processes = [("one", first.port("web"), first.port("tcp")), ("two", second.port("web"), second.port("tcp"))]

        sources = [f"127.0.0.{n}" for n in range(10, 30)]
        seen = {}  # (listener kind, source) -> {process: set of servers}
        for source in sources:
            for label, web, tcp in processes:
                for kind, port in (("l7", web), ("l4", tcp)):
                    for _ in range(3):  # a new connection each time: may land on either worker
                        status, headers, _ = fetch(port, "/owa/", source=source)
                        self.assertEqual(status, 200, f"{kind} via {label} from {source}")
                        seen.setdefault((kind, source), {}).setdefault(label, set()).add(backend_of(headers))

        for kind in ("l7", "l4"):
            used = set()
            for source in sources:
                by_process = seen[(kind, source)]
                for label, servers in by_process.items():
                    self.assertEqual(len(servers), 1, f"{kind}: {source} went to {sorted(servers)} via process {label}")
                self.assertEqual(by_process["one"], by_process["two"],
                                 f"{kind}: the two processes disagree for {source}: {by_process}")
                used |= by_process["one"]
            self.assertGreater(len(used), 1, f"{kind}: every one of {len(sources)} client addresses went to {used}")

        # Each process runs 2 workers and every request above came on a new
        # connection, so the agreement is across workers too.
        status = Admin(first.port("admin")).status()
        self.assertEqual(status["workers"], 2)

    # 2 -----------------------------------------------------------------------------
    def test_cookie_affinity_tamper_drain_and_enable(self):
        front, mbx = self.front(), self.mailbox_cert()
        pin = mbx.pin()
        names = ["mbx01", "mbx02", "mbx03"]
        backends = self.mailboxes(mbx, names)
        g, admin = self.start_with_admin(h.config(
            server_section(workers=1), h.certificate_section("front", front), listener("web", "l7"),
            route("owa", "web", paths=["/owa"], affinity="cookie"),
            *[server(n, backends[n].address, pin) for n in names],
            pool("owa", names, balance="round_robin")))
        port = g.port("web")

        status, headers, _ = fetch(port, "/owa/")
        self.assertEqual(status, 200)
        set_cookie = headers.get("Set-Cookie")
        self.assertIsNotNone(set_cookie, "first response has no Set-Cookie")
        m = re.fullmatch(r"GatehouseAffinity=([A-Za-z0-9_-]+)\.([0-9a-f]+); Path=/; Secure; HttpOnly", set_cookie)
        self.assertIsNotNone(m, f"unexpected Set-Cookie: {set_cookie!r}")
        sticky, mac = m.group(1), m.group(2)
        self.assertEqual(sticky, backend_of(headers), "the cookie names another server than the one that answered")
        cookie = f"GatehouseAffinity={sticky}.{mac}"

        def run(cookie_header, n, connections=4):
            """n requests carrying `cookie_header` over a few keep-alive
            connections; [(backend, Set-Cookie or None)]."""
            out = []
            for c in range(connections):
                client = Client(port)
                try:
                    for _ in range(n // connections):
                        status, headers, _ = client.get("/owa/x", headers={"Cookie": cookie_header})
                        self.assertEqual(status, 200)
                        out.append((backend_of(headers), headers.get("Set-Cookie")))
                finally:
                    client.close()
            return out

        # 200 requests with the cookie (alone and among other cookies) all reach one server.
        answers = run(cookie, 100) + run(f"a=1; {cookie}; z=2", 100)
        self.assertEqual(len(answers), 200)
        self.assertEqual({b for b, _ in answers}, {sticky})
        self.assertEqual([sc for _, sc in answers if sc], [], "a valid cookie got a new Set-Cookie")

        # A tampered MAC is ignored: round robin over all three, each answer with a fresh cookie.
        flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
        answers = run(f"GatehouseAffinity={sticky}.{flipped}", 60, connections=2)
        counts = {n: sum(1 for b, _ in answers if b == n) for n in names}
        for n in names:
            self.assertGreaterEqual(counts[n], 15, f"tampered cookie not balanced round robin: {counts}")
        for b, sc in answers:
            self.assertIsNotNone(sc, f"answer from {b} to a tampered cookie has no Set-Cookie")
            self.assertTrue(sc.startswith(f"GatehouseAffinity={b}."), f"fresh cookie {sc!r} from {b}")
            self.assertNotIn(flipped, sc)
        # A cookie naming an unknown server is ignored too.
        answers = run(f"GatehouseAffinity=mbx99.{mac}", 12, connections=1)
        self.assertGreater(len({b for b, _ in answers}), 1, answers)

        # Drained: requests with the cookie move to the other servers (and get their cookies).
        self.assertEqual(admin.json("POST", "/pools/owa/servers/nosuch/drain")[0], 404)
        self.assertEqual(admin.json("POST", f"/pools/nosuch/servers/{sticky}/drain")[0], 404)
        status, doc = admin.json("POST", f"/pools/owa/servers/{sticky}/drain")
        self.assertEqual((status, doc), (200, {"pool": "owa", "server": sticky, "drained": True}))
        self.assertEqual(admin.server("owa", sticky)["state"], "drained")
        answers = run(cookie, 30, connections=2)
        others = {b for b, _ in answers}
        self.assertNotIn(sticky, others, "a drained server still got requests by cookie")
        self.assertEqual(others, set(names) - {sticky}, f"drained traffic went to {others}")
        for b, sc in answers:
            self.assertTrue(sc and sc.startswith(f"GatehouseAffinity={b}."), f"answer from {b}: Set-Cookie {sc!r}")

        # Enabled again: the cookie brings them back.
        status, doc = admin.json("POST", f"/pools/owa/servers/{sticky}/enable")
        self.assertEqual((status, doc), (200, {"pool": "owa", "server": sticky, "drained": False}))
        self.assertEqual(admin.server("owa", sticky)["state"], "up")
        answers = run(cookie, 20, connections=2)
        self.assertEqual({b for b, _ in answers}, {sticky})

    # 3 -----------------------------------------------------------------------------
    def test_health_per_protocol(self):
        front, mbx = self.front(), self.mailbox_cert()
        pin = mbx.pin()
        a, b = self.backend(MailboxBackend("mbx01", mbx)), self.backend(MailboxBackend("mbx02", mbx))
        g, admin = self.start_with_admin(h.config(
            server_section(workers=2), h.certificate_section("front", front), listener("web", "l7"),
            route("owa", "web", paths=["/owa"]), route("mapi", "web", paths=["/mapi"]),
            server("mbx01", a.address, pin), server("mbx02", b.address, pin),
            pool("owa", ["mbx01", "mbx02"], health=http_health("/owa/healthcheck.htm")),
            pool("mapi", ["mbx01", "mbx02"], health=http_health("/mapi/healthcheck.htm"))))
        port = g.port("web")

        def spread(path, n=20):
            client = Client(port)
            try:
                out = []
                for _ in range(n):
                    status, headers, _ = client.get(path)
                    self.assertEqual(status, 200, path)
                    out.append(backend_of(headers))
                return out
            finally:
                client.close()

        # Probes reach each server on each pool's own path.
        admin.wait(lambda d: all(s["last_check"] for p in d["pools"] for s in p["servers"]), 3, "a first probe")
        probed = {(p, s.name) for s in (a, b) for _, p, agent in s.requests if agent == PROBE_AGENT}
        self.assertLessEqual({("/owa/healthcheck.htm", "mbx01"), ("/mapi/healthcheck.htm", "mbx01")}, probed)
        self.assertIn("mbx01", spread("/owa/"))
        self.assertIn("mbx01", spread("/mapi/"))
        self.assertFalse([e for e in g.events if e.get("event") == "server_down"])

        # OWA on mbx01 fails: out of owa after `fall` probes, still in mapi.
        a.health["/owa/healthcheck.htm"] = 503
        down = g.wait_event("server_down", timeout=2 * 0.5 + 0.5 + 1.0, pool="owa", server="mbx01")
        self.assertIn("503", down.get("reason", ""), down)
        doc = admin.status()
        self.assertEqual(states(doc)[("owa", "mbx01")], "down")
        self.assertEqual(states(doc)[("mapi", "mbx01")], "up")
        self.assertEqual(states(doc)[("owa", "mbx02")], "up")
        self.assertEqual(set(spread("/owa/")), {"mbx02"}, "owa traffic still reaches the server down for owa")
        mapi = spread("/mapi/")
        self.assertGreaterEqual(mapi.count("mbx01"), 5, f"mapi traffic left mbx01: {mapi}")
        self.assertFalse([e for e in g.events if e.get("event") == "server_down" and e.get("pool") == "mapi"])

        # Back: in owa again after `rise` good probes.
        a.health["/owa/healthcheck.htm"] = 200
        up = g.wait_event("server_up", timeout=2 * 0.5 + 0.5 + 1.0, pool="owa", server="mbx01")
        self.assertIn("after", up)
        self.assertEqual(states(admin.status())[("owa", "mbx01")], "up")
        self.assertGreaterEqual(spread("/owa/").count("mbx01"), 5)

    # 4 -----------------------------------------------------------------------------
    def _example(self, name):
        """conf/examples/NAME copied into the test dir with the certificates it
        names generated; returns its path."""
        certs = os.path.join(self.dir.path, "certs")
        os.makedirs(certs, exist_ok=True)
        if not os.path.exists(os.path.join(certs, "mail.crt")):
            h.Cert(certs, "mail", "mail.contoso.com", key="rsa2048",
                   sans=["mail.contoso.com", "mail-dc1.contoso.com", "mail-dc2.contoso.com",
                         "autodiscover.contoso.com"])
            ca = h.Cert(certs, "exchange-ca", "ca.contoso.com")
            shutil.copy(ca.cert, os.path.join(certs, "exchange-ca.pem"))
        path = os.path.join(self.dir.path, name)
        shutil.copy(os.path.join(EXAMPLES, name), path)
        return path

    def _loopback(self, path, backends, ca_file):
        """The example at `path` rewritten to run here: listeners, admin and
        servers on loopback, short health intervals, `ca_file` as the pools' CA,
        loopback clients allowed on the internal-only routes (/ecp)."""
        with open(path) as f:
            text = f.read()
        text = re.sub(r'bind = "[^"]*"', 'bind = "127.0.0.1:0"', text)
        text = re.sub(r'admin = "[^"]*"', 'admin = "127.0.0.1:0"', text)
        text = re.sub(r"workers = 0", "workers = 2", text)
        text = re.sub(r'drain_timeout = "[^"]*"', 'drain_timeout = "2s"', text)
        text = re.sub(r'ca = "[^"]*"', f'ca = "{ca_file}"', text)
        text = text.replace('allow = ["', 'allow = ["127.0.0.0/8", "')
        text, n = re.subn(r'interval = "5s", timeout = "2s", rise = 2, fall = 3',
                          'interval = "250ms", timeout = "500ms", rise = 2, fall = 2', text)
        self.assertGreater(n, 5, "health settings in the example changed; update the rewrite")

        def address(m):
            return f'name = "{m.group(1)}"\naddress = "{backends[m.group(1)].address}"'
        text, n = re.subn(r'name = "(mbx\d\d)"\naddress = "[^"]*"', address, text)
        self.assertEqual(n, len(backends))
        return self.start(text, name="loopback-" + os.path.basename(path))

    def test_namespace_examples_check(self):
        for name in ("unbound.toml", "bound.toml"):
            path = self._example(name)
            p = h.run(["check", "-c", path], check=False)
            self.assertEqual(p.returncode, 0, f"gatehouse check -c {name}:\n{p.stdout}\n{p.stderr}")
            out = p.stdout + p.stderr
            self.assertNotIn("MISSING", out, out)
            self.assertIn("0 errors", out)
            hosts = ["mail.contoso.com"] if name == "unbound.toml" else ["mail-dc1.contoso.com", "mail-dc2.contoso.com"]
            for host in hosts + ["autodiscover.contoso.com"]:
                self.assertRegex(out, rf"{re.escape(host)}\s+contoso-san\s+exact", out)

    def _namespace(self, name, mbx):
        path = self._example(name)
        names = ["mbx01", "mbx02", "mbx03", "mbx04"]
        backends = self.mailboxes(mbx, names)
        g = self._loopback(path, backends, mbx.cert)
        admin = Admin(g.port("admin"))
        admin.wait(lambda d: all(s["last_check"].endswith(" ok") for p in d["pools"] for s in p["servers"]), 5,
                   "every server probed healthy (backend TLS verified with ca and server_name)")
        return g, admin, backends

    PROTOCOL_PATHS = ["/owa/", "/ecp/", "/mapi/emsmdb/", "/EWS/Exchange.asmx", "/Microsoft-Server-ActiveSync",
                      "/OAB/x/oab.xml", "/rpc/rpcproxy.dll"]

    def _all_protocols(self, port, host, expect=200):
        """Every protocol path of `host` once, plus autodiscover; {path: backend}."""
        seen = {}
        client = Client(port, sni=host)
        try:
            for path in self.PROTOCOL_PATHS:
                status, headers, body = client.get(path, host=host)
                self.assertEqual(status, expect, f"{host}{path}: {body}")
                seen[path] = backend_of(headers)
        finally:
            client.close()
        return seen

    def test_unbound_namespace_survives_a_datacenter(self):
        mbx = self.mailbox_cert()
        g, admin, backends = self._namespace("unbound.toml", mbx)
        port = g.port("https")
        used = set()
        for _ in range(6):
            used |= set(self._all_protocols(port, "mail.contoso.com").values())
        self.assertTrue(used & {"mbx01", "mbx02"} and used & {"mbx03", "mbx04"},
                        f"one namespace over both sites, yet only {sorted(used)} served")

        for n in ("mbx01", "mbx02"):
            backends[n].stop()
        admin.wait(lambda d: all(s["state"] == "down" for p in d["pools"] for s in p["servers"]
                                 if s["site"] == "dc1"), 5, "every dc1 server down in every pool")
        for _ in range(4):
            seen = self._all_protocols(port, "mail.contoso.com")
            self.assertLessEqual(set(seen.values()), {"mbx03", "mbx04"}, seen)
            status, headers, _ = fetch(port, "/Autodiscover/Autodiscover.xml", host="autodiscover.contoso.com")
            self.assertEqual(status, 200)
            self.assertIn(backend_of(headers), ("mbx03", "mbx04"))
        # IMAP (l4, TLS probes) too: the stream reaches a dc2 server.
        status, headers, _ = fetch(g.port("imaps"), "/imap-over-l4", host="mail.contoso.com")
        self.assertEqual(status, 200)
        self.assertIn(backend_of(headers), ("mbx03", "mbx04"))

    def test_bound_namespace_switchover_and_no_cross_site(self):
        mbx = self.mailbox_cert()
        # dc1 down: mail-dc1 falls back to the dc2 pools.
        g, admin, backends = self._namespace("bound.toml", mbx)
        port = g.port("https")
        self.assertLessEqual(set(self._all_protocols(port, "mail-dc1.contoso.com").values()), {"mbx01", "mbx02"})
        self.assertLessEqual(set(self._all_protocols(port, "mail-dc2.contoso.com").values()), {"mbx03", "mbx04"})
        for n in ("mbx01", "mbx02"):
            backends[n].stop()
        doc = admin.wait(lambda d: all(not p["available"] for p in d["pools"] if p["name"].endswith("-dc1")), 5,
                         "every dc1 pool without a server")
        for p in doc["pools"]:
            if p["name"].endswith("-dc1"):
                self.assertEqual(p["serving"], p["fallback"], p)
        for _ in range(3):
            seen = self._all_protocols(port, "mail-dc1.contoso.com")
            self.assertLessEqual(set(seen.values()), {"mbx03", "mbx04"}, seen)
        status, headers, _ = fetch(port, "/Autodiscover/Autodiscover.xml", host="autodiscover.contoso.com")
        self.assertEqual(status, 200)
        self.assertIn(backend_of(headers), ("mbx03", "mbx04"))
        g.stop()

        # dc2 down instead: mail-dc2 gets 503 and never reaches dc1; mail-dc1 keeps working.
        g, admin, backends = self._namespace("bound.toml", mbx)
        port = g.port("https")
        for n in ("mbx03", "mbx04"):
            backends[n].stop()
        doc = admin.wait(lambda d: all(not p["available"] for p in d["pools"] if p["name"].endswith("-dc2")), 5,
                         "every dc2 pool without a server")
        for p in doc["pools"]:
            if p["name"].endswith("-dc2"):
                self.assertEqual((p["fallback"], p["serving"]), ("", p["name"]), p)
        for _ in range(3):
            self._all_protocols(port, "mail-dc2.contoso.com", expect=503)
            seen = self._all_protocols(port, "mail-dc1.contoso.com")
            self.assertLessEqual(set(seen.values()), {"mbx01", "mbx02"}, seen)
        for n in ("mbx01", "mbx02"):
            leaked = [r for r in backends[n].traffic() if r[0].startswith("mail-dc2")]
            self.assertEqual(leaked, [], f"mail-dc2 requests reached {n} in dc1")
        self.assertTrue(backends["mbx01"].traffic() or backends["mbx02"].traffic())

    def _site(self, admin, name):
        for site in admin.status()["sites"]:
            if site["name"] == name:
                return site
        raise AssertionError(f"no site {name} in /status.json")

    def _only_dc2(self, port, g, rounds=8):
        """Every protocol of the unbound namespace `rounds` times, autodiscover
        and IMAP (l4) too: every answer from a dc2 server."""
        for _ in range(rounds):
            seen = self._all_protocols(port, "mail.contoso.com")
            self.assertLessEqual(set(seen.values()), {"mbx03", "mbx04"}, seen)
            status, headers, _ = fetch(port, "/Autodiscover/Autodiscover.xml", host="autodiscover.contoso.com")
            self.assertEqual((status, backend_of(headers) in ("mbx03", "mbx04")), (200, True), headers)
            status, headers, _ = fetch(g.port("imaps"), "/imap-over-l4", host="mail.contoso.com")
            self.assertEqual((status, backend_of(headers) in ("mbx03", "mbx04")), (200, True), headers)

    def test_site_drain_enable_and_reload(self):
        mbx = self.mailbox_cert(count=5)
        g, admin, backends = self._namespace("unbound.toml", mbx)
        port = g.port("https")
        pools = [p["name"] for p in admin.status()["pools"]]
        self.assertGreater(len(pools), 5)
        self.assertEqual({s["name"]: s["state"] for s in admin.status()["sites"]}, {"dc1": "active", "dc2": "active"})

        status, doc = admin.json("POST", "/sites/dc9/drain")
        self.assertEqual(status, 404, doc)
        self.assertIn('"dc1", "dc2"', doc["error"])
        self.assertEqual(doc["sites"], ["dc1", "dc2"])
        self.assertEqual(admin.json("POST", "/sites/dc9/enable")[0], 404)
        self.assertEqual(admin.json("POST", "/sites//drain")[0], 404)
        self.assertEqual(admin.call("GET", "/sites/dc1/drain")[0], 404, "drain is a POST")

        # One server drained by hand first: the site is partly drained, and
        # the site drain changes only the other pairs.
        self.assertEqual(admin.json("POST", "/pools/owa/servers/mbx01/drain")[0], 200)
        self.assertEqual(self._site(admin, "dc1")["state"], "partly drained")
        dc1 = {(p, s) for p in pools for s in ("mbx01", "mbx02")}
        status, doc = admin.json("POST", "/sites/dc1/drain")
        self.assertEqual(status, 200, doc)
        self.assertEqual((doc["site"], doc["drained"]), ("dc1", True))
        self.assertEqual({(x["pool"], x["server"]) for x in doc["servers"]}, dc1 - {("owa", "mbx01")})
        self.assertEqual(len(doc["servers"]), len(dc1) - 1)
        g.wait_event("site_drained", site="dc1", count=len(dc1) - 1)
        self.assertEqual(admin.json("POST", "/sites/dc1/drain")[1]["servers"], [], "drained twice")

        site = self._site(admin, "dc1")
        self.assertEqual((site["state"], site["drained_as_site"]), ("drained", True))
        self.assertEqual({(x["pool"], x["server"]) for x in site["servers"]}, dc1)
        self.assertTrue(all(x["drained"] and x["healthy"] for x in site["servers"]), site)
        self.assertEqual(self._site(admin, "dc2")["state"], "active")
        for (p, s), state in states(admin.status()).items():
            self.assertEqual(state, "drained" if s in ("mbx01", "mbx02") else "up", (p, s))
        html = admin.call("GET", "/status")[1]
        self.assertIn("<h2>Sites</h2>", html)
        self.assertIn('<tr class="site-drained"><td>dc1</td><td>drained</td><td>yes</td>', html)

        before = {n: len(backends[n].traffic()) for n in ("mbx01", "mbx02")}
        self._only_dc2(port, g)
        self.assertEqual({n: len(backends[n].traffic()) for n in ("mbx01", "mbx02")}, before,
                         "a drained site's servers got requests")

        # A reload keeps the site drained, and a server it adds to the site
        # (mbx05 in the owa pool) comes up drained.
        mbx05 = self.backend(MailboxBackend("mbx05", mbx))
        with open(g.config_path) as f:
            text = f.read()
        text = text.replace('servers = ["mbx01", "mbx02", "mbx03", "mbx04"]',
                            'servers = ["mbx01", "mbx02", "mbx03", "mbx04", "mbx05"]', 1)
        text += (f'\n[[server]]\nname = "mbx05"\naddress = "{mbx05.address}"\nsite = "dc1"\n'
                 f'server_name = "mbx05.contoso.com"\npin = ""\n')
        with open(g.config_path, "w") as f:
            f.write(text)
        status, doc = admin.json("POST", "/reload")
        self.assertEqual(status, 200, doc)
        g.wait_event("site_drained", site="dc1", count=1, by="reload")
        site = self._site(admin, "dc1")
        self.assertEqual((site["state"], site["drained_as_site"]), ("drained", True))
        self.assertEqual({(x["pool"], x["server"]) for x in site["servers"]}, dc1 | {("owa", "mbx05")})
        self.assertEqual(admin.server("owa", "mbx05")["state"], "drained")
        gen = admin.status()["generation"]
        g.signal(signal.SIGHUP)
        admin.wait(lambda d: d["generation"] == gen + 1, 10, "the SIGHUP reload")
        self.assertEqual(self._site(admin, "dc1")["state"], "drained")
        self._only_dc2(port, g, rounds=4)
        self.assertEqual([r for r in mbx05.traffic()], [])

        # Enabled: every dc1 pair, also the one drained by hand, takes requests again.
        status, doc = admin.json("POST", "/sites/dc1/enable")
        self.assertEqual(status, 200, doc)
        self.assertEqual((doc["site"], doc["drained"]), ("dc1", False))
        self.assertEqual({(x["pool"], x["server"]) for x in doc["servers"]}, dc1 | {("owa", "mbx05")})
        g.wait_event("site_enabled", site="dc1", count=len(dc1) + 1)
        site = self._site(admin, "dc1")
        self.assertEqual((site["state"], site["drained_as_site"]), ("active", False))
        self.assertFalse(any(x["drained"] for x in site["servers"]), site)
        used = set()
        for _ in range(8):
            used |= set(self._all_protocols(port, "mail.contoso.com").values())
        self.assertTrue(used & {"mbx01", "mbx02"} and used & {"mbx03", "mbx04"},
                        f"after enabling dc1 only {sorted(used)} served")
        # ...and stays enabled over a reload.
        self.assertEqual(admin.json("POST", "/reload")[0], 200)
        self.assertEqual(self._site(admin, "dc1")["state"], "active")

    # 5 -----------------------------------------------------------------------------
    def test_metrics_parse_as_prometheus_text(self):
        try:
            from prometheus_client.parser import text_string_to_metric_families
        except ImportError:
            sys.path.append("/usr/lib/python3/dist-packages")
            try:
                from prometheus_client.parser import text_string_to_metric_families
            except ImportError:
                self.skipTest("prometheus_client not installed (Debian python3-prometheus-client, see .ci/setup)")

        front, mbx = self.front(), self.mailbox_cert()
        pin = mbx.pin()
        a = self.backend(MailboxBackend("mbx01", mbx))
        dead = h.free_port()
        g, admin = self.start_with_admin(h.config(
            server_section(workers=2), h.certificate_section("front", front), listener("web", "l7"),
            route("live", "web", hosts=[MAIL], paths=["/owa"]), route("gone", "web", hosts=[MAIL], paths=["/gone"]),
            server("mbx01", a.address, pin, site="dc1"), server("mbx09", f"127.0.0.1:{dead}", pin, site="dc2"),
            pool("live", ["mbx01", "mbx09"], health=tcp_health()),
            pool("gone", ["mbx09"], health=tcp_health())))
        port = g.port("web")
        g.wait_event("server_down", timeout=5, pool="live", server="mbx09")
        g.wait_event("server_down", timeout=5, pool="gone", server="mbx09")

        client = Client(port)
        for _ in range(10):
            self.assertEqual(client.get("/owa/")[0], 200)
        for _ in range(3):
            self.assertEqual(client.get("/gone/")[0], 503)
        for _ in range(2):
            self.assertEqual(client.get("/nothing-routes-here")[0], 404)
        client.close()

        def scrape():
            status, text = admin.call("GET", "/metrics")
            self.assertEqual(status, 200)
            fams = {f.name: f for f in text_string_to_metric_families(text)}
            return text, fams

        def requests(fams, **labels):
            return sum(s.value for s in fams["gatehouse_requests"].samples
                       if s.name == "gatehouse_requests_total" and all(s.labels.get(k) == v for k, v in labels.items()))

        deadline = time.monotonic() + 5 * h.SLOW
        while True:
            text, fams = scrape()
            if "gatehouse_requests" in fams and requests(fams) >= 15 or time.monotonic() > deadline:
                break
            time.sleep(0.1)

        for family in ("gatehouse_config_generation", "gatehouse_connections", "gatehouse_connections_active",
                       "gatehouse_handshakes", "gatehouse_sni", "gatehouse_requests",
                       "gatehouse_request_duration_seconds", "gatehouse_server_up", "gatehouse_server_drained",
                       "gatehouse_server_active", "gatehouse_backend_connections", "gatehouse_backend_failures",
                       "gatehouse_certificate_expiry_days"):
            self.assertIn(family, fams, f"family {family} missing from /metrics:\n{text}")
        self.assertEqual(fams["gatehouse_requests"].type, "counter")
        self.assertEqual(fams["gatehouse_request_duration_seconds"].type, "histogram")
        self.assertEqual(fams["gatehouse_server_up"].type, "gauge")

        self.assertEqual(requests(fams, pool="live", code="200"), 10, text)
        self.assertEqual(requests(fams, pool="gone", code="503"), 3, text)
        self.assertEqual(requests(fams, code="404"), 2, text)
        self.assertEqual(requests(fams), 15, text)
        self.assertEqual({s.labels["listener"] for s in fams["gatehouse_requests"].samples}, {"web"})

        up = {(s.labels["pool"], s.labels["server"]): (s.value, s.labels["site"]) for s in fams["gatehouse_server_up"].samples}
        self.assertEqual(up, {("live", "mbx01"): (1, "dc1"), ("live", "mbx09"): (0, "dc2"),
                              ("gone", "mbx09"): (0, "dc2")})

        hist = [s for s in fams["gatehouse_request_duration_seconds"].samples if s.labels.get("pool") == "live"]
        count = [s.value for s in hist if s.name.endswith("_count")]
        self.assertEqual(count, [10], text)
        buckets = [(float(s.labels["le"]), s.value) for s in hist if s.name.endswith("_bucket")]
        values = [v for _, v in sorted(buckets)]
        self.assertEqual(values, sorted(values), "histogram buckets are not cumulative")
        self.assertEqual(values[-1], 10)

        def value(family, sample=None, **labels):
            for s in fams[family].samples:
                if (sample is None or s.name == sample) and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
            raise AssertionError(f"no {family} {labels}")

        self.assertEqual(value("gatehouse_config_generation"), admin.status()["generation"])
        self.assertGreaterEqual(value("gatehouse_connections", "gatehouse_connections_total"), 1)
        self.assertGreaterEqual(value("gatehouse_handshakes", "gatehouse_handshakes_total", result="full"), 1)
        self.assertGreaterEqual(value("gatehouse_sni", "gatehouse_sni_total", match="exact"), 1)
        self.assertGreaterEqual(value("gatehouse_backend_connections", pool="live", server="mbx01"), 1)
        self.assertGreater(value("gatehouse_certificate_expiry_days", certificate="front"), 300)
        self.assertEqual(value("gatehouse_server_drained", pool="live", server="mbx01"), 0)

    # 6 -----------------------------------------------------------------------------
    def _chromium(self, *args):
        env = dict(os.environ, HOME=self.dir.path)
        p = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            "--user-data-dir=" + self.dir.file("chromium-profile"), *args],
                           capture_output=True, timeout=20 * h.SLOW, env=env, stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace")[-3000:])
        return p

    def test_status_page_in_headless_chromium(self):
        if CHROMIUM is None:
            self.skipTest("chromium not installed (Debian chromium, see .ci/setup)")
        front, mbx = self.front(), self.mailbox_cert()
        pin = mbx.pin()
        a = self.backend(MailboxBackend("mbx01", mbx))
        b = self.backend(MailboxBackend("mbx02", mbx))
        dead = h.free_port()
        g, admin = self.start_with_admin(h.config(
            server_section(workers=1), h.certificate_section("front", front), listener("web", "l7"),
            route("owa", "web", paths=["/owa"]), route("mapi", "web", paths=["/mapi"]),
            server("mbx01", a.address, pin, site="dc1"), server("mbx02", b.address, pin, site="dc1"),
            server("mbx03", f"127.0.0.1:{dead}", pin, site="dc2"),
            pool("owa", ["mbx01", "mbx02", "mbx03"], health=tcp_health()),
            pool("mapi", ["mbx01", "mbx02"], health=tcp_health())))
        admin.wait(lambda d: states(d).get(("owa", "mbx03")) == "down", 5, "mbx03 down in owa")
        url = f"{admin.base}/status"

        dom = self._chromium("--dump-dom", url).stdout.decode()
        text = re.sub(r"<[^>]+>", " ", dom)
        for p in ("owa", "mapi"):
            self.assertIn(f'id="pool-{p}"', dom)
            self.assertIn(f"Pool {p}", text)
        self.assertIn("DOWN", text)
        rows = re.findall(r'<tr class="(\w+)">(.*?)</tr>', dom, re.S)
        down_rows = [r for cls, r in rows if cls == "down"]
        self.assertEqual(len(down_rows), 1, rows)
        self.assertIn("mbx03", down_rows[0])
        self.assertIn("DOWN", down_rows[0])
        self.assertEqual(sum(1 for cls, _ in rows if cls == "up"), 4)
        self.assertIn("Sites", text)
        self.assertIn('<tr class="site-active"><td>dc1</td><td>active</td><td>no</td><td>0 of 4</td>', dom)
        self.assertIn('<tr class="site-active"><td>dc2</td><td>active</td><td>no</td><td>0 of 1</td><td>0 of 1</td>',
                      dom)

        shot = self.dir.file("status.png")
        self._chromium(f"--screenshot={shot}", "--window-size=1280,1400", url)
        with open(shot, "rb") as f:
            data = f.read()
        width, height, channels, pixels = png_decode(data)
        self.assertEqual((width, height), (1280, 1400))
        red = count_colour(pixels, channels, (0xF8, 0xD0, 0xD0))
        green = count_colour(pixels, channels, (0xD9, 0xF2, 0xD9))
        self.assertGreater(red, 500, "no down-row colour #f8d0d0 in the screenshot")
        self.assertGreater(green, 500, "no up-row colour #d9f2d9 in the screenshot")

    # 7 -----------------------------------------------------------------------------
    def test_reload_by_admin_rejects_broken_config_and_applies_good_one(self):
        front, mbx = self.front(), self.mailbox_cert()
        pin = mbx.pin()
        a = self.backend(MailboxBackend("mbx01", mbx))
        b = self.backend(MailboxBackend("mbx02", mbx))

        def text(target, pool_name="owa"):
            return h.config(
                server_section(workers=2), h.certificate_section("front", front), listener("web", "l7"),
                route(pool_name, "web", paths=["/owa"]),
                server("mbx01", a.address, pin), server("mbx02", b.address, pin),
                pool(pool_name, [target]))

        g, admin = self.start_with_admin(text("mbx01"))
        port = g.port("web")
        gen = admin.status()["generation"]
        self.assertEqual(backend_of(fetch(port, "/owa/")[1]), "mbx01")

        with open(g.config_path, "w") as f:
            f.write(text("mbx02").replace('pool = "owa"', 'pool = "no-such-pool"'))
        status, doc = admin.json("POST", "/reload")
        self.assertEqual(status, 400, doc)
        self.assertIs(doc["reloaded"], False)
        self.assertIn("no-such-pool", json.dumps(doc["errors"]))
        self.assertEqual(admin.status()["generation"], gen)
        for _ in range(5):
            status, headers, _ = fetch(port, "/owa/")
            self.assertEqual((status, backend_of(headers)), (200, "mbx01"), "the old config stopped serving")

        with open(g.config_path, "w") as f:
            f.write("[server\nworkers = 2\n")  # not even TOML
        status, doc = admin.json("POST", "/reload")
        self.assertEqual(status, 400, doc)
        self.assertIs(doc["reloaded"], False)
        self.assertTrue(doc["errors"])
        self.assertEqual(backend_of(fetch(port, "/owa/")[1]), "mbx01")

        with open(g.config_path, "w") as f:
            f.write(text("mbx02", pool_name="owa2"))
        status, doc = admin.json("POST", "/reload")
        self.assertEqual((status, doc), (200, {"reloaded": True, "generation": gen + 1}))
        doc = admin.status()
        self.assertEqual(doc["generation"], gen + 1)
        self.assertEqual([p["name"] for p in doc["pools"]], ["owa2"])
        for _ in range(5):
            status, headers, _ = fetch(port, "/owa/")
            self.assertEqual((status, backend_of(headers)), (200, "mbx02"), "the new config is not serving")


if __name__ == "__main__":
    import unittest
    unittest.main()
