"""An HTTPS backend that authenticates NTLM per TCP connection, as IIS does:
Type 1 -> 401 with a challenge -> Type 3 on the same connection -> the
connection is that user's, and later requests on it are served as that user
without any header. NTLMv2 responses are verified against each user's
password (MD4 is written out here: OpenSSL 3 no longer offers it).

Also the client side (Type 1 and Type 3 messages), for tests that drive the
handshake by hand."""

import base64
import hmac
import os
import socket
import ssl
import struct
import threading

from harness import SLOW, LoopbackServer

DOMAIN = "CONTOSO"


# --- MD4 (RFC 1320), for the NT hash --------------------------------------

def _rotl(x, n):
    x &= 0xFFFFFFFF
    return ((x << n) | (x >> (32 - n))) & 0xFFFFFFFF


def md4(data):
    msg = bytearray(data)
    bit_len = (8 * len(data)) & 0xFFFFFFFFFFFFFFFF
    msg.append(0x80)
    while len(msg) % 64 != 56:
        msg.append(0)
    msg += struct.pack("<Q", bit_len)
    a, b, c, d = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476
    for off in range(0, len(msg), 64):
        x = struct.unpack("<16I", msg[off:off + 64])
        aa, bb, cc, dd = a, b, c, d

        def f(x_, y, z):
            return (x_ & y) | (~x_ & z)

        def g(x_, y, z):
            return (x_ & y) | (x_ & z) | (y & z)

        def h(x_, y, z):
            return x_ ^ y ^ z

        for i in range(16):
            k = i
            s = (3, 7, 11, 19)[i % 4]
            if i % 4 == 0:
                a = _rotl(a + f(b, c, d) + x[k], s)
            elif i % 4 == 1:
                d = _rotl(d + f(a, b, c) + x[k], s)
            elif i % 4 == 2:
                c = _rotl(c + f(d, a, b) + x[k], s)
            else:
                b = _rotl(b + f(c, d, a) + x[k], s)
        for i in range(16):
            k = (i % 4) * 4 + i // 4
            s = (3, 5, 9, 13)[i % 4]
            if i % 4 == 0:
                a = _rotl(a + g(b, c, d) + x[k] + 0x5A827999, s)
            elif i % 4 == 1:
                d = _rotl(d + g(a, b, c) + x[k] + 0x5A827999, s)
            elif i % 4 == 2:
                c = _rotl(c + g(d, a, b) + x[k] + 0x5A827999, s)
            else:
                b = _rotl(b + g(c, d, a) + x[k] + 0x5A827999, s)
        order = (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)
        for i in range(16):
            k = order[i]
            s = (3, 9, 11, 15)[i % 4]
            if i % 4 == 0:
                a = _rotl(a + h(b, c, d) + x[k] + 0x6ED9EBA1, s)
            elif i % 4 == 1:
                d = _rotl(d + h(a, b, c) + x[k] + 0x6ED9EBA1, s)
            elif i % 4 == 2:
                c = _rotl(c + h(d, a, b) + x[k] + 0x6ED9EBA1, s)
            else:
                b = _rotl(b + h(c, d, a) + x[k] + 0x6ED9EBA1, s)
        a, b, c, d = (a + aa) & 0xFFFFFFFF, (b + bb) & 0xFFFFFFFF, (c + cc) & 0xFFFFFFFF, (d + dd) & 0xFFFFFFFF
    return struct.pack("<4I", a, b, c, d)


assert md4(b"abc").hex() == "a448017aaf21d8525fc10ae87aa6729d"


def nt_hash(password):
    return md4(password.encode("utf-16-le"))


def ntlmv2_key(user, domain, password):
    return hmac.new(nt_hash(password), (user.upper() + domain).encode("utf-16-le"), "md5").digest()


# --- Messages ---------------------------------------------------------------

SIGNATURE = b"NTLMSSP\0"
FLAGS = (0x00000001 | 0x00000004 | 0x00000200 | 0x00008000 | 0x00010000 | 0x00080000 | 0x00800000
         | 0x20000000 | 0x80000000)


def _buffer(payload, offset):
    return struct.pack("<HHI", len(payload), len(payload), offset)


def type1():
    return SIGNATURE + struct.pack("<II", 1, FLAGS) + _buffer(b"", 32) + _buffer(b"", 32)


def type2(challenge):
    target = DOMAIN.encode("utf-16-le")
    # MsvAvNbDomainName, MsvAvEOL
    info = struct.pack("<HH", 2, len(target)) + target + struct.pack("<HH", 0, 0)
    head_len = 56
    return (SIGNATURE + struct.pack("<I", 2) + _buffer(target, head_len) + struct.pack("<I", FLAGS) + challenge
            + b"\0" * 8 + _buffer(info, head_len + len(target)) + b"\x06\x01\xb1\x1d\0\0\0\x0f" + target + info)


def type3(challenge, user, domain, password, workstation="WS01"):
    """An NTLMv2 Type 3 message answering `challenge`."""
    blob = b"\x01\x01\0\0\0\0\0\0" + b"\0" * 8 + os.urandom(8) + b"\0" * 4
    proof = hmac.new(ntlmv2_key(user, domain, password), challenge + blob, "md5").digest()
    nt = proof + blob
    lm = b"\0" * 24
    d, u, w = (s.encode("utf-16-le") for s in (domain, user, workstation))
    offset = 64
    parts, buffers = b"", b""
    for payload in (lm, nt, d, u, w, b""):
        buffers += _buffer(payload, offset + len(parts))
        parts += payload
    return SIGNATURE + struct.pack("<I", 3) + buffers + struct.pack("<I", FLAGS) + parts


