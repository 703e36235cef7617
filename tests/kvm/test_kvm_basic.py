"""First guests on KVM: serial output through OUT, HLT, the probe."""

from __future__ import annotations

from kvm_guest_helpers import Guest

from kvm_support import kvm_marks
from pyflank.backends.kvm import StopReason, probe_kvm

pytestmark = kvm_marks()

HELLO = """
    lea rsi, [rip + message]
    mov dx, 0x3f8
next:
    lodsb
    test al, al
    jz done
    out dx, al
    jmp next
done:
    hlt
message:
    .asciz "hello from KVM\\n"
"""


def test_serial_output_then_hlt() -> None:
    guest = Guest(HELLO)
    try:
        result = guest.run_to_stop(timeout=5)
        assert result.reason is StopReason.GUEST_HLT, result.message
        assert guest.com1.text == "hello from KVM\n"
        assert guest.dispatched == 0
    finally:
        guest.close()


def test_probe_reports_usable_kvm() -> None:
    caps = probe_kvm(timeout=0.2)
    assert caps.usable, caps.reason
    assert caps.api_version == 12
    assert caps.exits["out"] and caps.exits["hlt"]
    assert "KVM" in caps.describe()
