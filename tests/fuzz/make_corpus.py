#!/usr/bin/python3
"""Writes the seed corpora in corpus/<target>/: a handful of valid and edge-case
inputs per target, made from the protocols' own rules (ClientHellos come from
Python's ssl module through memory BIOs). Run it again after changing a
target's input format; files found by fuzzing (crash-*, regression-*) are kept.

Usage: /usr/bin/python3 tests/fuzz/make_corpus.py
"""

import base64
import pathlib
import shutil
import ssl
import struct

HERE = pathlib.Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
REPO = HERE.parent.parent


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def config():
    # One shipped example (the other is as large again and adds little).
    write("fuzz_config", "unbound", (REPO / "conf" / "examples" / "unbound.toml").read_bytes())
    write("fuzz_config", "minimal", """
[[certificate]]
name = "c"
cert = "c.crt"
key = "c.key"
[[listener]]
name = "https"
bind = "[::]:443"
[[server]]
name = "mbx01"
address = "10.0.0.1:443"
server_name = "MBX01.Contoso.COM."
pin = "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
[[pool]]
name = "owa"
servers = ["mbx01"]
balance = "least_conn"
hash_key = "header:X-User"
health = { kind = "http", path = "/owa/healthcheck.htm", interval = "1h30m", rise = 1 }
[[route]]
listener = "https"
hosts = ["*.contoso.com", "MAIL.contoso.com."]
paths = ["/OWA"]
pool = "owa"
""")
    # [server]: the settings table's old name, still read.
    write("fuzz_config", "errors", """
[server]
workers = -1
drain_timeout = "30x"
admin = "localhost:99999"
unknown_key = true
[[listener]]
name = "a b"
bind = 443
mode = "l9"
[[listener]]
name = "a b"
[[route]]
listener = "nowhere"
hosts = ["*.com", "m*.contoso.com", ""]
pool = 7
[[server]]
name = "mbx01"
address = "[::1]:0"
""")
    write("fuzz_config", "syntax", 'server = [\n  { name = "x", address = "1.2.3.4:5" },\n  "oops"\n[[listener\n= "\\u0000"\n')
    write("fuzz_config", "durations", '[global]\ndrain_timeout = "1h30m"\n[[listener]]\nname="l"\nbind="0.0.0.0:0"\nidle_timeout="500ms"\nhandshake_timeout="0s"\n')


