"""Real mail servers as backends for the mail tests, each the test's own
instance on loopback high ports, stopped by the test:

- Dovecot (dovecot-imapd, dovecot-pop3d): its own dovecot.conf, base_dir,
  state_dir and log file; IMAP with STARTTLS, IMAPS, POP3 with STLS, POP3S and
  an IMAP port that expects a PROXY header (haproxy = yes); one passwd-file user
  whose Maildir holds pre-delivered messages.
- SmtpBackend: aiosmtpd (python3-aiosmtpd, run by /usr/bin/python3 in a child
  process) with a plain port offering STARTTLS and an implicit-TLS port; it
  records every command line it reads and every message it accepts, with
  whether the session was TLS and the peer address, as JSON lines.

Run standalone (`/usr/bin/python3 mail_backends.py smtp-serve ...`) this file
is the SMTP server itself."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

from harness import free_ports

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's python3-aiosmtpd lives in its site-packages
DOVECOT = "/usr/sbin/dovecot"
HERE = os.path.dirname(os.path.abspath(__file__))


def _accepts(port, timeout=0.2):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def body_of(message):
    """The body of an RFC 5322 message (bytes after the first empty line),
    with line endings made CRLF and trailing empty lines removed: what the
    tests hash on both ends."""
    message = message.replace(b"\r\n", b"\n")
    _, sep, body = message.partition(b"\n\n")
    if not sep:
        body = b""
    return body.rstrip(b"\n").replace(b"\n", b"\r\n")


def body_sha256(message):
    return hashlib.sha256(body_of(message)).hexdigest()


# --- Dovecot -----------------------------------------------------------------

MESSAGES = [
    (b"From: alice@contoso.test\r\nTo: test@contoso.test\r\nSubject: first pre-delivered message\r\n"
     b"Message-ID: <first@contoso.test>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n"
     + b"".join(b"line %04d of the first message, delivered before the test\r\n" % i for i in range(200))),
    (b"From: bob@contoso.test\r\nTo: test@contoso.test\r\nSubject: second pre-delivered message\r\n"
     b"Message-ID: <second@contoso.test>\r\nDate: Mon, 1 Jan 2024 11:00:00 +0000\r\n\r\n"
     b"short second body\r\n"),
]


class Dovecot:
    """`dovecot -F -c FILE` with everything in `directory`. Ports: imap
    (STARTTLS offered), imaps, pop3 (STLS offered), pop3s, imap_haproxy (plain
    IMAP preceded by a PROXY v1/v2 header, trusted from 127.0.0.0/8). One user,
    `user`/`password`, whose INBOX holds MESSAGES (the first is MESSAGES[0])."""

    user = "test"
    password = "Secret-pw-1"
    UID = 65534  # nobody: mail processes do not run as root

    def __init__(self, directory, cert):
        self.dir = os.path.join(directory, "dovecot")
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.log_path = os.path.join(self.dir, "dovecot.log")
        self.proc = None
        self._write_mailbox()
        last = ""
        for _attempt in range(3):  # a free port may be taken again before dovecot binds it
            names = ("imap", "imaps", "pop3", "pop3s", "imap_haproxy")
            self.ports = dict(zip(names, free_ports(len(names))))
            conf = os.path.join(self.dir, "dovecot.conf")
            with open(conf, "w") as f:
                f.write(self._config(cert))
            with open(os.path.join(self.dir, "stderr"), "w") as err:
                self.proc = subprocess.Popen([DOVECOT, "-F", "-c", conf], stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=err)
            if self._wait_ready(5):
                return
            last = self.log() + open(os.path.join(self.dir, "stderr")).read()
            self.stop()
        raise AssertionError("dovecot did not start:\n" + last)

    def _write_mailbox(self):
        self.maildir = os.path.join(self.dir, "mail", self.user)
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(self.maildir, sub), exist_ok=True)
        for i, msg in enumerate(MESSAGES):
            name = f"{1700000000 + i}.M{i}P1.gatehouse-test:2,"
            with open(os.path.join(self.maildir, "cur", name), "wb") as f:
                f.write(msg)
        self.home = os.path.join(self.dir, "home", self.user)
        os.makedirs(self.home, exist_ok=True)
        for root in (os.path.join(self.dir, "mail"), os.path.join(self.dir, "home")):
            for path, dirs, files in os.walk(root):
                os.chown(path, self.UID, self.UID)
                for name in files:
                    os.chown(os.path.join(path, name), self.UID, self.UID)
        self.passwd = os.path.join(self.dir, "passwd")
        with open(self.passwd, "w") as f:
            f.write(f"{self.user}:{{PLAIN}}{self.password}:{self.UID}:{self.UID}::{self.home}::\n")

    def _config(self, cert):
        d = self.dir
        p = self.ports
        return f"""# the test's own Dovecot: nothing shared with a system instance