def _field(msg, at):
    length, _, offset = struct.unpack_from("<HHI", msg, at)
    return msg[offset:offset + length]


def verify_type3(msg, challenge, passwords):
    """The user ("DOMAIN\\user") a Type 3 message proves, or None."""
    if len(msg) < 64 or not msg.startswith(SIGNATURE) or struct.unpack_from("<I", msg, 8)[0] != 3:
        return None
    nt = _field(msg, 20)
    domain = _field(msg, 28).decode("utf-16-le", "replace")
    user = _field(msg, 36).decode("utf-16-le", "replace")
    password = passwords.get(user.lower())
    if password is None or len(nt) < 17:
        return None
    proof = hmac.new(ntlmv2_key(user, domain, password), challenge + nt[16:], "md5").digest()
    if not hmac.compare_digest(proof, nt[:16]):
        return None
    return f"{domain}\\{user}"


# --- The backend ------------------------------------------------------------

def read_request(conn, buf):
    """(method, path, headers, body, rest) or None at EOF."""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    length = int(headers.get("content-length", ["0"])[0])
    while len(rest) < length:
        data = conn.recv(65536)
        if not data:
            return None
        rest += data
    return method, path, headers, rest[:length], rest[length:]


class NtlmBackend(LoopbackServer):
    """Users and passwords in `passwords` (lower-case user -> password).
    Answers 200 "user=DOMAIN\\user server=NAME" on an authenticated
    connection, else 401 offering NTLM and Negotiate. /close answers and
    closes; /idle-close answers and closes the connection shortly after."""

    def __init__(self, name, cert, passwords):
        self.name = name
        self.passwords = passwords
        self.seen = []  # (connection number, method, path, authorization or "")
        self.open_connections = 0
        super().__init__(cert)

    def _serve(self, raw):
        with self.lock:
            number = self.connections
        conn = raw
        try:
            raw.settimeout(60)
            conn = self.tls(raw)
            with self.lock:
                self.open_connections += 1
            self._session(conn, number)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            with self.lock:
                self.open_connections -= 1 if conn is not raw else 0
            try:
                conn.close()
            except OSError:
                pass

    def _session(self, conn, number):
        buf = b""
        user = None
        challenge = None
        while True:
            req = read_request(conn, buf)
            if req is None:
                return
            method, path, headers, _, buf = req
            auth = headers.get("authorization", [""])[0]
            with self.lock:
                self.seen.append((number, method, path, auth))
            extra = []
            if auth.upper().startswith("NTLM "):
                msg = base64.b64decode(auth[5:])
                kind = struct.unpack_from("<I", msg, 8)[0] if len(msg) >= 12 else 0
                if kind == 1:
                    challenge = os.urandom(8)
                    extra = [("WWW-Authenticate", "NTLM " + base64.b64encode(type2(challenge)).decode())]
                    self._send(conn, 401, "challenge\n", extra)
                    continue
                if kind == 3 and challenge is not None:
                    user = verify_type3(msg, challenge, self.passwords)
                challenge = None
                if kind == 3 and user is None:
                    self._send(conn, 401, "bad credentials\n", [("WWW-Authenticate", "NTLM")])
                    continue
            if user is None:
                self._send(conn, 401, "anonymous\n", [("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", "NTLM")])
                continue
            body = f"user={user} server={self.name} connection={number} path={path}\n"
            if path.endswith("/close"):
                self._send(conn, 200, body, [("Connection", "close")])
                return
            self._send(conn, 200, body, [("Persistent-Auth", "true")])
            if path.endswith("/idle-close"):
                threading.Event().wait(0.3)
                return

    def _send(self, conn, status, body, extra):
        reason = {200: "OK", 401: "Unauthorized"}[status]
        data = body.encode()
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(data)}\r\n"
        head += f"X-Backend: {self.name}\r\n"
        for name, value in extra:
            head += f"{name}: {value}\r\n"
        conn.sendall((head + "\r\n").encode() + data)


# --- A raw client -----------------------------------------------------------

class RawClient:
    """One TLS connection to Gatehouse speaking HTTP/1.1 by hand."""

    def __init__(self, port, host="mail.contoso.test", timeout=20):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
        self.host = host
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW),
                                    server_hostname=host)
        self.buf = b""

    def request(self, path, authorization=None):
        """(status, headers, body); status None when the connection closed."""
        head = f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if authorization:
            head += f"Authorization: {authorization}\r\n"
        try:
            self.sock.sendall((head + "\r\n").encode())
            return self.response()
        except OSError:
            return None, {}, b""

    def response(self):
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                return None, {}, b""
            self.buf += data
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        length = int(headers.get("content-length", ["0"])[0])
        while len(rest) < length:
            data = self.sock.recv(65536)
            if not data:
                break
            rest += data
        self.buf = rest[length:]
        return status, headers, rest[:length]

    def closed(self, timeout=5):
        """True when the server closed the connection within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except (socket.timeout, TimeoutError):
            return False
        except OSError:
            return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def challenge_of(headers):
    for value in headers.get("www-authenticate", []):
        if value.upper().startswith("NTLM "):
            msg = base64.b64decode(value[5:])
            return msg[24:32]
    return None


def ntlm_header(message):
    return "NTLM " + base64.b64encode(message).decode()
