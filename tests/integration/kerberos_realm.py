"""A real Kerberos realm and a real Negotiate backend, on loopback, made by the
test itself: MIT krb5kdc (own krb5.conf via KRB5_CONFIG, own kdc.conf via
KRB5_KDC_PROFILE, database in a temporary directory, KDC on a free high port
of 127.0.0.1) and Apache httpd with mod_auth_gssapi and
`GssapiConnectionBound On`, which authenticates per TCP connection as IIS
does: once a connection has authenticated, later requests on it are that user
without any Authorization header.

Apache serves a CGI script at /cgi-bin/whoami that prints
`user=$REMOTE_USER port=$REMOTE_PORT` (the port is Gatehouse's source port,
i.e. which backend connection carried the request).

Nothing here touches the system's Kerberos or Apache configuration; every
process is a child that stop() ends (Apache with its whole process group).

Run as a script, `python3 kerberos_realm.py token SERVICE@HOST` prints one
base64 SPNEGO token for that service, made with libgssapi_krb5 through
ctypes from the credentials cache named by KRB5CCNAME (a raw client's
`Authorization: Negotiate ...`)."""

import base64
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

KRB5_BINARIES = ["krb5kdc", "kdb5_util", "kadmin.local", "kinit", "klist", "kdestroy"]
APACHE_MODULES = "/usr/lib/apache2/modules"
DEBIAN_PACKAGES = "apache2-bin libapache2-mod-auth-gssapi krb5-kdc krb5-admin-server krb5-user"


def _which(name):
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def missing_pieces():
    """What this machine lacks to run the realm and the backend (empty: all there)."""
    missing = [b for b in KRB5_BINARIES + ["apache2", "curl"] if not _which(b)]
    for mod in ["mod_auth_gssapi.so", "mod_ssl.so", "mod_cgi.so", "mod_mpm_prefork.so", "mod_alias.so",
                "mod_authn_core.so", "mod_authz_core.so", "mod_authz_user.so"]:
        if not os.path.exists(os.path.join(APACHE_MODULES, mod)):
            missing.append(os.path.join(APACHE_MODULES, mod))
    if _which("curl"):
        features = subprocess.run(["curl", "-V"], capture_output=True, text=True, timeout=10).stdout
        for f in ("GSS-API", "SPNEGO"):
            if f not in features.split():
                missing.append(f"curl feature {f}")
    if not ctypes.util.find_library("gssapi_krb5"):
        missing.append("libgssapi_krb5")
    return missing


def free_port_tcp_udp():
    """A port free for both TCP and UDP on 127.0.0.1 (the KDC listens on both)."""
    for _ in range(50):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both TCP and UDP")


def wait_tcp(port, proc, timeout, what, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}) before listening" + _tail(log))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} not listening on 127.0.0.1:{port} within {timeout}s" + _tail(log))


def _own_session_dying_with_parent():
    """preexec_fn: a new session (so stop() can end the whole process group),
    and SIGTERM when the test process dies, so nothing outlives a killed run."""
    os.setsid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _spawn(args, env, stderr_path):
    with open(stderr_path, "w") as err:
        return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=_own_session_dying_with_parent)


def _tail(path, lines=30):
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return "\n" + "".join(f.readlines()[-lines:])


