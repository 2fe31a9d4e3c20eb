"""A Supavisor-like front door on 127.0.0.1: the pooler in front of a hosted Supabase database.

Clients log in as `{role}.{ref}`; the front door checks the tenant (the project ref must be one
the fake knows, and the project must be ACTIVE_HEALTHY: a paused project refuses everything),
can refuse chosen users (`refuse`), and otherwise forwards the connection to the real PostgreSQL
as `role`, rewriting only the user in the startup packet. Authentication is the server's own
(SCRAM, end to end), so a login through the door proves the password. Refusals are a FATAL
ErrorResponse, as Supavisor sends them ("Tenant or user not found").
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

from tests.providers.wire import read_exact

_SSL_REQUEST = 80877103
_GSS_REQUEST = 80877104
_CANCEL = 80877102
_PROTOCOL_3 = 196608


def _error(message: str, code: str = "XX000") -> bytes:
    fields = b"".join(k + v.encode() + b"\0" for k, v in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", code),
                                                         (b"M", message))) + b"\0"
    return b"E" + struct.pack("!I", len(fields) + 4) + fields


class FrontDoor:
    def __init__(self, fake: Any, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.fake = fake                      # a FakeSupabase: its projects and their status
        self.upstream = (upstream_host, upstream_port)
        self.refused: set[str] = set()        # pooler users ("raptor_app.<ref>") turned away
        self.logins: list[str] = []           # every pooler user that asked, in order
        self.errors: list[str] = []
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        assert self._sock is not None
        return self._sock.getsockname()[1]

    def refuse(self, user: str) -> None:
        self.refused.add(user)

    def start(self) -> "FrontDoor":
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        thread = threading.Thread(target=self._accept, name="supavisor", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        with self._lock:
            for s in self._open:
                try:
                    s.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        while self._sock is not None:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._open.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            self._session(client)
        except (ConnectionError, OSError):
            pass
        except Exception as exc:       # a bug in the door itself: never silent
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            try:
                client.close()
            except OSError:
                pass

    def _session(self, client: socket.socket) -> None:
        while True:
            length, code = struct.unpack("!II", read_exact(client, 8))
            body = read_exact(client, length - 8)
            if code in (_SSL_REQUEST, _GSS_REQUEST):
                client.sendall(b"N")       # no TLS on loopback: the client goes on in the clear
                continue
            break
        if code == _CANCEL:
            with socket.create_connection(self.upstream, timeout=5) as up:
                up.sendall(struct.pack("!II", length, code) + body)
            return
        if code != _PROTOCOL_3:
            client.sendall(_error("unsupported frontend protocol", "08P01"))
            return
        parts = body.split(b"\0")
        params = {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts) - 1, 2) if parts[i]}
        user = params.get("user", "")
        self.logins.append(user)
        role, _, ref = user.rpartition(".")
        project = self.fake.projects.get(ref) if role else None
        if project is None or user in self.refused:
            client.sendall(_error("Tenant or user not found"))
            return
        if project.get("status") != "ACTIVE_HEALTHY":
            client.sendall(_error(f"Tenant {ref} is not available: the project is {project.get('status')}"))
            return
        params["user"] = role
        packet = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
        upstream = socket.create_connection(self.upstream, timeout=10)
        upstream.settimeout(None)
        with self._lock:
            self._open.append(upstream)
        upstream.sendall(struct.pack("!II", len(packet) + 8, _PROTOCOL_3) + packet)
        back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        back.start()
        _pipe(client, upstream)
        back.join(timeout=5)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (dst, src):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
