"""An RDS for PostgreSQL server the way the master user meets it, built from a real cluster.

The role model (`LAYOUT`), as RDS sets it up: the bootstrap superuser is `rdsadmin` (initdb -U
rdsadmin: the customer never gets a superuser); `rds_superuser` holds rds_password,
rds_replication, rds_iam and pg_signal_backend WITH ADMIN OPTION; the master is NOSUPERUSER
CREATEROLE CREATEDB and a member of rds_superuser (tests make one per test, see conftest.master).

`rds.restrict_password_commands` is enforced by the server's front door (`RdsFront`), because
stock PostgreSQL has no hook for it that a test can use: event triggers never fire for role
commands (roles are global objects) and RDS's own check lives in a server module we do not
have. The front parses the client's Query and Parse messages (quotes, dollar quotes and
comments respected) and puts a guard in front of every statement the RDS documentation lists as
restricted (CREATE/ALTER ROLE|USER|GROUP with PASSWORD or VALID UNTIL). The guard runs in the
server, as the session's current_user, so it sees SET ROLE, the database's setting and the real
membership, and fails the transaction the way a server-side error does:

    ERROR:  must be a member of rds_password to alter passwords        (SQLSTATE 42501)

What it cannot see: a password command built inside a function (EXECUTE in PL/pgSQL). The tool
sends none, and the front says so here rather than pretending otherwise.

Everything the tool reaches goes through the front (the test's `pg.port` is the front's);
only the test's own setup uses rdsadmin over the Unix socket, as RDS's automation does.
`RdsFront` also stands in for RDS's IAM authentication (`iam=`): a member of rds_iam must send
a valid IAM auth token as a cleartext password (see `verify_auth_token`).
"""

from __future__ import annotations

import re
import socket
import socketserver
import struct
import threading
from dataclasses import dataclass

from tests.providers.wire import read_exact, relay

ADMIN = "rdsadmin"
RESTRICTED_MESSAGE = "must be a member of rds_password to alter passwords"

# as rdsadmin, idempotent: run when the cluster starts and again before each test (a test may
# drop and recreate rds_iam, which takes rds_superuser's grant with it)
LAYOUT = """
DO $layout$
DECLARE name text;
BEGIN
  FOREACH name IN ARRAY ARRAY['rds_superuser', 'rds_password', 'rds_replication', 'rds_iam'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name) THEN
      EXECUTE format('CREATE ROLE %I NOLOGIN', name);
    END IF;
  END LOOP;
END $layout$;
GRANT rds_password, rds_replication, rds_iam, pg_signal_backend TO rds_superuser WITH ADMIN OPTION;
"""

GUARD = (
    "DO $rds_guard$BEGIN IF lower(coalesce(current_setting('rds.restrict_password_commands', true), '')) "
    "IN ('1', 'on', 'true') AND NOT pg_has_role(current_user, 'rds_password', 'MEMBER') THEN "
    f"RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = '{RESTRICTED_MESSAGE}'; END IF; END$rds_guard$"
)


# -- the SQL the client sends --------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_DOLLAR = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def statements(text: str) -> list[tuple[int, list[str]]]:
    """Each statement of `text` as (offset where it starts, its words in upper case), with
    string literals and quoted identifiers as one `'` / `"` word each, and dollar-quoted bodies
    and comments skipped."""
    out: list[tuple[int, list[str]]] = []
    i, start, words, n = 0, 0, [], len(text)
    while i < n:
        c = text[i]
        if c == ";":
            out.append((start, words))
            i += 1
            start, words = i, []
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c in "'\"":
            backslashes = c == "'" and i > 0 and text[i - 1] in "eE" and not (i > 1 and (text[i - 2].isalnum() or text[i - 2] == "_"))
            words.append(c)          # a literal or a quoted name holds a word's place
            i += 1
            while i < n:
                if backslashes and text[i] == "\\":
                    i += 2
                elif text[i] == c:
                    if text.startswith(c * 2, i):
                        i += 2
                    else:
                        i += 1
                        break
                else:
                    i += 1
        elif c == "$" and (m := _DOLLAR.match(text, i)):
            end = text.find(m.group(), m.end())
            i = n if end < 0 else end + len(m.group())
        elif m := _WORD.match(text, i):
            words.append(m.group().upper())
            i = m.end()
        else:
            i += 1
    if words:
        out.append((start, words))
    return out