def client_hello(server_name=None, maximum=None, ciphers=None, alpn=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if maximum:
        ctx.maximum_version = maximum
    if ciphers:
        ctx.set_ciphers(ciphers)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def client_hellos():
    # First byte: the listener (bit 0 strict_sni, bit 1 TLS 1.3 only).
    t = "fuzz_client_hello"
    write(t, "tls13-exact", b"\x00" + client_hello("mail.contoso.com", alpn=["h2", "http/1.1"]))
    write(t, "tls13-case-dot", b"\x00" + client_hello("MAIL.Contoso.COM."))
    write(t, "tls13-wildcard", b"\x02" + client_hello("x.contoso.com"))
    write(t, "no-sni", b"\x00" + client_hello(None))
    write(t, "no-sni-strict", b"\x01" + client_hello(None))
    write(t, "unknown-strict", b"\x01" + client_hello("unknown.example"))
    write(t, "expired", b"\x00" + client_hello("legacy.fabrikam.com"))
    write(t, "tls12-rsa-only", b"\x00" + client_hello("owa.fabrikam.com", ssl.TLSVersion.TLSv1_2,
                                                       "ECDHE-RSA-AES128-GCM-SHA256"))
    write(t, "tls12-to-tls13-only", b"\x02" + client_hello("mail.contoso.com", ssl.TLSVersion.TLSv1_2))
    write(t, "host-text", b"\x00mail.contoso.com")
    write(t, "wildcard-text", b"\x00*.contoso.com")


def records(stream):
    """The (type, payload) records of a TLS byte stream."""
    out = []
    while stream:
        length = struct.unpack(">H", stream[3:5])[0]
        out.append((stream[0], stream[5:5 + length]))
        stream = stream[5 + length:]
    return out


def reframe(message, cuts, version=b"\x03\x01"):
    """A handshake message in records whose payloads end at `cuts`."""
    out = b""
    for a, b in zip([0] + cuts, cuts + [len(message)]):
        out += b"\x16" + version + struct.pack(">H", b - a) + message[a:b]
    return out


def client_hello_peeks():
    # Byte 0: k = byte % 8 piece sizes follow (0: all at once), each byte b a piece of b + 1
    # bytes, used in turn; then the client's bytes.
    t = "fuzz_client_hello_peek"
    hello = client_hello("MAIL.Contoso.COM.", alpn=["h2", "http/1.1"])
    message = b"".join(p for _, p in records(hello))
    write(t, "whole", b"\x00" + hello)
    write(t, "bytewise", b"\x01\x00" + hello)
    write(t, "pieces", b"\x03\x06\x00\xff" + client_hello("owa.contoso.com"))
    write(t, "no-sni", b"\x00" + client_hello(None))
    write(t, "tls12", b"\x02\x10\x40" + client_hello("mail.contoso.com", ssl.TLSVersion.TLSv1_2))
    write(t, "header-split", b"\x00" + reframe(message, [1, 3, 4, 100]))
    write(t, "two-records-20k", b"\x01\xf0" + client_hello("mail.contoso.com",
                                                            alpn=["p%d-" % i + "x" * 240 for i in range(80)]))
    write(t, "early-data", b"\x00" + hello + b"\x14\x03\x03\x00\x01\x01" + b"\x17\x03\x03\x00\x05hello")
    write(t, "trailing-handshake", b"\x00" + reframe(message + b"\x14\x00\x00\x00", []))
    write(t, "zero-length-record", b"\x00" + reframe(message, [50, 50]))
    write(t, "alert-inside", b"\x00" + reframe(message, [50])[:55] + b"\x15\x03\x01\x00\x02\x01\x00")
    write(t, "http", b"\x00GET / HTTP/1.1\r\nHost: mail.contoso.com\r\n\r\n")
    write(t, "sslv2", b"\x00\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10" + bytes(range(0x15 + 0x10)))


def http_requests():
    # First byte: the size of each piece the parser is fed (0: all at once).
    t = "fuzz_http1_request"
    write(t, "get", b"\x00GET /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\nUser-Agent: x\r\nCookie: a=b\r\n\r\n")
    write(t, "post-length", b"\x07POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: mail.contoso.com\r\n"
                            b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\nhello")
    write(t, "chunked-trailers", b"\x01POST /mapi/emsmdb/ HTTP/1.1\r\nHost: mail\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\nConnection: x\r\n\r\n")
    write(t, "http10", b"\x03GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    write(t, "obs-fold", b"\x00GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n")
    write(t, "cl-and-te", b"\x00POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    write(t, "te-not-chunked", b"\x00POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n")
    write(t, "two-hosts", b"\x00GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    write(t, "connection-listed", b"\x05GET /x HTTP/1.1\r\nHost: a\r\nConnection: X-Secret, close\r\nX-Secret: 1\r\n"
                                  b"X-Forwarded-For: 6.6.6.6\r\nForwarded: for=evil\r\n\r\n")
    write(t, "ntlm", b"\x00GET /EWS/ HTTP/1.1\r\nHost: mail\r\nAuthorization: NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw==\r\n\r\n")
    write(t, "absolute-form", b"\x00GET https://mail.contoso.com/owa/?a=b HTTP/1.1\r\nHost: other\r\n\r\n")
    write(t, "bare-lf", b"\x00GET / HTTP/1.1\nHost: a\n\n")


def http_responses():
    # First byte: bit 7 answers a HEAD request; bits 0-6 the piece size (0: all at once).
    t = "fuzz_http1_response"
    write(t, "length", b"\x00HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello")
    write(t, "chunked", b"\x03HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\n\r\n"
                        b"5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n")
    write(t, "continue", b"\x00HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    write(t, "ntlm-challenge", b"\x00HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Negotiate\r\n"
                               b"WWW-Authenticate: NTLM TlRMTVNTUAACAAAA\r\nContent-Length: 0\r\n\r\n")
    write(t, "persistent-auth", b"\x00HTTP/1.1 200 OK\r\nPersistent-Auth: true\r\nContent-Length: 2\r\n\r\nok")
    write(t, "close-delimited", b"\x02HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>until the end")
    write(t, "not-modified", b"\x00HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n")
    write(t, "head", b"\x80HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    write(t, "no-content", b"\x00HTTP/1.1 204 No Content\r\n\r\n")
    write(t, "switching", b"\x00HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    write(t, "no-reason", b"\x00HTTP/1.1 503 \r\nConnection: close\r\n\r\n")


def ntlm_type3(user, domain, unicode=True, workstation="WS"):
    enc = (lambda s: s.encode("utf-16-le")) if unicode else (lambda s: s.encode("latin-1"))
    payload = [b"\x01" * 24, b"\x02" * 24, enc(domain), enc(user), enc(workstation), b""]
    offset = 64
    buffers = b""
    body = b""
    for p in payload:
        buffers += struct.pack("<HHI", len(p), len(p), offset + len(body))
        body += p
    flags = 0x00000001 if unicode else 0x00000002
    return b"NTLMSSP\x00" + struct.pack("<I", 3) + buffers[:48] + struct.pack("<I", flags) + body


def ntlm():
    t = "fuzz_ntlm"
    b64 = lambda b: base64.b64encode(b).decode()
    write(t, "type3-header", "NTLM " + b64(ntlm_type3("alice", "CONTOSO")))
    write(t, "type3-raw-unicode", ntlm_type3("b\u00f6b\U0001F600", "CONTOSO"))
    write(t, "type3-raw-oem", ntlm_type3("carol", "", unicode=False))
    write(t, "type1-header", "NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw==")
    write(t, "negotiate-spnego", "Negotiate " + b64(b"\xa1\x81\x9a\x30\x81\x97\xa2\x81\x94\x04\x81\x91" +
                                                     ntlm_type3("dave", "FABRIKAM")))
    write(t, "basic", "Basic " + b64(b"erin@contoso.com:secret:more"))
    write(t, "basic-unpadded", "Basic  ZnJhbms6cHc \t")
    bad = bytearray(ntlm_type3("x", "y"))
    bad[40:44] = struct.pack("<I", 0xFFFFFFF0)  # user offset far past the end
    write(t, "type3-bad-offset", bytes(bad))
    write(t, "fields", "Authorization: Bearer abc\nProxy-Authorization: NTLM " + b64(ntlm_type3("f", "D")) +
          "\nWWW-Authenticate: Basic realm=\"x\", Negotiate\nPersistent-Auth: true\n")


def proxy_headers():
    # Byte 0: endpoint kinds (client low bits, local high nibble; % 3: v4, v6, v4-mapped; bit 7 adds a
    # scope id to a v6 address); then client address, port, local address, port.
    t = "fuzz_proxy_header"
    v4 = bytes([192, 0, 2, 1]) + struct.pack(">H", 50000) + bytes([10, 0, 0, 1]) + struct.pack(">H", 443)
    write(t, "v4-v4", b"\x00" + v4)
    v6 = bytes.fromhex("20010db8000000000000000000000001") + struct.pack(">H", 1) + \
        bytes.fromhex("ffffffffffffffffffffffffffffffff") + struct.pack(">H", 65535)
    write(t, "v6-v6", b"\x11" + v6)
    write(t, "mapped-mapped", b"\x22" + v4)
    write(t, "zeros", b"\x00" + bytes(12))


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name, value):
    # Literal header field without indexing, new name (RFC 7541 6.2.2).
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def h2():
    # After the client preface, which the target sends itself.
    t = "fuzz_h2_session"
    settings = frame(4, 0, 0, struct.pack(">HI", 3, 100) + struct.pack(">HI", 4, 65535))
    get = b"\x82\x87\x84" + b"\x41\x10mail.contoso.com"  # GET https / :authority
    write(t, "get", settings + frame(1, 0x05, 1, get) + frame(4, 0x01, 0))
    post = b"\x83\x87" + literal(b":path", b"/EWS/Exchange.asmx") + b"\x41\x04mail" + literal(b"content-length", b"5")
    write(t, "post", settings + frame(1, 0x04, 3, post) + frame(0, 0, 3, b"hel") + frame(0, 0x01, 3, b"lo") +
          frame(8, 0, 0, struct.pack(">I", 1000)))
    write(t, "continuation", settings + frame(1, 0x01, 1, get[:2]) + frame(9, 0, 1, get[2:4]) +
          frame(9, 0x04, 1, get[4:]))
    write(t, "control", settings + frame(6, 0, 0, b"12345678") + frame(2, 0, 1, struct.pack(">IB", 0, 15)) +
          frame(1, 0x05, 1, get) + frame(3, 0, 1, struct.pack(">I", 8)) + frame(7, 0, 0, struct.pack(">II", 1, 0)))
    write(t, "zero-length-name", settings + frame(1, 0x05, 1, get + literal(b"", b"x")))
    write(t, "empty-data", settings + frame(1, 0x04, 1, b"\x83\x87\x84\x41\x01a") + frame(0, 0, 1) * 20)
    write(t, "padded-priority", settings + frame(1, 0x2D, 5, b"\x02" + struct.pack(">IB", 0, 200) + get + b"\x00\x00"))
    write(t, "hpack-table", settings + frame(1, 0x05, 1, get + b"\x40\x03x-a\x05hello") +
          frame(1, 0x05, 3, get + b"\xbe\xbe\xbe\xbe"))
    # fuzz.test/owa routes to the target's pool, whose server refuses: the forward and its 502.
    routed = b"\x82\x87" + b"\x44\x05/owa/" + b"\x41\x09fuzz.test"
    upload = b"\x83\x87" + b"\x44\x08/owa/ews" + b"\x41\x09fuzz.test" + b"\x5c\x015"
    write(t, "routed-get-post", settings + frame(1, 0x05, 1, routed) + frame(1, 0x04, 3, upload) +
          frame(0, 0x01, 3, b"hello"))


def mail_dialogues():
    # Byte 0: protocol (% 3: SMTP, IMAP, POP3); then what a client sends before STARTTLS.
    t = "fuzz_mail_dialogue"
    write(t, "smtp", b"\x00EHLO client.example\r\nMAIL FROM:<a@b>\r\nNOOP\r\nSTARTTLS\r\n")
    write(t, "imap", b"\x01a1 CAPABILITY\r\na2 LOGIN u p\r\n* x\r\na3 STARTTLS\r\n")
    write(t, "pop3", b"\x02CAPA\r\nUSER a\r\nSTLS\r\nQUIT\r\n")


def main():
    for d in CORPUS.glob("*"):
        for f in d.iterdir():
            if not f.name.startswith(("crash-", "regression-")):
                f.unlink()
    config()
    client_hellos()
    client_hello_peeks()
    http_requests()
    http_responses()
    ntlm()
    proxy_headers()
    mail_dialogues()
    h2()


if __name__ == "__main__":
    main()
