"""Client certificates (mutual TLS) end to end, played as the attacker.

A test CA is made with `openssl req` and `openssl ca` (index, serials, a CRL
from `openssl ca -gencrl`), and clients from it: a good one (clientAuth EKU,
DNS and URI SANs), a revoked one, an expired one, one with only the
serverAuth EKU, and one from an unrelated CA. Real clients (`openssl
s_client`, curl, Python's ssl) talk to the real gatehouse binary; a loopback
HTTPS backend answers every request with the request head it received, so
the tests see exactly what reached it.

Covers: require and optional listeners in TLS 1.2 and 1.3 (with the alerts
and the handshake_failed reasons), X-Forwarded-Client-Cert set for a verified
certificate and a client's own copy dropped over HTTP/1.1 and HTTP/2, the
access log's client_subject / client_verify, sessions and tickets that never
cross from a listener without client certificates to one that requires them
(shared ticket_keys, two instances), a resumed session that still forwards
its certificate's identity, the PROXY v2 SSL TLV of l4 listeners, and
reloading client_ca."""

import hashlib
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import unittest

import harness as h

MAIL = "mail.contoso.test"
ALICE_SUBJECT = "CN=alice,O=Contoso"


# --- certificates, made with the real CA tooling --------------------------------------

CA_CONF = """[ca]
default_ca = ca_default
[ca_default]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/issued
certificate = $dir/ca.crt
private_key = $dir/ca.key
serial = $dir/serial
crlnumber = $dir/crlnumber
default_md = sha256
default_days = 30
default_crl_days = 30
policy = policy_any
unique_subject = no
copy_extensions = none
[policy_any]
organizationName = optional
commonName = supplied
"""

CLIENT_EXT = """[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = {eku}
{san}
"""


def openssl(*args, cwd=None, input=None):
    p = subprocess.run(["openssl"] + list(args), capture_output=True, text=True, cwd=cwd, input=input, timeout=60)
    if p.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
    return p.stdout


class TestCA:
    """A CA directory run by `openssl ca`: issue, revoke, CRL."""

    def __init__(self, directory, name, cn):
        self.dir = os.path.join(directory, name)
        os.makedirs(os.path.join(self.dir, "issued"))
        open(os.path.join(self.dir, "index.txt"), "w").close()
        with open(os.path.join(self.dir, "serial"), "w") as f:
            f.write("1000\n")
        with open(os.path.join(self.dir, "crlnumber"), "w") as f:
            f.write("1000\n")
        self.conf = os.path.join(self.dir, "ca.cnf")
        with open(self.conf, "w") as f:
            f.write(CA_CONF.format(dir=self.dir))
        self.cert = os.path.join(self.dir, "ca.crt")
        self.key = os.path.join(self.dir, "ca.key")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", self.key,
                "-out", self.cert, "-days", "30", "-subj", f"/CN={cn}",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self.crl = os.path.join(self.dir, "ca.crl")

    def issue(self, stem, subject, eku="clientAuth", sans=(), start=None, end=None, extra=""):
        key = os.path.join(self.dir, stem + ".key")
        csr = os.path.join(self.dir, stem + ".csr")
        crt = os.path.join(self.dir, stem + ".crt")
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
                "-out", csr, "-subj", subject)
        ext = os.path.join(self.dir, stem + ".ext")
        with open(ext, "w") as f:
            ext_text = CLIENT_EXT.format(eku=eku, san=("subjectAltName = " + ", ".join(sans)) if sans else "")
            if eku is None:  # no Extended Key Usage extension at all
                ext_text = "\n".join(line for line in ext_text.splitlines() if "extendedKeyUsage" not in line) + "\n"
            f.write(ext_text + extra)
        args = ["ca", "-batch", "-config", self.conf, "-in", csr, "-out", crt, "-extfile", ext, "-extensions", "ext",
                "-notext"]
        if start:
            args += ["-startdate", start, "-enddate", end]
        openssl(*args)
        return Client(crt, key)

    def revoke(self, client):
        openssl("ca", "-config", self.conf, "-revoke", client.cert)

    def gencrl(self, out=None):
        out = out or self.crl
        openssl("ca", "-config", self.conf, "-gencrl", "-out", out)
        return out


