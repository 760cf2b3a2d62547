"""HTTP/2 by hand for the L7 safety tests: frames, an HPACK encoder that only
writes literal fields without indexing (so the peer's table never changes and
any number of header blocks can be sent in any order), an HPACK decoder (with
Huffman and the dynamic table) for what the server answers, and a TLS
connection over memory BIOs that reads and writes from one thread without
blocking, so a test can flood a peer and still see what it sends back.

No third-party package: only the standard library."""

import select
import socket
import ssl
import struct
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
TYPE_NAMES = {DATA: "DATA", HEADERS: "HEADERS", PRIORITY: "PRIORITY", RST_STREAM: "RST_STREAM",
              SETTINGS: "SETTINGS", PUSH_PROMISE: "PUSH_PROMISE", PING: "PING", GOAWAY: "GOAWAY",
              WINDOW_UPDATE: "WINDOW_UPDATE", CONTINUATION: "CONTINUATION"}

# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Settings.
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

# Error codes.
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED, \
    FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, ENHANCE_YOUR_CALM, \
    INADEQUATE_SECURITY, HTTP_1_1_REQUIRED = range(14)

DEFAULT_MAX_FRAME = 16384


# --- frames -------------------------------------------------------------------

def frame(ftype, flags, stream_id, payload=b""):
    if len(payload) >= 1 << 24:
        raise ValueError("frame payload too long")
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags, stream_id & 0x7FFFFFFF) + payload


def settings(values=None):
    """A SETTINGS frame; `values` maps identifier -> value."""
    payload = b"".join(struct.pack(">HI", k, v) for k, v in (values or {}).items())
    return frame(SETTINGS, 0, 0, payload)


def settings_ack():
    return frame(SETTINGS, ACK, 0)


def parse_settings(payload):
    return {k: v for k, v in (struct.unpack(">HI", payload[i:i + 6]) for i in range(0, len(payload) - 5, 6))}


def rst_stream(stream_id, code=CANCEL):
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def window_update(stream_id, increment):
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def ping(data=b"\0" * 8, ack=False):
    return frame(PING, ACK if ack else 0, 0, data)


def goaway(last_stream_id=0, code=NO_ERROR, debug=b""):
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream_id, code) + debug)


def data(stream_id, payload, end_stream=False):
    return frame(DATA, END_STREAM if end_stream else 0, stream_id, payload)


def headers(stream_id, block, end_stream=True, end_headers=True):
    flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
    return frame(HEADERS, flags, stream_id, block)


def continuation(stream_id, block, end_headers=False):
    return frame(CONTINUATION, END_HEADERS if end_headers else 0, stream_id, block)


def header_frames(stream_id, block, end_stream=True, max_frame=DEFAULT_MAX_FRAME):
    """A header block as HEADERS plus as many CONTINUATION frames as needed."""
    chunks = [block[i:i + max_frame] for i in range(0, len(block), max_frame)] or [b""]
    out = [headers(stream_id, chunks[0], end_stream=end_stream, end_headers=len(chunks) == 1)]
    for i, chunk in enumerate(chunks[1:], 1):
        out.append(continuation(stream_id, chunk, end_headers=i == len(chunks) - 1))
    return b"".join(out)


def split_frames(buf):
    """Removes every complete frame from the front of bytearray `buf`;
    returns them as (type, flags, stream_id, payload)."""
    frames = []
    while len(buf) >= 9:
        length = int.from_bytes(buf[0:3], "big")
        if len(buf) < 9 + length:
            break
        ftype, flags, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        frames.append((ftype, flags, sid, bytes(buf[9:9 + length])))
        del buf[:9 + length]
    return frames


def parse_goaway(payload):
    last, code = struct.unpack(">II", payload[:8])
    return last & 0x7FFFFFFF, code, payload[8:]


# --- HPACK (RFC 7541) -----------------------------------------------------------

