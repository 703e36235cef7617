"""The Debian kernel and initramfs for the Linux tests: fetched once (apt-get download),
cached; tests that need them skip, saying why, only where no package manager can."""

from __future__ import annotations

import pytest

from pyflank.platform.linux.assets import AssetsUnavailable, LinuxAssets, ensure


@pytest.fixture(scope="session")
def linux_assets() -> LinuxAssets:
    try:
        return ensure("cloud")
    except AssetsUnavailable as exc:
        pytest.skip(f"no Debian kernel: {exc}")