class Client:
    def __init__(self, cert, key):
        self.cert = cert
        self.key = key


# --- the backend: answers with the request head it got -------------------------------------

class HeadEchoBackend(h.LoopbackServer):
    """TLS HTTP/1.1 (keep-alive): every request is answered 200 with the
    request head as received as the body; heads are kept in `heads`."""

    def __init__(self, cert):
        self.heads = []
        super().__init__(cert, join_connections=True)

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
                head, _, buf = buf.partition(b"\r\n\r\n")
                with self.lock:
                    self.heads.append(head.decode("latin-1"))
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                need = int(m.group(1)) if m else 0
                while len(buf) < need:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                buf = buf[need:]
                body = head + b"\r\n"
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)
                             + body)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()


def xfcc_lines(head):
    return [line.split(":", 1)[1].strip() for line in head.splitlines()[1:]
            if line.split(":", 1)[0].strip().lower() == "x-forwarded-client-cert"]


# --- config ---------------------------------------------------------------------------------

def web_listener(name="web", mode="require", ca=None, crl=None, extra=""):
    text = f'[[listener]]\nname = "{name}"\nbind = "127.0.0.1:0"\nmode = "l7"\n'
    if mode != "none":
        text += f'client_certificates = "{mode}"\nclient_ca = "{ca}"\n'
        if crl:
            text += f'client_crl = "{crl}"\n'
    return text + extra + "\n"


def backend_sections(backend, cert, listener_name="web"):
    return (f'[[route]]\nlistener = "{listener_name}"\npool = "p"\n'
            f'[[server]]\nname = "mbx01"\naddress = "{backend.address}"\npin = "{cert.thumbprint}"\n'
            f'[[pool]]\nname = "p"\nservers = ["mbx01"]\n')


