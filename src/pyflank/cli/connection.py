"""Connecting to the VMM service's socket and checking who is on the other end.

Both ends check the other's credentials (``SO_PEERCRED``): the service answers only its
own user, and bfm talks only to a service of its own user that is the process the pid
file names.  Built on ``_socket`` (the C module): ``socket``'s enums would cost every
``bfm vmcall`` process an import.
"""

from __future__ import annotations

import _socket
import os
import struct

from pyflank.cli.errors import PeerRefused, ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeVar

    Socket = TypeVar("Socket", bound=_socket.socket)

CONNECT_TIMEOUT = 5.0  # a burst of clients waits this long for the service to accept
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_TIMEVAL = struct.Struct("ll")


def peer_credentials(sock: _socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process on the other end of a connected Unix socket."""
    pid, uid, _gid = _PEERCRED.unpack(
        sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _PEERCRED.size)
    )
    return pid, uid


def connect(path: str | os.PathLike[str], timeout: float, kind: type[Socket]) -> Socket:
    """A ``kind`` socket connected to the service at ``path`` (``ProtocolError`` if not)."""
    sock = kind(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        # A blocking connect, bounded by SO_SNDTIMEO: a full accept queue makes it wait,
        # where a non-blocking one (what settimeout gives) fails at once with EAGAIN.
        seconds = min(timeout, CONNECT_TIMEOUT)
        timeval = _TIMEVAL.pack(int(seconds), int(seconds % 1 * 1_000_000))
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, timeval)
        sock.connect(os.fspath(path))
        sock.settimeout(timeout)
    except BlockingIOError:
        sock.close()
        raise ProtocolError("the VMM is too busy to accept a connection: try again") from None
    except OSError as exc:
        sock.close()
        raise ProtocolError(f"cannot reach the VMM: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    return sock


def check_peer(sock: _socket.socket, path: str | os.PathLike[str], pid: int | None) -> None:
    """``PeerRefused`` unless this user (and process ``pid``, when given) serves ``path``."""
    peer, uid = peer_credentials(sock)
    if uid != os.getuid():
        raise PeerRefused(f"{os.fspath(path)} is served by uid {uid}, not by you: refusing it")
    if pid is not None and peer != pid:
        raise PeerRefused(f"{os.fspath(path)} is served by pid {peer}, not the VMM service {pid}")
