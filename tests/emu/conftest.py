"""Every guest-program test here runs on each backend (see ``backend`` in tests/conftest.py)."""

from collections.abc import Iterator

import emu_helpers
import pytest


@pytest.fixture(autouse=True)
def _guests_on(backend: str) -> Iterator[None]:
    with emu_helpers.using_backend(backend):
        yield
        emu_helpers.compare_with_pure_python()  # the test's guests again, without the accelerator