def restricted(words: list[str]) -> bool:
    """One of the commands RDS lets only rds_password members run when password commands are
    restricted: CREATE/ALTER ROLE|USER|GROUP … PASSWORD / VALID UNTIL. (ALTER ROLE … RENAME is
    restricted too, but only for MD5 passwords; these clusters store SCRAM verifiers.)"""
    if len(words) < 3 or words[0] not in ("CREATE", "ALTER") or words[1] not in ("ROLE", "USER", "GROUP"):
        return False
    if words[1] == "USER" and words[2] == "MAPPING":
        return False
    tail = words[3:]
    if tail and tail[0] in ("SET", "RESET", "IN", "RENAME"):
        return False
    return "PASSWORD" in tail or "VALID" in tail


def guarded_query(text: str) -> str:
    """A simple-protocol Query with the guard before each restricted statement (the server runs
    the statements of one Query in one implicit transaction, so a failing guard stops the rest)."""
    cuts = [start for start, words in statements(text) if restricted(words)]
    for start in reversed(cuts):
        text = text[:start] + GUARD + ";" + text[start:]
    return text


def guarded_statement(text: str) -> str:
    """An extended-protocol Parse holds one statement: a restricted one becomes a DO block that
    runs the guard and then the statement itself."""
    found = statements(text)
    if len(found) != 1 or not restricted(found[0][1]):
        return text
    tag = "rds_stmt"
    while f"${tag}$" in text:
        tag += "_"
    body = GUARD.removeprefix("DO $rds_guard$BEGIN ").removesuffix(" END$rds_guard$")
    return f"DO $rds_guard$BEGIN {body} EXECUTE ${tag}${text}${tag}$; END$rds_guard$"


# -- the wire ------------------------------------------------------------------------------------

def read_packet(sock) -> bytes:
    head = read_exact(sock, 4)
    return head + read_exact(sock, struct.unpack("!I", head)[0] - 4)


def _relay_guarded(client, upstream) -> None:
    """Client → server, message by message, with restricted statements guarded."""
    try:
        while True:
            kind = read_exact(client, 1)
            length = struct.unpack("!I", read_exact(client, 4))[0]
            body = read_exact(client, length - 4)
            if kind == b"Q":
                text = body[:-1].decode("utf-8", "surrogateescape")
                body = guarded_query(text).encode("utf-8", "surrogateescape") + b"\0"
            elif kind == b"P":
                name, _, rest = body.partition(b"\0")
                query, _, params = rest.partition(b"\0")
                text = query.decode("utf-8", "surrogateescape")
                body = name + b"\0" + guarded_statement(text).encode("utf-8", "surrogateescape") + b"\0" + params
            upstream.sendall(kind + struct.pack("!I", len(body) + 4) + body)
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            upstream.shutdown(socket.SHUT_WR)
        except OSError:
            pass


@dataclass
class IamCheck:
    """What RDS checks an IAM auth token against."""
    region: str
    credentials: dict[str, str]
    endpoint: str = ""              # host:port the tokens must name; set once known


