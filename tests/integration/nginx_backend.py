"""nginx (nginx-light) as self-signed HTTPS backends, like IIS on Exchange
Mailbox servers: one nginx master (one worker) with one `server {}` block per
backend name, each on its own loopback port, all presenting one certificate.

Every answer names the backend that gave it (header X-Backend and the first
word of the body) and echoes what the proxy forwarded (X-Forwarded-*,
Forwarded, Host and the hop-by-hop headers that must not arrive). Each
backend writes its own access log with nginx's connection serial number, the
request count on that connection and whether its TLS session was resumed, so
a test can count backend TCP connections and full TLS handshakes."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import harness as h

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

# Fields of the answer body, in order, after "NAME METHOD URI". nginx shows an
# absent header as an empty value.
ECHOED = [
    ("xff", "$http_x_forwarded_for"),
    ("proto", "$http_x_forwarded_proto"),
    ("xfh", "$http_x_forwarded_host"),
    ("fwd", "$http_forwarded"),
    ("host", "$http_host"),
    ("connection", "$http_connection"),
    ("keep_alive", "$http_keep_alive"),
    ("proxy_connection", "$http_proxy_connection"),
    ("te", "$http_te"),
    ("upgrade", "$http_upgrade"),
    ("x_hop", "$http_x_hop"),
    ("x_end_to_end", "$http_x_end_to_end"),
]


def available():
    return os.path.isfile(NGINX) and os.access(NGINX, os.X_OK)


def parse_answer(body):
    """The body of an nginx backend answer as a dict: backend, method, uri and
    the ECHOED fields."""
    parts = body.rstrip("\n").split("|")
    backend, method, uri = (parts[0].split(" ", 2) + ["", "", ""])[:3]
    out = {"backend": backend, "method": method, "uri": uri}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        out[key] = value
    return out


class NginxBackend:
    """`names` are the backend names; `port(name)` and `address(name)` say
    where each listens. `log(name)` parses that backend's access log."""

    def __init__(self, directory, cert, names):
        self.names = list(names)
        self.dir = tempfile.mkdtemp(prefix="nginx-", dir=directory)
        os.chmod(self.dir, 0o755)  # workers run unprivileged
        self.proc = None
        self._workers = set()
        last = ""
        for _attempt in range(3):  # a free port may be taken again before nginx binds it
            self.ports = dict(zip(self.names, h.free_ports(len(self.names))))
            conf = os.path.join(self.dir, "nginx.conf")
            with open(conf, "w") as f:
                f.write(self._config(cert))
            self.proc = subprocess.Popen([NGINX, "-c", conf, "-p", self.dir, "-e", self._path("error.log"),
                                          "-g", "daemon off;"],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            if self._wait_ready():
                return
            self.stop()
            last = self._error_log()
            if "Address already in use" not in last:
                break
        raise AssertionError(f"nginx did not start:\n{last}")

    def _path(self, name):
        return os.path.join(self.dir, name)

    def _config(self, cert):
        body = "$1 $request_method $request_uri" + "".join(f"|{k}={v}" for k, v in ECHOED)
        servers = []
        for n in self.names:
            servers.append(f"""
    server {{
        listen 127.0.0.1:{self.ports[n]} ssl;
        server_name {n};
        access_log {self._path(n + '.access.log')} gatehouse_test;
        location / {{
            add_header X-Backend {n} always;
            return 200 "{body.replace('$1', n)}\\n";
        }}
    }}""")
        return f"""
worker_processes 1;
pid {self._path('nginx.pid')};
error_log {self._path('error.log')} warn;
events {{ worker_connections 4096; }}
http {{
    default_type text/plain;
    client_body_temp_path {self._path('body')};
    proxy_temp_path {self._path('proxy')};
    fastcgi_temp_path {self._path('fastcgi')};
    uwsgi_temp_path {self._path('uwsgi')};
    scgi_temp_path {self._path('scgi')};
    log_format gatehouse_test
        '$connection $connection_requests $ssl_session_reused $request_method $status $request_uri';
    keepalive_requests 100000;
    keepalive_timeout 300s;
    client_max_body_size 0;
    ssl_certificate {cert.cert};
    ssl_certificate_key {cert.key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:backend:1m;
{''.join(servers)}
}}
"""

    def _error_log(self):
        try:
            with open(self._path("error.log")) as f:
                return f.read()
        except OSError:
            return ""

    def _wait_ready(self):
        deadline = time.monotonic() + 10 * h.SLOW
        pending = set(self.names)
        while pending and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            for n in list(pending):
                try:
                    socket.create_connection(("127.0.0.1", self.ports[n]), timeout=1).close()
                    pending.discard(n)
                except OSError:
                    pass
            if pending:
                time.sleep(0.05)
        self._note_workers()
        return not pending

    def _note_workers(self):
        if self.proc is None:
            return
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                self._workers.update(int(p) for p in f.read().split())
        except OSError:
            pass

    def port(self, name):
        return self.ports[name]

    def address(self, name):
        return f"127.0.0.1:{self.ports[name]}"

    def log(self, name):
        """Requests the backend `name` answered so far: dicts with connection
        (nginx's serial number), requests (the count on that connection),
        reused (TLS session resumed), method, status, uri."""
        out = []
        try:
            with open(self._path(name + ".access.log")) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            conn, nreq, reused, method, status, uri = (line.split(" ", 5) + [""] * 6)[:6]
            out.append({"connection": int(conn), "requests": int(nreq), "reused": reused == "r",
                        "method": method, "status": int(status), "uri": uri})
        return out

    def stop(self):
        """Ends the master and its workers (a worker can outlive the master)."""
        if self.proc is None:
            return
        self._note_workers()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5 * h.SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self._workers:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if not f.read().startswith(b"nginx: worker"):
                        continue  # gone, and the number reused
                os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        self._workers.clear()
