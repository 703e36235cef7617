"""Where the gdb stub listens, and whom it serves: the loopback only, and only the user it
runs as, since whoever connects controls the guest."""

from __future__ import annotations

import ipaddress
import socket


def loopback(spec: int | str) -> tuple[str, int]:
    """(host, port) of a stub address: a port (the loopback), ``HOST:PORT`` or ``:PORT``.
    ``ValueError`` for a host that is not the loopback: the stub gives whoever connects
    the whole guest."""
    host, port_text = "127.0.0.1", str(spec)
    if isinstance(spec, str) and ":" in spec:
        host, _, port_text = spec.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"gdb stub address {spec!r}: the port is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"gdb stub address {spec!r}: port {port} is out of range")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except socket.gaierror as exc:
        raise ValueError(f"gdb stub address {spec!r}: {exc}") from None
    if not all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses):
        raise ValueError(
            f"gdb stub address {spec!r}: {host} is not a loopback address (the stub listens "
            "on 127.0.0.1 or ::1 only: whoever connects controls the guest)"
        )
    return str(sorted(addresses, key=str)[0]), port


def peer_uid(sock: socket.socket) -> int | None:
    """The user owning the other end of loopback connection ``sock``, from the kernel's
    table of TCP sockets (Linux ``/proc/net/tcp``); None where it cannot be told."""
    peer = _endpoint(sock.getpeername())
    here = _endpoint(sock.getsockname())
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as file:
                rows = file.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if (
                len(fields) > 7
                and _row_endpoint(fields[1]) == peer
                and (_row_endpoint(fields[2]) == here)
            ):
                return int(fields[7])
    return None


def _endpoint(address: tuple[object, ...]) -> tuple[bytes, int]:
    host, port = str(address[0]).split("%")[0], int(str(address[1]))
    return ipaddress.ip_address(host).packed, port


def _row_endpoint(text: str) -> tuple[bytes, int]:
    """An address of /proc/net/tcp: hex words in host (little-endian) order, then the port."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return words, int(port, 16)