class Realm:
    """A throwaway MIT Kerberos realm in `directory`: KDC on 127.0.0.1:port,
    one user principal with a password, service principals with a keytab."""

    def __init__(self, directory, realm="CONTOSO.TEST", domain="contoso.test", timeout=20):
        self.dir = os.path.join(directory, "krb5")
        os.makedirs(self.dir, exist_ok=True)
        self.realm = realm
        self.domain = domain
        self.timeout = timeout
        self.krb5_conf = os.path.join(self.dir, "krb5.conf")
        self.kdc_conf = os.path.join(self.dir, "kdc.conf")
        self.kdc_log = os.path.join(self.dir, "kdc.log")
        with open(os.path.join(self.dir, "kadm5.acl"), "w") as f:
            f.write("")
        self.env = dict(os.environ, KRB5_CONFIG=self.krb5_conf, KRB5_KDC_PROFILE=self.kdc_conf,
                        KRB5CCNAME="FILE:" + os.path.join(self.dir, "ccache-none"))
        for name in ("KRB5_CLIENT_KTNAME", "KRB5_KTNAME", "KRB5_TRACE", "KRB5RCACHEDIR", "KRB5RCACHETYPE"):
            self.env.pop(name, None)
        self.proc = None
        self._write_configs(free_port_tcp_udp())
        master = base64.b64encode(os.urandom(18)).decode()  # the database's master key, via -P
        self._run(["kdb5_util", "create", "-s", "-r", realm, "-P", master])
        for attempt in range(5):  # the port is picked before the KDC binds it: retry a lost race
            if attempt:
                self._write_configs(free_port_tcp_udp())
            self.proc = _spawn([_which("krb5kdc"), "-n", "-r", realm], self.env,
                               os.path.join(self.dir, "krb5kdc.stderr"))
            try:
                wait_tcp(self.port, self.proc, timeout, "krb5kdc", self.kdc_log)
                return
            except RuntimeError:
                self.stop()
                if attempt == 4:
                    raise

    def _write_configs(self, port):
        self.port = port
        realm, domain = self.realm, self.domain
        with open(self.krb5_conf, "w") as f:
            f.write(f"""[libdefaults]
    default_realm = {realm}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    udp_preference_limit = 1
    ticket_lifetime = 1h
    forwardable = false

[realms]
    {realm} = {{
        kdc = 127.0.0.1:{port}
    }}

[domain_realm]
    .{domain} = {realm}
    {domain} = {realm}
""")
        with open(self.kdc_conf, "w") as f:
            f.write(f"""[kdcdefaults]
    kdc_listen = 127.0.0.1:{port}
    kdc_tcp_listen = 127.0.0.1:{port}

[realms]
    {realm} = {{
        database_name = {self.dir}/principal
        key_stash_file = {self.dir}/stash
        acl_file = {self.dir}/kadm5.acl
        admin_keytab = {self.dir}/kadm5.keytab
        kdc_listen = 127.0.0.1:{port}
        kdc_tcp_listen = 127.0.0.1:{port}
        max_life = 1h
        max_renewable_life = 0
    }}

[logging]
    kdc = FILE:{self.kdc_log}
    admin_server = FILE:{self.dir}/kadmin.log
    default = FILE:{self.dir}/krb5lib.log
""")

    def _run(self, args, input=None):
        p = subprocess.run([_which(args[0])] + args[1:], env=self.env, input=input, capture_output=True,
                           text=True, timeout=self.timeout)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p

    def kadmin(self, query):
        return self._run(["kadmin.local", "-r", self.realm, "-q", query])

    def add_user(self, name, password):
        # -pw puts the password on kadmin.local's command line: fine for a
        # throwaway realm; the proxy never sees this process.
        self.kadmin(f"addprinc -pw {password} {name}@{self.realm}")
        return f"{name}@{self.realm}"

    def add_service(self, principal, keytab):
        self.kadmin(f"addprinc -randkey {principal}@{self.realm}")
        self.kadmin(f"ktadd -k {keytab} {principal}@{self.realm}")
        os.chmod(keytab, 0o644)  # Apache's children (www-data) read it; a test keytab
        return keytab

    def client_env(self, ccache):
        """The environment of a client whose credentials cache is `ccache`."""
        env = dict(self.env, KRB5CCNAME="FILE:" + ccache)
        env.pop("KRB5_KDC_PROFILE", None)
        return env

    def kinit(self, principal, password, ccache):
        """kinit with the password on standard input; returns the client env."""
        env = self.client_env(ccache)
        p = subprocess.run([_which("kinit"), principal], env=env, input=password + "\n", capture_output=True,
                           text=True, timeout=self.timeout)
        if p.returncode != 0:
            raise RuntimeError(f"kinit {principal} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
                               + _tail(self.kdc_log))
        return env

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


