"""Where the gdb stub listens: the loopback only, since whoever connects controls the guest."""

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