class ClientCertTestCase(h.GatehouseTestCase):
    @classmethod
    def setUpClass(cls):
        cls.certs = h.TempDir()
        d = cls.certs.path
        cls.front = h.Cert(d, "front", MAIL, sans=[MAIL])
        cls.mbx = h.Cert(d, "mbx01", "mbx01.contoso.test", sans=["mbx01.contoso.test"])
        cls.ca = TestCA(d, "ca", "Gatehouse Test Client CA")
        cls.alice = cls.ca.issue("alice", "/O=Contoso/CN=alice",
                                 sans=["DNS:alice.contoso.test", "URI:spiffe://contoso.test/alice"])
        cls.bob = cls.ca.issue("bob", "/O=Contoso/CN=bob")
        cls.mallory = cls.ca.issue("mallory", "/O=Contoso/CN=mallory")
        cls.expired = cls.ca.issue("expired", "/O=Contoso/CN=expired", start="20200101000000Z",
                                   end="20200201000000Z")
        cls.server_eku = cls.ca.issue("servereku", "/O=Contoso/CN=servereku", eku="serverAuth")
        cls.no_eku = cls.ca.issue("noeku", "/O=Contoso/CN=noeku", eku=None)
        cls.ca.revoke(cls.mallory)
        cls.crl = cls.ca.gencrl()
        cls.other_ca = TestCA(d, "other", "Unrelated CA")
        cls.eve = cls.other_ca.issue("eve", "/O=Fabrikam/CN=eve")

    @classmethod
    def tearDownClass(cls):
        cls.certs.cleanup()

    def start_web(self, mode="require", crl=True, ca=None, extra_server=""):
        backend = self.backend(HeadEchoBackend(self.mbx))
        g = self.start(h.config(h.server_section(extra=extra_server), h.certificate_section("front", self.front),
                                web_listener(mode=mode, ca=ca or self.ca.cert, crl=self.crl if crl else None),
                                backend_sections(backend, self.mbx)))
        return g, g.port("web"), backend

    # Clients -----------------------------------------------------------------

    def s_client(self, port, client=None, tls="-tls1_3", request=None):
        """openssl s_client; returns (served, output). served: an HTTP 200
        came back for a GET."""
        args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", MAIL, tls, "-ign_eof"]
        if client:
            args += ["-cert", client.cert, "-key", client.key]
        request = request or f"GET /mtls HTTP/1.1\r\nHost: {MAIL}\r\nConnection: close\r\n\r\n"
        p = subprocess.run(args, input=request, capture_output=True, text=True, timeout=30 * h.SLOW)
        out = p.stdout + p.stderr
        return "HTTP/1.1 200" in p.stdout, out

    def curl(self, port, client=None, http="--http1.1", headers=(), tls=None):
        args = ["curl", "-sS", http, "--cacert", self.front.cert, "--resolve", f"{MAIL}:{port}:127.0.0.1",
                "-o", "-", "-w", "\n%{http_code}", "--max-time", str(20 * h.SLOW)]
        if tls == "1.2":
            args += ["--tlsv1.2", "--tls-max", "1.2"]
        if client:
            args += ["--cert", client.cert, "--key", client.key]
        for hdr in headers:
            args += ["-H", hdr]
        args.append(f"https://{MAIL}:{port}/mtls")
        p = subprocess.run(args, capture_output=True, text=True, timeout=30 * h.SLOW)
        body, _, code = p.stdout.rpartition("\n")
        return p.returncode, code, body, p.stderr

    def python_client(self, client=None, version=None):
        ctx = h.client_context(self.front.cert)
        if client:
            ctx.load_cert_chain(client.cert, client.key)
        if version == "1.2":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        elif version == "1.3":
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        return ctx

    def get(self, port, ctx, session=None, extra_headers=""):
        """One GET over a fresh TLS connection; returns (reused, session,
        body, local address) or raises on a refused handshake."""
        raw = socket.create_connection(("127.0.0.1", port), timeout=10 * h.SLOW)
        with ctx.wrap_socket(raw, server_hostname=MAIL, session=session) as s:
            s.sendall(f"GET /mtls HTTP/1.1\r\nHost: {MAIL}\r\n{extra_headers}Connection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return s.session_reused, s.session, data.decode("latin-1"), s.getsockname()


class Require(ClientCertTestCase):
    def test_good_certificate_is_served_and_backend_sees_its_identity(self):
        g, port, backend = self.start_web()
        for tls in ("-tls1_2", "-tls1_3"):
            with self.subTest(tls=tls):
                served, out = self.s_client(port, self.alice, tls=tls)
                self.assertTrue(served, out)
        rc, code, body, err = self.curl(port, self.alice)
        self.assertEqual((rc, code), (0, "200"), err)
        [xfcc] = xfcc_lines(body)
        self.assertIn(f'Subject="{ALICE_SUBJECT}"', xfcc)
        self.assertIn("URI=spiffe://contoso.test/alice", xfcc)
        self.assertIn("DNS=alice.contoso.test", xfcc)
        with open(self.alice.cert) as f:
            der = ssl.PEM_cert_to_DER_cert(f.read())
        self.assertTrue(xfcc.startswith("Hash=" + hashlib.sha256(der).hexdigest() + ";"), xfcc)
        line = g.wait_access(client_subject=ALICE_SUBJECT)
        self.assertEqual(line["client_verify"], "SUCCESS")
        # Without an Extended Key Usage extension a certificate is good for any use.
        rc, code, body, err = self.curl(port, self.no_eku)
        self.assertEqual((rc, code), (0, "200"), err)
        self.assertIn('Subject="CN=noeku,O=Contoso"', body)

    def test_refused_clients_in_tls12_and_tls13(self):
        g, port, backend = self.start_web()
        cases = [
            ("no certificate", None, {"-tls1_3": "certificate required", "-tls1_2": "handshake failure"},
             "no client certificate"),
            ("another CA", self.eve, "unknown ca", "unknown CA"),
            ("expired", self.expired, "certificate expired", "client certificate expired"),
            ("revoked", self.mallory, "certificate revoked", "revoked"),
            ("serverAuth only", self.server_eku, "unsupported certificate", "clientAuth"),
        ]
        for what, client, alert, reason in cases:
            for tls in ("-tls1_2", "-tls1_3"):
                with self.subTest(what=what, tls=tls):
                    served, out = self.s_client(port, client, tls=tls)
                    self.assertFalse(served, out)
                    expected = alert[tls] if isinstance(alert, dict) else alert
                    self.assertIn(expected, out.lower(), out)
            with self.subTest(what=what, client="curl"):
                rc, code, body, err = self.curl(port, client)
                self.assertNotEqual(rc, 0, f"curl was served: {code} {body}")
                self.assertNotEqual(code, "200")
            with self.subTest(what=what, client="python"):
                with self.assertRaises((ssl.SSLError, OSError)):
                    self.get(port, self.python_client(client))
            ev = g.wait_event("handshake_failed", listener="web", reason=g.wait_for(
                lambda o: o.get("event") == "handshake_failed" and reason in o.get("reason", ""), g.events,
                what=f"handshake_failed for {what}")["reason"])
            self.assertIn("client", ev)
            if client is not None:
                self.assertTrue(ev.get("client_subject", "").startswith("CN="), ev)
        self.assertEqual(backend.heads, [], "no refused client may reach the backend")

    def test_forged_client_cert_header_never_reaches_the_backend(self):
        g, port, backend = self.start_web()
        forged = 'X-Forwarded-Client-Cert: Hash=00;Subject="CN=admin"'
        for http in ("--http1.1", "--http2"):
            with self.subTest(http=http, certificate=True):
                rc, code, body, err = self.curl(port, self.alice, http=http,
                                                headers=[forged, 'x-FORWARDED-client-CERT: Subject="CN=root"'])
                self.assertEqual((rc, code), (0, "200"), err)
                lines = xfcc_lines(body)
                self.assertEqual(len(lines), 1, body)
                self.assertIn(f'Subject="{ALICE_SUBJECT}"', lines[0])
                self.assertNotIn("admin", body)
                self.assertNotIn("root", body)
        # A client without a certificate cannot even get a request in.
        rc, code, body, err = self.curl(port, None, headers=[forged])
        self.assertNotEqual(rc, 0)
        self.assertTrue(all("admin" not in head for head in backend.heads))

    def test_resumed_session_forwards_the_original_subject(self):
        g, port, backend = self.start_web()
        for version in ("1.2", "1.3"):
            with self.subTest(version=version):
                ctx = self.python_client(self.alice, version)
                reused, session, body, _ = self.get(port, ctx)
                self.assertFalse(reused)
                reused, _, body, name = self.get(port, ctx, session=session)
                self.assertTrue(reused, "the session should resume on the listener that made it")
                self.assertIn(f'Subject="{ALICE_SUBJECT}"', body)
                line = g.wait_access(client=f"{name[0]}:{name[1]}")
                self.assertTrue(line["resumed"])
                self.assertEqual((line["client_subject"], line["client_verify"]), (ALICE_SUBJECT, "SUCCESS"))


class Optional(ClientCertTestCase):
    def test_served_without_certificate_and_no_identity_forwarded(self):
        g, port, backend = self.start_web(mode="optional")
        for http in ("--http1.1", "--http2"):
            with self.subTest(http=http):
                rc, code, body, err = self.curl(port, None, http=http,
                                                headers=['X-Forwarded-Client-Cert: Subject="CN=admin"'])
                self.assertEqual((rc, code), (0, "200"), err)
                self.assertEqual(xfcc_lines(body), [], body)
        line = g.wait_access(mode="l7")
        self.assertEqual((line["client_verify"], line["client_subject"]), ("NONE", ""))
        rc, code, body, err = self.curl(port, self.bob)
        self.assertEqual((rc, code), (0, "200"), err)
        self.assertIn('Subject="CN=bob,O=Contoso"', body)

    def test_bad_certificate_is_refused_not_ignored(self):
        g, port, backend = self.start_web(mode="optional")
        for client in (self.eve, self.expired, self.mallory, self.server_eku):
            for tls in ("-tls1_2", "-tls1_3"):
                with self.subTest(client=client.cert, tls=tls):
                    served, out = self.s_client(port, client, tls=tls)
                    self.assertFalse(served, out)
            with self.subTest(client=client.cert, client_tool="curl"):
                rc, code, body, err = self.curl(port, client)
                self.assertNotEqual(rc, 0, body)
        self.assertEqual(backend.heads, [])


class Sessions(ClientCertTestCase):
    """nginx CVE-2025-23419: a ticket from a listener that asks for no
    certificate must not let a client skip the certificate on one that
    requires it, even with ticket keys shared across instances."""

    def test_sessions_from_a_none_listener_never_resume_on_a_require_listener(self):
        keys = self.dir.file("tickets.bin")
        with open(keys, "wb") as f:
            f.write(os.urandom(80))
        backend = self.backend(HeadEchoBackend(self.mbx))
        extra = f'ticket_keys = "{keys}"'
        # Same listener name, certificate and ticket keys: only the policy differs.
        open_g = self.start(h.config(h.server_section(extra=extra), h.certificate_section("front", self.front),
                                     web_listener(mode="none"), backend_sections(backend, self.mbx)), name="open.toml")
        strict_g = self.start(h.config(h.server_section(extra=extra), h.certificate_section("front", self.front),
                                       web_listener(mode="require", ca=self.ca.cert),
                                       backend_sections(backend, self.mbx)), name="strict.toml")
        open_port, strict_port = open_g.port("web"), strict_g.port("web")
        for version in ("1.2", "1.3"):
            with self.subTest(version=version):
                bare = self.python_client(None, version)
                reused, session, _, _ = self.get(open_port, bare)
                self.assertFalse(reused)
                # Control: the session is good where it was made, so a refusal below is the policy's doing.
                reused, _, _, _ = self.get(open_port, bare, session=session)
                self.assertTrue(reused, "the ticket should resume on the listener that issued it")

                # The attack: no certificate, the other listener's ticket.
                heads_before = len(backend.heads)
                with self.assertRaises((ssl.SSLError, OSError)):
                    self.get(strict_port, bare, session=session)
                self.assertEqual(len(backend.heads), heads_before, "the ticket let a client without a certificate in")

                # With a certificate, the ticket is ignored: a full handshake.
                bare.load_cert_chain(self.alice.cert, self.alice.key)
                reused, _, body, name = self.get(strict_port, bare, session=session)
                self.assertFalse(reused)
                self.assertIn(f'Subject="{ALICE_SUBJECT}"', body)
                line = strict_g.wait_access(client=f"{name[0]}:{name[1]}")
                self.assertFalse(line["resumed"], "the server resumed a session of the none listener")
        self.assertFalse(any(o.get("resumed") for o in strict_g.access), strict_g.access)


class ProxyProtocol(ClientCertTestCase):
    def test_l4_proxy_v2_carries_the_ssl_tlv_with_the_cn(self):
        echo = self.backend(h.EchoBackend(None))  # plain: echoes the PROXY header back
        g = self.start(h.config(
            h.server_section(), h.certificate_section("front", self.front),
            f'[[listener]]\nname = "l4"\nbind = "127.0.0.1:0"\nmode = "l4"\npool = "p"\nproxy_protocol = "v2"\n'
            f'client_certificates = "require"\nclient_ca = "{self.ca.cert}"\n',
            f'[[server]]\nname = "e"\naddress = "{echo.address}"\n[[pool]]\nname = "p"\nservers = ["e"]\n'
            f'tls = "plain"\n'))
        port = g.port("l4")
        for version in ("1.2", "1.3"):
            with self.subTest(version=version):
                raw = socket.create_connection(("127.0.0.1", port), timeout=10 * h.SLOW)
                with self.python_client(self.alice, version).wrap_socket(raw, server_hostname=MAIL) as s:
                    s.sendall(b"payload")
                    head = recv_exactly(s, 16)
                    self.assertEqual(head[:12], b"\r\n\r\n\x00\r\nQUIT\n")
                    self.assertEqual(head[12:14], b"\x21\x11")
                    (length,) = struct.unpack("!H", head[14:16])
                    rest = recv_exactly(s, length + len(b"payload"))
                    tlvs = parse_tlvs(rest[12:length])
                    self.assertEqual(rest[length:], b"payload")
                ssl_tlv = tlvs[0x20]
                client, verify = ssl_tlv[0], struct.unpack("!I", ssl_tlv[1:5])[0]
                self.assertEqual(client & 0x07, 0x07, "SSL, certificate on this connection and session")
                self.assertEqual(verify, 0)
                sub = parse_tlvs(ssl_tlv[5:])
                self.assertEqual(sub[0x22], b"alice")
                self.assertEqual(sub[0x21], b"TLSv1.3" if version == "1.3" else b"TLSv1.2")
        line = g.wait_access(mode="l4")
        self.assertEqual((line["client_subject"], line["client_verify"]), (ALICE_SUBJECT, "SUCCESS"))


def recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise AssertionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def parse_tlvs(data):
    out = {}
    while data:
        kind, length = data[0], struct.unpack("!H", data[1:3])[0]
        out[kind] = data[3:3 + length]
        data = data[3 + length:]
    return out


class Reload(ClientCertTestCase):
    def test_changing_client_ca_on_reload_takes_effect(self):
        g, port, backend = self.start_web(crl=False)
        rc, code, _, err = self.curl(port, self.alice)
        self.assertEqual((rc, code), (0, "200"), err)
        rc, _, _, _ = self.curl(port, self.eve)
        self.assertNotEqual(rc, 0)

        with open(g.config_path) as f:
            text = f.read()
        with open(g.config_path, "w") as f:
            f.write(text.replace(self.ca.cert, self.other_ca.cert))
        g.signal(signal.SIGHUP)
        g.wait_event("reloaded")
        rc, code, body, err = self.curl(port, self.eve)
        self.assertEqual((rc, code), (0, "200"), err)
        self.assertIn('Subject="CN=eve,O=Fabrikam"', body)
        rc, _, _, _ = self.curl(port, self.alice)
        self.assertNotEqual(rc, 0, "the old CA must no longer be trusted")

    def test_a_new_crl_on_reload_refuses_the_revoked_client(self):
        g, port, backend = self.start_web()
        carol = self.ca.issue("carol", "/O=Contoso/CN=carol")
        rc, code, _, err = self.curl(port, carol)
        self.assertEqual((rc, code), (0, "200"), err)
        self.ca.revoke(carol)
        crl = self.ca.gencrl(self.dir.file("new.crl"))
        with open(g.config_path) as f:
            text = f.read()
        with open(g.config_path, "w") as f:
            f.write(text.replace(self.crl, crl))
        g.signal(signal.SIGHUP)
        g.wait_event("reloaded")
        rc, code, _, _ = self.curl(port, carol)
        self.assertNotEqual(rc, 0, "a client revoked by the reloaded CRL was served")
        g.wait_for(lambda o: o.get("event") == "handshake_failed" and o.get("reason") == "revoked" and
                   o.get("client_subject") == "CN=carol,O=Contoso", g.events)
        rc, code, _, err = self.curl(port, self.alice)
        self.assertEqual((rc, code), (0, "200"), err)

    def test_unreadable_crl_is_refused_on_reload_and_old_config_keeps_serving(self):
        g, port, backend = self.start_web()
        with open(g.config_path) as f:
            text = f.read()
        bad = self.dir.write("bad.crl", "not a CRL\n")
        with open(g.config_path, "w") as f:
            f.write(text.replace(self.crl, bad))
        g.signal(signal.SIGHUP)
        ev = g.wait_event("reload_failed")
        self.assertIn("bad.crl", str(ev))
        rc, code, _, err = self.curl(port, self.alice)
        self.assertEqual((rc, code), (0, "200"), err)


class Depth(ClientCertTestCase):
    def make_chain(self):
        """Root -> int1 -> int2 CAs; a leaf under int1 and one under int2,
        each as a PEM file with its intermediates (Python sends the file)."""
        d = self.dir.path

        def path(name):
            return os.path.join(d, name)

        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                path("root.key"), "-out", path("root.crt"), "-days", "30", "-subj", "/CN=Depth Root",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
        with open(path("ca.ext"), "w") as f:
            f.write("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n")
        with open(path("leaf.ext"), "w") as f:
            f.write("extendedKeyUsage=clientAuth\n")

        def sign(name, issuer, ext):
            openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                    path(name + ".key"), "-out", path(name + ".csr"), "-subj", f"/CN={name}")
            openssl("x509", "-req", "-in", path(name + ".csr"), "-CA", path(issuer + ".crt"), "-CAkey",
                    path(issuer + ".key"), "-CAcreateserial", "-out", path(name + ".crt"), "-days", "30",
                    "-extfile", path(ext))

        sign("int1", "root", "ca.ext")
        sign("int2", "int1", "ca.ext")
        sign("leaf1", "int1", "leaf.ext")
        sign("leaf2", "int2", "leaf.ext")
        chains = []
        for leaf, ints in (("leaf1", ["int1"]), ("leaf2", ["int2", "int1"])):
            with open(path(leaf + "-chain.pem"), "w") as out:
                for part in [leaf] + ints:
                    with open(path(part + ".crt")) as f:
                        out.write(f.read())
            chains.append(Client(path(leaf + "-chain.pem"), path(leaf + ".key")))
        return path("root.crt"), chains

    def test_client_verify_depth_counts_intermediates_and_reloads(self):
        root, (one, two) = self.make_chain()
        backend = self.backend(HeadEchoBackend(self.mbx))
        text = h.config(h.server_section(), h.certificate_section("front", self.front),
                        web_listener(ca=root, extra="client_verify_depth = 1"), backend_sections(backend, self.mbx))
        g = self.start(text)
        port = g.port("web")
        _, _, body, _ = self.get(port, self.python_client(one))
        self.assertIn('Subject="CN=leaf1"', body)
        with self.assertRaises((ssl.SSLError, OSError)):
            self.get(port, self.python_client(two))
        g.wait_for(lambda o: o.get("event") == "handshake_failed" and
                   o.get("reason") == "chain longer than client_verify_depth (1)", g.events)

        with open(g.config_path, "w") as f:
            f.write(text.replace("client_verify_depth = 1", "client_verify_depth = 2"))
        g.signal(signal.SIGHUP)
        g.wait_event("reloaded")
        _, _, body, _ = self.get(port, self.python_client(two))
        self.assertIn('Subject="CN=leaf2"', body)


class Check(ClientCertTestCase):
    def test_check_reports_the_policy_and_bad_files(self):
        backend = self.backend(HeadEchoBackend(self.mbx))
        text = h.config(h.server_section(), h.certificate_section("front", self.front),
                        web_listener(ca=self.ca.cert, crl=self.crl), backend_sections(backend, self.mbx))
        path = self.dir.write("ok.toml", text)
        p = h.run(["check", "-c", path], check=False)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("client certificates required, 1 CA", p.stdout)
        bad = self.dir.write("bad.crl", "not a CRL\n")
        path = self.dir.write("bad.toml", text.replace(self.crl, bad))
        p = h.run(["check", "-c", path], check=False)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn('listener "web".client_crl', p.stderr)


if __name__ == "__main__":
    unittest.main()