CGI_SCRIPT = """#!/bin/sh
body="user=${REMOTE_USER:-} port=${REMOTE_PORT:-} auth=${AUTH_TYPE:-}"
printf 'Content-Type: text/plain\\r\\nContent-Length: %d\\r\\n\\r\\n%s\\n' $(( ${#body} + 1 )) "$body"
"""


class ApacheNegotiateBackend:
    """Apache httpd on 127.0.0.1 as an HTTPS backend presenting `cert`, with
    /cgi-bin/* behind mod_auth_gssapi (`GssapiConnectionBound On`) and an
    unauthenticated /open/ (a static file). Its own config, pid file, logs and
    runtime directory in `directory`; stop() ends its whole process group."""

    def __init__(self, directory, cert, keytab, realm, name="mbx01", timeout=20):
        self.dir = os.path.join(directory, "apache-" + name)
        os.makedirs(os.path.join(self.dir, "cgi-bin"), exist_ok=True)
        os.makedirs(os.path.join(self.dir, "htdocs", "open"), exist_ok=True)
        os.makedirs(os.path.join(self.dir, "run"), exist_ok=True)
        rcache = os.path.join(self.dir, "rcache")
        os.makedirs(rcache, exist_ok=True)
        os.chmod(rcache, 0o1777)  # the replay cache, written by the children
        for d in (self.dir, os.path.join(self.dir, "cgi-bin"), os.path.join(self.dir, "htdocs"),
                  os.path.join(self.dir, "htdocs", "open")):
            os.chmod(d, 0o755)
        script = os.path.join(self.dir, "cgi-bin", "whoami")
        with open(script, "w") as f:
            f.write(CGI_SCRIPT)
        os.chmod(script, 0o755)
        with open(os.path.join(self.dir, "htdocs", "open", "index.txt"), "w") as f:
            f.write(f"open {name}\n")
        self.name = name
        self.error_log = os.path.join(self.dir, "error.log")
        self.access_log = os.path.join(self.dir, "access.log")
        self.pid_file = os.path.join(self.dir, "apache.pid")
        self.conf = os.path.join(self.dir, "apache.conf")
        self.proc = None
        user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
        last = None
        for _ in range(5):  # the port is picked before Apache binds it: retry a lost race
            self.port = free_port_tcp_udp()
            self.address = f"127.0.0.1:{self.port}"
            mods = "\n".join(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in [
                "mpm_prefork", "authn_core", "authz_core", "authz_user", "alias", "cgi", "ssl", "auth_gssapi"])
            with open(self.conf, "w") as f:
                f.write(f"""ServerRoot "{self.dir}"
{mods}
{user}ServerName {name}.contoso.test
Listen 127.0.0.1:{self.port}
PidFile "{self.pid_file}"
DefaultRuntimeDir "{self.dir}/run"
ErrorLog "{self.error_log}"
LogLevel warn auth_gssapi:debug
LogFormat "%{{remote}}p %u \\"%r\\" %>s" conn
CustomLog "{self.access_log}" conn
StartServers 4
MinSpareServers 4
MaxSpareServers 16
MaxRequestWorkers 64
Timeout 30
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 30
DocumentRoot "{self.dir}/htdocs"
<Directory />
    Require all granted
</Directory>
SSLEngine on
SSLCertificateFile "{cert.cert}"
SSLCertificateKeyFile "{cert.key}"
SSLSessionCache none
ScriptAlias /cgi-bin/ "{self.dir}/cgi-bin/"
<Location /cgi-bin/>
    AuthType GSSAPI
    AuthName "Gatehouse Kerberos test"
    GssapiCredStore keytab:{keytab}
    GssapiConnectionBound On
    GssapiSignalPersistentAuth On
    GssapiBasicAuth Off
    GssapiAllowedMech krb5
    GssapiSSLonly On
    Require valid-user
</Location>
""")
            env = dict(realm.env, KRB5_KTNAME=keytab, KRB5RCACHEDIR=rcache)
            env.pop("KRB5_KDC_PROFILE", None)
            self.proc = _spawn([_which("apache2"), "-f", self.conf, "-DFOREGROUND"], env,
                               os.path.join(self.dir, "apache.stderr"))
            try:
                wait_tcp(self.port, self.proc, timeout, "apache2", os.path.join(self.dir, "apache.stderr"))
                return
            except RuntimeError as e:
                last = e
                self.stop()
                logs = _tail(self.error_log) + _tail(os.path.join(self.dir, "apache.stderr"))
                if "Address already in use" not in logs:
                    raise RuntimeError(str(e) + _tail(self.error_log))
        raise last

    def access_lines(self):
        with open(self.access_log, errors="replace") as f:
            return f.read().splitlines()

    def stop(self):
        if self.proc is None:
            return
        pgid = self.proc.pid  # setsid: the group is the parent's pid
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Apache ends its children and exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(pgid, signal.SIGKILL)  # children or CGI scripts left behind
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# --- A SPNEGO token from libgssapi_krb5 (for raw HTTP clients) -------------

