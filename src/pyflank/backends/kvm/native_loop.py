"""The KVM vCPU's run loop with the native accelerator (``pyflank.native``, kvm.c).

KVM_RUN runs with the GIL released, a KVM_EXIT_IO is decoded from the ``kvm_run`` page,
and a plan that only sets registers is loaded there; everything else goes to the Python
code of ``KvmVcpu`` and ``IoExits``, the reference, which is also what runs without the
accelerator (or without KVM_CAP_SYNC_REGS: the C loop reads the registers in the page).
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any

from pyflank.backends.kvm import abi
from pyflank.backends.kvm import owed as debt
from pyflank.backends.kvm.guest_state import DOORBELL_ORDER, KVM_ORDER, SDM_ORDER
from pyflank.backends.kvm.io_exits import DATA_OFFSET_WORD, IO_WORD, ONE_BYTE_OUT, ONE_BYTE_OUT_MASK
from pyflank.backends.kvm.structs import KvmRun, KvmSregs
from pyflank.native import accelerator
from pyflank.processor import Stop

if TYPE_CHECKING:
    from pyflank.backends.kvm.vcpu import KvmVcpu

_MASK64 = (1 << 64) - 1


def native_loop(vcpu: KvmVcpu) -> Any | None:
    """The C run loop of ``vcpu``, or None where the Python one must run."""
    module = accelerator()
    if module is None or not vcpu.registers.synced:
        return None
    run = vcpu.run_page
    base = ctypes.addressof(run)
    sregs = vcpu.registers.sregs
    doorbell = vcpu.io.doorbell_word
    return module.KvmLoop(
        vcpu=vcpu,
        stop=Stop,
        page=(
            vcpu.fd.fd, abi.KVM_RUN, base, ctypes.addressof(vcpu.registers.regs),
            ctypes.addressof(sregs), ctypes.sizeof(sregs),
            ctypes.addressof(sregs) + KvmSregs.cr3.offset, KvmRun.exit_reason.offset,
            8 * IO_WORD, 8 * DATA_OFFSET_WORD, KvmRun.kvm_dirty_regs.offset,
        ),
        words=(
            abi.KVM_EXIT_IO, abi.KVM_SYNC_X86_REGS, debt.NOTHING, debt.COMPLETION,
            debt.UNLESS_MOVED, doorbell, ONE_BYTE_OUT_MASK & _MASK64, ONE_BYTE_OUT,
        ),
        orders=(SDM_ORDER, DOORBELL_ORDER, KVM_ORDER),
    )  # fmt: skip
