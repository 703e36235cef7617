"""Starting the VMM service: spawned at once, told what to run when bfm has decided.

Most of ``bfm start`` is the service importing the VMM.  So bfm spawns the service before
it imports its own parser and manager (with ``posix_spawn``: even ``subprocess`` costs an
import); the service imports the VMM meanwhile, then waits for its orders -- the rest of
its command line -- on a pipe, and exits without touching anything if that pipe closes
first (bfm refused to start, or died).  Once it serves, it writes its first answer to
``ping`` to a second pipe: bfm learns it is up without polling.  Until its orders come,
the service writes to a log of its own; the orders make it ``vmm.log``.

The service inherits nothing but its standard streams and the two pipes, as
``subprocess`` with ``close_fds`` would have it, and runs in a session of its own.
"""

from __future__ import annotations

import os
import sys
import time

from pyflank.cli.service_process import SERVICE_MODULE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyflank.cli.runtime import RuntimeDir

_MAX_LINE = 1 << 20
_ORDERS_FD, _READY_FD = 3, 4  # where the service finds its pipes
_unreaped: list[Service] = []  # services not wanted after all, still ending


class Service:
    """The spawned service process (what ``bfm start`` needs of ``subprocess.Popen``)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1  # reaped elsewhere
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, 9)  # SIGKILL, without importing signal's enums


def _spawn(argv: list[str], log: int, orders: int, ready: int) -> Service:
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        actions: list[tuple[int, ...]] = [
            (os.POSIX_SPAWN_DUP2, devnull, 0),
            (os.POSIX_SPAWN_DUP2, log, 1),
            (os.POSIX_SPAWN_DUP2, log, 2),
            (os.POSIX_SPAWN_DUP2, orders, _ORDERS_FD),
            (os.POSIX_SPAWN_DUP2, ready, _READY_FD),
        ]
        # Anything else this process may have made inheritable stays out of the service.
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > _READY_FD and _inheritable(fd):
                actions.append((os.POSIX_SPAWN_CLOSE, fd))
        pid = os.posix_spawn(sys.executable, argv, os.environ, file_actions=actions, setsid=True)
    finally:
        os.close(devnull)
    return Service(pid)


def _inheritable(fd: int) -> bool:
    try:
        return os.get_inheritable(fd)
    except OSError:
        return False  # the descriptor listdir itself used, closed by now


def _high(fd: int) -> int:
    """``fd`` moved above the service's fixed descriptors (so no DUP2 overwrites another
    before it is used), close-on-exec."""
    import fcntl  # noqa: PLC0415 - a C module, only for the one command that spawns

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _READY_FD + 1)
    os.close(fd)
    return moved


class ServiceLaunch:
    """A service process spawned for ``rt``, waiting for its orders."""

    def __init__(self, rt: RuntimeDir) -> None:
        for service in list(_unreaped):
            if service.poll() is not None:
                _unreaped.remove(service)
        rt.ensure()
        self.rt = rt
        self._log = os.path.join(rt.path, f".vmm.log.{os.getpid()}")
        orders, self._orders = (_high(fd) for fd in os.pipe())
        self._ready, ready = (_high(fd) for fd in os.pipe())
        try:
            log = _high(
                os.open(self._log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            )
            try:
                argv = [sys.executable, "-m", SERVICE_MODULE, "--runtime-dir", rt.path,
                        "--orders-fd", str(_ORDERS_FD), "--ready-fd", str(_READY_FD)]  # fmt: skip
                self.process = _spawn(argv, log, orders, ready)
            finally:
                os.close(log)
        except BaseException:
            for fd in (self._orders, self._ready):
                os.close(fd)
            self.rt.remove(self._log)
            raise
        finally:
            os.close(orders)
            os.close(ready)
        self._ordered = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def order(self, arguments: list[str]) -> None:
        """Run with ``arguments`` (the rest of the service's command line)."""
        from pyflank.cli.json_text import dumps  # noqa: PLC0415 - not before it is needed

        os.replace(self._log, self.rt.log)
        self._ordered = True
        try:
            os.write(self._orders, dumps(arguments).encode("ascii") + b"\n")
        except BrokenPipeError:
            pass  # it ended already: wait_ready says so
        finally:
            os.close(self._orders)

    def cancel(self) -> None:
        """Not wanted after all: the service exits as soon as it reads its orders' end."""
        if not self._ordered:
            self._ordered = True
            os.close(self._orders)
            os.close(self._ready)
            self.rt.remove(self._log)
            _unreaped.append(self.process)  # reaped by a later launch, or with this process

    def wait_ready(self, timeout: float) -> bytes | None:
        """The service's first ``ping`` answer; b"" if it ended first, None on time-out."""
        import select  # noqa: PLC0415 - a C module, only for this wait

        deadline = time.monotonic() + timeout
        data = b""
        try:
            while not data.endswith(b"\n") and len(data) < _MAX_LINE:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([self._ready], [], [], remaining)[0]:
                    return None
                chunk = os.read(self._ready, 65536)
                if not chunk:
                    return b""
                data += chunk
            return data
        finally:
            os.close(self._ready)