def encode_int(value, prefix_bits, first_byte_flags=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte_flags | value])
    out = bytearray([first_byte_flags | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_string(raw):
    """A string literal without Huffman coding."""
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
    return encode_int(len(raw), 7) + raw


def literal(name, value):
    """Literal header field without indexing, new name (RFC 7541 6.2.2)."""
    return b"\x00" + encode_string(name) + encode_string(value)


def encode_headers(fields):
    """A header block of literal fields without indexing; `fields` is a list
    of (name, value) pairs, str (latin-1) or bytes."""
    return b"".join(literal(n, v) for n, v in fields)


def request_fields(path="/", authority="mail.contoso.test", method="GET", scheme="https", extra=()):
    return [(":method", method), (":scheme", scheme), (":authority", authority), (":path", path)] + list(extra)


STATIC_TABLE = [
    (b":authority", b""), (b":method", b"GET"), (b":method", b"POST"), (b":path", b"/"),
    (b":path", b"/index.html"), (b":scheme", b"http"), (b":scheme", b"https"), (b":status", b"200"),
    (b":status", b"204"), (b":status", b"206"), (b":status", b"304"), (b":status", b"400"),
    (b":status", b"404"), (b":status", b"500"), (b"accept-charset", b""), (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""), (b"accept-ranges", b""), (b"accept", b""), (b"access-control-allow-origin", b""),
    (b"age", b""), (b"allow", b""), (b"authorization", b""), (b"cache-control", b""),
    (b"content-disposition", b""), (b"content-encoding", b""), (b"content-language", b""), (b"content-length", b""),
    (b"content-location", b""), (b"content-range", b""), (b"content-type", b""), (b"cookie", b""),
    (b"date", b""), (b"etag", b""), (b"expect", b""), (b"expires", b""),
    (b"from", b""), (b"host", b""), (b"if-match", b""), (b"if-modified-since", b""),
    (b"if-none-match", b""), (b"if-range", b""), (b"if-unmodified-since", b""), (b"last-modified", b""),
    (b"link", b""), (b"location", b""), (b"max-forwards", b""), (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""), (b"range", b""), (b"referer", b""), (b"refresh", b""),
    (b"retry-after", b""), (b"server", b""), (b"set-cookie", b""), (b"strict-transport-security", b""),
    (b"transfer-encoding", b""), (b"user-agent", b""), (b"vary", b""), (b"via", b""),
    (b"www-authenticate", b""),
]
assert len(STATIC_TABLE) == 61

# (code, bit length) for symbols 0..255 and EOS (256), RFC 7541 Appendix B.
HUFFMAN = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28), (0xfffffe4, 28), (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28),
    (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28), (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28),
    (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28), (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28),
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28), (0xffffff8, 28), (0xffffff9, 28), (0xffffffa, 28), (0xffffffb, 28),
    (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12), (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11),
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11), (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6),
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6), (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6),
    (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8), (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10),
    (0x1ffa, 13), (0x21, 6), (0x5d, 7), (0x5e, 7), (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7),
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7), (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7),
    (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7), (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7),
    (0xfc, 8), (0x73, 7), (0xfd, 8), (0x1ffb, 13), (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6),
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5), (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6),
    (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7), (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5),
    (0x2b, 6), (0x76, 7), (0x2c, 6), (0x8, 5), (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7),
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15), (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28),
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20), (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23),
    (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23), (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23),
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23), (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23),
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23), (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24),
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22), (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21),
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24), (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23),
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21), (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23),
    (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22), (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23),
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19), (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25),
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27), (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25),
    (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27), (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24),
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26), (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27),
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21), (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23),
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25), (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26), (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27),
    (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27), (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26),
    (0x3fffffff, 30),
]
assert len(HUFFMAN) == 257

_HUFFMAN_DECODE = {(length, code): sym for sym, (code, length) in enumerate(HUFFMAN)}


