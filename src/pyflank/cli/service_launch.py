"""Starting the VMM service: spawned at once, told what to run when bfm has decided.

Most of ``bfm start`` is the service importing the VMM.  So bfm spawns the service before
it imports its own parser and manager; the service imports the VMM meanwhile, then waits
for its orders -- the rest of its command line -- on a pipe, and exits without touching
anything if that pipe closes first (bfm refused to start, or died).  Once it serves, it
writes its first answer to ``ping`` to a second pipe: bfm learns it is up without
polling.  Until its orders come, the service writes to a log of its own; the orders
make it ``vmm.log``.
"""

from __future__ import annotations

import os
import sys
import time

from pyflank.cli.service_process import SERVICE_MODULE

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess

    from pyflank.cli.runtime import RuntimeDir

_MAX_LINE = 1 << 20


class ServiceLaunch:
    """A service process spawned for ``rt``, waiting for its orders."""

    def __init__(self, rt: RuntimeDir) -> None:
        import subprocess  # noqa: PLC0415 - imported by the one command that spawns

        rt.ensure()
        self.rt = rt
        self._log = os.path.join(rt.path, f".vmm.log.{os.getpid()}")
        orders, self._orders = os.pipe()
        self._ready, ready = os.pipe()
        try:
            log = os.open(self._log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                self.process: subprocess.Popen[bytes] = subprocess.Popen(
                    [sys.executable, "-m", SERVICE_MODULE, "--runtime-dir", rt.path,
                     "--orders-fd", str(orders), "--ready-fd", str(ready)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True, pass_fds=(orders, ready),
                )  # fmt: skip
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