class RdsFront:
    """RDS's front door on 127.0.0.1, for a test cluster: TLS when the client asks; then every
    login relayed to the server with password commands guarded (above). With `iam`, a member of
    rds_iam must instead send a valid IAM auth token as a cleartext password; a valid one is
    let in over the server's Unix socket (trust, as RDS's internal hop), an invalid one ends
    with PostgreSQL's own 28P01 error. `accepted` / `refused` record each IAM login."""

    def __init__(self, cluster, tmp_dir, *, iam: IamCheck | None = None) -> None:
        import ssl

        self.cluster, self.iam = cluster, iam
        self.accepted: list[str] = []
        self.refused: list[str] = []
        cert, key = _self_signed(tmp_dir)
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert, key)
        front = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                front._serve(self.request)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return self.iam.endpoint if self.iam else ""

    @endpoint.setter
    def endpoint(self, value: str) -> None:
        assert self.iam is not None
        self.iam.endpoint = value

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _serve(self, raw: socket.socket) -> None:
        try:
            self._serve_one(raw)
        except (ConnectionError, OSError):
            pass        # the client went away mid-handshake

    def _serve_one(self, raw: socket.socket) -> None:
        first = read_packet(raw)
        code = struct.unpack("!I", first[4:8])[0]
        if code == 80877104:                                       # GSSENCRequest: not offered
            raw.sendall(b"N")
            first = read_packet(raw)
            code = struct.unpack("!I", first[4:8])[0]
        if code == 80877102:                                       # CancelRequest: to the server as is
            with socket.create_connection(("127.0.0.1", self.cluster.port)) as upstream:
                upstream.sendall(first)
            return
        if code == 80877103:                                       # SSLRequest
            raw.sendall(b"S")
            client = self.tls.wrap_socket(raw, server_side=True)
            startup = read_packet(client)
        else:
            client, startup = raw, first
        fields = startup[8:].split(b"\0")
        params = dict(zip(fields[0::2], fields[1::2]))
        user = params.get(b"user", b"").decode()
        if self.iam is None or not self._iam_user(user):
            upstream = socket.create_connection(("127.0.0.1", self.cluster.port))
        else:
            if not self._iam_login(client, user):
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(str(self.cluster.socket_dir / f".s.PGSQL.{self.cluster.port}"))
        upstream.sendall(startup)
        pipes = [threading.Thread(target=_relay_guarded, args=(client, upstream), daemon=True),
                 threading.Thread(target=relay, args=(upstream, client), daemon=True)]
        for pipe in pipes:
            pipe.start()
        for pipe in pipes:
            pipe.join()
        upstream.close()

    def _iam_login(self, client, user: str) -> bool:
        import time

        from tests.providers.rds.server_world import verify_auth_token

        assert self.iam is not None
        client.sendall(b"R" + struct.pack("!II", 8, 3))       # AuthenticationCleartextPassword
        kind = client.recv(1)
        length = struct.unpack("!I", read_exact(client, 4))[0]
        token = read_exact(client, length - 4).rstrip(b"\0").decode()
        why = verify_auth_token(token, user=user, endpoint=self.iam.endpoint, region=self.iam.region,
                                key_id=self.iam.credentials["AWS_ACCESS_KEY_ID"],
                                secret_key=self.iam.credentials["AWS_SECRET_ACCESS_KEY"],
                                session_token=self.iam.credentials.get("AWS_SESSION_TOKEN"), now=time.time())
        if kind != b"p" or why:
            self.refused.append(f"{user}: {why or 'no password message'}")
            body = b"SFATAL\0C28P01\0M" + f"PAM authentication failed for user \"{user}\"".encode() + b"\0\0"
            client.sendall(b"E" + struct.pack("!I", len(body) + 4) + body)
            client.close()
            return False
        self.accepted.append(user)
        return True

    def _iam_user(self, user: str) -> bool:
        import psycopg

        with psycopg.connect(self.cluster.admin_conninfo(), autocommit=True) as conn:
            return bool(conn.execute(
                # granted rds_iam itself (the master, in rds_superuser, holds it only to grant it)
                """SELECT EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
                   JOIN pg_roles i ON i.oid = m.roleid WHERE r.rolname = %s AND i.rolname = 'rds_iam')""",
                (user,)).fetchone()[0])


def _self_signed(tmp_dir) -> tuple[str, str]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rds-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = f"{tmp_dir}/front.crt", f"{tmp_dir}/front.key"
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path