class _Buffer(ctypes.Structure):
    _fields_ = [("length", ctypes.c_size_t), ("value", ctypes.c_void_p)]


class _Oid(ctypes.Structure):
    _fields_ = [("length", ctypes.c_uint32), ("elements", ctypes.c_void_p)]


def _oid(der):
    buf = ctypes.create_string_buffer(der, len(der))
    oid = _Oid(len(der), ctypes.cast(buf, ctypes.c_void_p))
    oid._keep = buf
    return oid


NT_HOSTBASED_SERVICE = bytes.fromhex("2a864886f71201020104")  # 1.2.840.113554.1.2.1.4
SPNEGO = bytes.fromhex("2b0601050502")  # 1.3.6.1.5.5.2


def spnego_token(service):
    """One initial SPNEGO token (krb5 AP-REQ inside) for `service` (HTTP@host),
    from the default credentials cache (KRB5CCNAME)."""
    lib = ctypes.CDLL(ctypes.util.find_library("gssapi_krb5"))
    minor = ctypes.c_uint32(0)
    name_buf = service.encode()
    inp = _Buffer(len(name_buf), ctypes.cast(ctypes.c_char_p(name_buf), ctypes.c_void_p))
    nt = _oid(NT_HOSTBASED_SERVICE)
    name = ctypes.c_void_p()
    major = lib.gss_import_name(ctypes.byref(minor), ctypes.byref(inp), ctypes.byref(nt), ctypes.byref(name))
    if major:
        raise RuntimeError(f"gss_import_name: major {major:#x} minor {minor.value}")
    ctx = ctypes.c_void_p()
    mech = _oid(SPNEGO)
    out = _Buffer()
    major = lib.gss_init_sec_context(ctypes.byref(minor), None, ctypes.byref(ctx), name, ctypes.byref(mech),
                                     ctypes.c_uint32(0), ctypes.c_uint32(0), None, None, None,
                                     ctypes.byref(out), None, None)
    if major & 0xFFFF0000:
        raise RuntimeError(f"gss_init_sec_context: major {major:#x} minor {minor.value}")
    token = ctypes.string_at(out.value, out.length)
    lib.gss_release_buffer(ctypes.byref(minor), ctypes.byref(out))
    lib.gss_delete_sec_context(ctypes.byref(minor), ctypes.byref(ctx), None)
    lib.gss_release_name(ctypes.byref(minor), ctypes.byref(name))
    return base64.b64encode(token).decode()


def negotiate_token(env, service, timeout=20):
    """spnego_token() in a child process with the client's environment
    (its KRB5CCNAME/KRB5_CONFIG), so this process's own stays untouched."""
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "token", service], env=env,
                       capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"token for {service} failed:\n{p.stderr}")
    return p.stdout.strip()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "token":
        print(spnego_token(sys.argv[2]))
    else:
        sys.exit("usage: kerberos_realm.py token SERVICE@HOST")
