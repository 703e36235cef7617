"""Whether KVM tests can run here, and the marks they carry (shared by every test folder)."""

from functools import cache

import pytest

from pyflank.backends.kvm import probe_kvm


@cache
def kvm_unusable_reason() -> str:
    """Why /dev/kvm cannot be used here ('' when it can): the probe's own words."""
    caps = probe_kvm(measure=False)
    return "" if caps.usable else caps.reason


def kvm_marks() -> list[pytest.MarkDecorator]:
    """What a KVM test carries: the ``kvm`` mark, and a skip naming the probe's reason."""
    reason = kvm_unusable_reason()
    return [pytest.mark.kvm, pytest.mark.skipif(bool(reason), reason=f"KVM unusable: {reason}")]