protocols = imap pop3
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = gatehouse-test-{os.getpid()}-{id(self)}
log_path = {self.log_path}
info_log_path = {self.log_path}
debug_log_path = {self.log_path}
auth_verbose = yes
shutdown_clients = yes
ssl = yes
ssl_cert = <{cert.cert}
ssl_key = <{cert.key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = plain login
first_valid_uid = {self.UID}
last_valid_uid = {self.UID}
mail_location = maildir:{d}/mail/%u
haproxy_trusted_networks = 127.0.0.0/8
haproxy_timeout = 5s
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.passwd}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {p['imap']}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {p['imaps']}
    ssl = yes
  }}
  inet_listener imap_haproxy {{
    address = 127.0.0.1
    port = {p['imap_haproxy']}
    haproxy = yes
  }}
  process_min_avail = 1
  service_count = 0
  client_limit = 1000
  process_limit = 4
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {p['pop3']}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {p['pop3s']}
    ssl = yes
  }}
  process_min_avail = 1
  service_count = 0
  client_limit = 1000
  process_limit = 4
}}
service imap {{
  process_limit = 1024
  client_limit = 1
}}
service pop3 {{
  process_limit = 1024
  client_limit = 1
}}
service anvil {{
  client_limit = 4000
}}
service auth {{
  client_limit = 4000
}}
default_process_limit = 1024
default_client_limit = 4000
mail_max_userip_connections = 1000
"""

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if all(_accepts(port) for port in self.ports.values()):
                return True
            time.sleep(0.05)
        return False

    def address(self, name):
        return f"127.0.0.1:{self.ports[name]}"

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def logins(self):
        """Dovecot's login lines ("imap-login: Info: Login: user=<...>, ..., rip=..., TLS, ...")."""
        return [line for line in self.log().splitlines() if "-login: Info: Login: " in line]

    def wait_log(self, predicate, timeout=10, what="dovecot log line"):
        """The first log line for which `predicate` holds, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log().splitlines():
                if predicate(line):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout}s; dovecot log:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- SMTP (aiosmtpd) ------------------------------------------------------------

class SmtpBackend:
    """aiosmtpd in a child process: `port` (plain, STARTTLS offered; with
    `require_starttls` anything but EHLO/HELO/NOOP/QUIT before STARTTLS gets
    530) and `tls_port` (implicit TLS). Its greeting is
    "220 {hostname} ESMTP backend-{name}" so tests can tell it from
    Gatehouse's. `commands()` lists every command line read (not DATA lines)
    and `messages()` every accepted message, each a dict with peer, tls,
    port, and for messages mail_from, rcpt_tos, message_id, body_sha256."""

    def __init__(self, directory, cert, name="mx1", require_starttls=False):
        self.name = name
        self.hostname = f"{name}.backend.test"
        self.greeting = f"220 {self.hostname} ESMTP backend-{name}"
        self.dir = os.path.join(directory, f"smtp-{name}")
        os.makedirs(self.dir, exist_ok=True)
        self.commands_path = os.path.join(self.dir, "commands.jsonl")
        self.messages_path = os.path.join(self.dir, "messages.jsonl")
        args = [SYSTEM_PYTHON, os.path.join(HERE, "mail_backends.py"), "smtp-serve", "--dir", self.dir,
                "--cert", cert.cert, "--key", cert.key, "--name", name]
        if require_starttls:
            args.append("--require-starttls")
        self._stderr = open(os.path.join(self.dir, "stderr"), "w")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True)
        line = self.proc.stdout.readline()  # "ready PLAIN_PORT TLS_PORT"
        if not line.startswith("ready "):
            self.stop()
            raise AssertionError(f"aiosmtpd did not start: {line!r}\n" + open(os.path.join(self.dir, "stderr")).read())
        _, plain, tls = line.split()
        self.port, self.tls_port = int(plain), int(tls)
        self.address = f"127.0.0.1:{self.port}"
        self.tls_address = f"127.0.0.1:{self.tls_port}"

    @staticmethod
    def _read(path):
        out = []
        try:
            with open(path) as f:
                for line in f:
                    if line.endswith("\n"):
                        out.append(json.loads(line))
        except FileNotFoundError:
            pass
        return out

    def commands(self):
        return self._read(self.commands_path)

    def messages(self):
        return self._read(self.messages_path)

    def wait_messages(self, n, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            got = self.messages()
            if len(got) >= n:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"backend {self.name} accepted {len(got)} of {n} messages within {timeout}s")
            time.sleep(0.05)

    def stderr(self):
        with open(os.path.join(self.dir, "stderr")) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self._stderr.close()


def _smtp_serve(argv):
    """The child process of SmtpBackend (run by /usr/bin/python3)."""
    import argparse
    import asyncio
    import ssl

    from aiosmtpd.smtp import SMTP

    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--name", default="mx1")
    ap.add_argument("--require-starttls", action="store_true")
    a = ap.parse_args(argv)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    commands = open(os.path.join(a.dir, "commands.jsonl"), "a", buffering=1)
    messages = open(os.path.join(a.dir, "messages.jsonl"), "a", buffering=1)

    def is_tls(server):
        t = server.transport
        return bool(server._tls_protocol is not None or (t is not None and t.get_extra_info("ssl_object") is not None))

    def tls_version(server):
        t = server.transport
        obj = t.get_extra_info("ssl_object") if t is not None else None
        return obj.version() if obj else None

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            content = envelope.original_content or envelope.content
            if isinstance(content, str):
                content = content.encode()
            mid = ""
            for line in content.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
                if line.lower().startswith(b"message-id:"):
                    mid = line.split(b":", 1)[1].strip().decode(errors="replace")
            version = tls_version(server)
            messages.write(json.dumps({
                "port": getattr(server, "_local_port", None),
                "peer": list(session.peer), "tls": is_tls(server), "tls_version": version,
                "mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos, "message_id": mid,
                "body_sha256": body_sha256(content), "size": len(content)}) + "\n")
            return "250 2.0.0 Ok: queued as " + hashlib.sha1(content).hexdigest()[:12]

    class RecordingSMTP(SMTP):
        def connection_made(self, transport):
            super().connection_made(transport)
            if getattr(self, "_recording", False):
                return
            self._recording = True
            self._in_data = False
            self._local_port = transport.get_extra_info("sockname")[1]
            reader = self._reader
            original = reader.readuntil
            smtp = self

            async def readuntil(separator=b"\n"):
                line = await original(separator)
                if not smtp._in_data:
                    commands.write(json.dumps({
                        "port": smtp._local_port, "peer": list(smtp.session.peer) if smtp.session else None,
                        "tls": is_tls(smtp), "line": line.decode("latin-1").rstrip("\r\n")}) + "\n")
                return line

            reader.readuntil = readuntil
            data = self._smtp_methods["DATA"]

            async def smtp_DATA(arg):
                self._in_data = True
                try:
                    return await data(arg)
                finally:
                    self._in_data = False

            self._smtp_methods["DATA"] = smtp_DATA

    def factory(tls_context):
        def make():
            return RecordingSMTP(Handler(), hostname=f"{a.name}.backend.test", ident=f"ESMTP backend-{a.name}",
                                 tls_context=tls_context, require_starttls=a.require_starttls and tls_context is not None,
                                 data_size_limit=64 * 1024 * 1024, timeout=60)
        return make

    async def main():
        loop = asyncio.get_running_loop()
        plain = await loop.create_server(factory(ctx), "127.0.0.1", 0, backlog=1024)
        tls = await loop.create_server(factory(None), "127.0.0.1", 0, ssl=ctx, backlog=1024)
        print("ready", plain.sockets[0].getsockname()[1], tls.sockets[0].getsockname()[1], flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        plain.close()
        tls.close()

    asyncio.run(main())


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "smtp-serve":
        _smtp_serve(sys.argv[2:])
    else:
        sys.exit("usage: mail_backends.py smtp-serve --dir D --cert C --key K [--name N] [--require-starttls]")
