"""Socket helpers shared by the tests' loopback front doors and relays (RDS's guard and port
forward, Supavisor's front door, the hostile world's cleartext server)."""

from __future__ import annotations

import socket


def read_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly `n` bytes, or ConnectionError (an OSError) when the peer goes away first."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer went away")
        data += chunk
    return data


def relay(src: socket.socket, dst: socket.socket) -> None:
    """Copy `src` to `dst` until `src` ends, then half-close `dst` so the other side sees the end."""
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