def huffman_decode(raw):
    out = bytearray()
    code = length = 0
    for byte in raw:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            length += 1
            sym = _HUFFMAN_DECODE.get((length, code))
            if sym is not None:
                if sym == 256:
                    raise ValueError("HPACK: EOS in a Huffman string")
                out.append(sym)
                code = length = 0
            elif length > 30:
                raise ValueError("HPACK: bad Huffman code")
    if length > 7 or code != (1 << length) - 1:
        raise ValueError("HPACK: bad Huffman padding")
    return bytes(out)


def huffman_encode(raw):
    """(For self-tests.)"""
    acc = nbits = 0
    for b in raw:
        code, length = HUFFMAN[b]
        acc = (acc << length) | code
        nbits += length
    pad = (8 - nbits % 8) % 8
    acc = (acc << pad) | ((1 << pad) - 1)
    nbits += pad
    return acc.to_bytes(nbits // 8, "big")


class Decoder:
    """An HPACK decoder with its dynamic table."""

    def __init__(self, max_size=4096):
        self.max_size = max_size
        self.table = []  # newest first
        self.size = 0

    @staticmethod
    def _int(block, pos, prefix_bits):
        limit = (1 << prefix_bits) - 1
        value = block[pos] & limit
        pos += 1
        if value < limit:
            return value, pos
        shift = 0
        while True:
            b = block[pos]
            pos += 1
            value += (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value, pos

    def _string(self, block, pos):
        huff = block[pos] & 0x80
        length, pos = self._int(block, pos, 7)
        raw = bytes(block[pos:pos + length])
        if len(raw) != length:
            raise ValueError("HPACK: truncated string")
        return (huffman_decode(raw) if huff else raw), pos + length

    def _get(self, index):
        if index == 0:
            raise ValueError("HPACK: index 0")
        if index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        i = index - len(STATIC_TABLE) - 1
        if i >= len(self.table):
            raise ValueError(f"HPACK: index {index} beyond the dynamic table")
        return self.table[i]

    def _evict(self):
        while self.size > self.max_size and self.table:
            n, v = self.table.pop()
            self.size -= len(n) + len(v) + 32

    def _add(self, name, value):
        self.table.insert(0, (name, value))
        self.size += len(name) + len(value) + 32
        self._evict()

    def decode(self, block):
        """Returns [(name, value)] as str (latin-1)."""
        fields = []
        pos = 0
        while pos < len(block):
            b = block[pos]
            if b & 0x80:  # indexed
                index, pos = self._int(block, pos, 7)
                fields.append(self._get(index))
            elif b & 0x40:  # literal with incremental indexing
                index, pos = self._int(block, pos, 6)
                name = self._get(index)[0] if index else None
                if name is None:
                    name, pos = self._string(block, pos)
                value, pos = self._string(block, pos)
                self._add(name, value)
                fields.append((name, value))
            elif b & 0x20:  # dynamic table size update
                self.max_size, pos = self._int(block, pos, 5)
                self._evict()
            else:  # literal without indexing (0000) or never indexed (0001)
                index, pos = self._int(block, pos, 4)
                name = self._get(index)[0] if index else None
                if name is None:
                    name, pos = self._string(block, pos)
                value, pos = self._string(block, pos)
                fields.append((name, value))
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in fields]


# --- TLS over memory BIOs ---------------------------------------------------------

class TlsConn:
    """A TLS client on a non-blocking socket, driven from one thread: queue()
    encrypts into an outgoing buffer, pump() moves bytes both ways, and what
    the server sent accumulates in `inbuf` (plaintext). `closed` becomes true
    on FIN, close_notify, reset or a TLS error (`how` says which)."""

    def __init__(self, port, sni="mail.contoso.test", alpn=None, timeout=10, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=sni)
        self.outbuf = bytearray()
        self.inbuf = bytearray()
        self.closed = False
        self.how = None
        self.bytes_sent = 0  # plaintext bytes handed to TLS
        try:
            self._handshake()
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.local = self.sock.getsockname()
        self.alpn = self.obj.selected_alpn_protocol()

    def _handshake(self):
        while True:
            try:
                self.obj.do_handshake()
                self.sock.sendall(self.outgoing.read())
                return
            except ssl.SSLWantReadError:
                out = self.outgoing.read()
                if out:
                    self.sock.sendall(out)
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed during the TLS handshake")
                self.incoming.write(chunk)

    @property
    def client(self):
        """Our address as the proxy logs it ("127.0.0.1:PORT")."""
        return "%s:%d" % self.local[:2]

    def queue(self, plaintext):
        if self.closed:
            return
        self.obj.write(plaintext)
        self.bytes_sent += len(plaintext)
        self.outbuf += self.outgoing.read()

    def _mark_closed(self, how):
        if not self.closed:
            self.closed = True
            self.how = how
        self.outbuf.clear()

    def _decrypt(self):
        while True:
            try:
                chunk = self.obj.read(65536)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                self._mark_closed("close_notify")
                return
            except ssl.SSLEOFError:
                self._mark_closed("eof")
                return
            except ssl.SSLError as e:
                self._mark_closed(f"tls error: {e}")
                return
            if not chunk:
                self._mark_closed("close_notify")
                return
            self.inbuf += chunk

    def pump(self, timeout=0.05):
        """One round: waits up to `timeout` for the socket, sends what it
        takes, reads what is there. Returns True if anything moved."""
        if self.closed:
            return False
        wlist = [self.sock] if self.outbuf else []
        try:
            readable, writable, _ = select.select([self.sock], wlist, [], max(timeout, 0))
        except (OSError, ValueError):
            self._mark_closed("select failed")
            return False
        moved = False
        if writable and self.outbuf:
            try:
                n = self.sock.send(self.outbuf[:262144])
                del self.outbuf[:n]
                moved = n > 0
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                # The peer is gone; what it sent before may still be readable.
                self.outbuf.clear()
                self._drain_socket()
                self._mark_closed(f"send: {e.__class__.__name__}")
                return True
        if readable:
            self._drain_socket()
            moved = True
        return moved

    def _drain_socket(self):
        while True:
            try:
                chunk = self.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                self._decrypt()
                return
            except OSError as e:
                self._decrypt()
                self._mark_closed(f"recv: {e.__class__.__name__}")
                return
            if not chunk:
                self.incoming.write_eof()
                self._decrypt()
                self._mark_closed("eof")
                return
            self.incoming.write(chunk)
            self._decrypt()
            if self.closed:
                return

    def flush(self, timeout=10):
        """Pumps until everything queued is on the wire (or closed/timeout)."""
        deadline = time.monotonic() + timeout
        while self.outbuf and not self.closed and time.monotonic() < deadline:
            self.pump(min(0.05, max(0, deadline - time.monotonic())))
        return not self.outbuf

    def send(self, plaintext, timeout=10):
        self.queue(plaintext)
        return self.flush(timeout)

    def wait(self, predicate, timeout):
        """Pumps until predicate() is true, the connection closes or the time
        is up; returns predicate()."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                break
            self.pump(min(left, 0.1))
        return predicate()

    def wait_closed(self, timeout):
        """Pumps (reading everything) until the peer closes; returns closed."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.pump(min(left, 0.1))
        return self.closed

    def close(self):
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


# --- a small HTTP/2 client --------------------------------------------------------

class Stream:
    def __init__(self, sid):
        self.id = sid
        self.headers = []
        self.body = bytearray()
        self.ended = False
        self.reset = None  # RST_STREAM error code

    @property
    def status(self):
        for n, v in self.headers:
            if n == ":status":
                return int(v)
        return None

    @property
    def done(self):
        return self.ended or self.reset is not None


class H2Client:
    """HTTP/2 over a TlsConn: sends the preface, answers SETTINGS and PING,
    keeps flow-control windows wide open, decodes answers per stream and
    records GOAWAY."""

    def __init__(self, conn):
        self.conn = conn
        self.decoder = Decoder()
        self.streams = {}
        self.next_id = 1
        self.server_settings = None  # the first SETTINGS frame the server sent
        self.goaway = None  # (last_stream_id, code, debug)
        self.frames_in = []  # (type, flags, stream_id, length) of everything received
        self.errors = []
        self._pending_block = None  # (stream_id, bytearray) while CONTINUATION frames arrive
        conn.queue(PREFACE + settings({SETTINGS_ENABLE_PUSH: 0, SETTINGS_INITIAL_WINDOW_SIZE: 1 << 24})
                   + window_update(0, (1 << 30)))

    def new_stream_id(self):
        sid = self.next_id
        self.next_id += 2
        return sid

    def process(self):
        """Handles every complete frame received so far."""
        for ftype, flags, sid, payload in split_frames(self.conn.inbuf):
            self.frames_in.append((ftype, flags, sid, len(payload)))
            try:
                self._handle(ftype, flags, sid, payload)
            except (ValueError, IndexError, struct.error) as e:
                self.errors.append(f"{TYPE_NAMES.get(ftype, ftype)} on stream {sid}: {e}")

    def _stream(self, sid):
        return self.streams.setdefault(sid, Stream(sid))

    def _handle(self, ftype, flags, sid, payload):
        if ftype == SETTINGS:
            if not flags & ACK:
                if self.server_settings is None:
                    self.server_settings = parse_settings(payload)
                self.conn.queue(settings_ack())
        elif ftype == PING:
            if not flags & ACK:
                self.conn.queue(ping(payload, ack=True))
        elif ftype == GOAWAY:
            self.goaway = parse_goaway(payload)
        elif ftype == RST_STREAM:
            self._stream(sid).reset = struct.unpack(">I", payload[:4])[0]
        elif ftype in (HEADERS, CONTINUATION):
            if ftype == HEADERS:
                pad = 0
                pos = 0
                if flags & PADDED:
                    pad = payload[0]
                    pos = 1
                if flags & PRIORITY_FLAG:
                    pos += 5
                fragment = payload[pos:len(payload) - pad]
                self._pending_block = (sid, bytearray(fragment), flags & END_STREAM)
            else:
                if self._pending_block is None or self._pending_block[0] != sid:
                    raise ValueError("unexpected CONTINUATION")
                self._pending_block[1].extend(payload)
            if flags & END_HEADERS:
                sid, block, end = self._pending_block
                self._pending_block = None
                s = self._stream(sid)
                s.headers.extend(self.decoder.decode(bytes(block)))
                if end:
                    s.ended = True
        elif ftype == DATA:
            pad = 0
            body = payload
            if flags & PADDED:
                pad = payload[0]
                body = payload[1:len(payload) - pad]
            s = self._stream(sid)
            s.body.extend(body)
            if flags & END_STREAM:
                s.ended = True
            if payload:
                self.conn.queue(window_update(0, len(payload)))
                if not s.ended:
                    self.conn.queue(window_update(sid, len(payload)))

    def pump(self, timeout=0.05):
        moved = self.conn.pump(timeout)
        self.process()
        return moved

    def wait(self, predicate, timeout):
        deadline = time.monotonic() + timeout
        while True:
            self.process()
            if predicate():
                return True
            left = deadline - time.monotonic()
            if left <= 0 or self.conn.closed:
                self.process()
                return predicate()
            self.conn.pump(min(left, 0.1))

    def handshake(self, timeout=10):
        """Waits for the server's SETTINGS."""
        self.conn.flush(timeout)
        return self.wait(lambda: self.server_settings is not None, timeout)

    def send_request(self, path="/", extra=(), authority="mail.contoso.test", method="GET", body=None):
        sid = self.new_stream_id()
        block = encode_headers(request_fields(path, authority, method, extra=extra))
        out = header_frames(sid, block, end_stream=body is None)
        if body is not None:
            out += data(sid, body, end_stream=True)
        self.conn.queue(out)
        self._stream(sid)
        return sid

    def request(self, path="/", extra=(), timeout=10, **kw):
        """One request; returns its Stream (done, or not when the time ran out
        or the connection closed)."""
        sid = self.send_request(path, extra, **kw)
        self.wait(lambda: self.streams[sid].done, timeout)
        return self.streams[sid]
