"""Boot Linux with its I/O, HLT and interrupt exits coming to you, and count them: the
composable handlers keep the guest running, your subclass watches."""

from collections import Counter

from pyflank.exit_handler.passthrough import ForwardedInterrupts, HltToIdle, IoPassThrough
from pyflank.intel_x64.exit_reasons import ExitReason


class WatchingLinux(IoPassThrough, HltToIdle, ForwardedInterrupts):
    seen: Counter[str] = Counter()

    def handle_exit(self, reason: int) -> None:
        WatchingLinux.seen[ExitReason(reason & 0xFFFF).name.lower()] += 1
        super().handle_exit(reason)


if __name__ == "__main__":
    from pyflank import Vm
    from pyflank.platform.linux.assets import ensure

    found = ensure()  # Debian's kernel and a busybox initramfs, fetched once and cached
    vm = Vm.boot_linux(found.kernel.bzimage, initrd=found.initramfs,
                       append="console=ttyS0 pyflank.poweroff", handler=WatchingLinux)  # fmt: skip
    [result] = vm.run(timeout=None)  # until the guest powers off
    print(result.reason.value, dict(WatchingLinux.seen.most_common()))
