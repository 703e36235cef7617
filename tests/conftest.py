"""Shared test configuration: hypothesis profiles (``make soak`` runs the long one), the
``backend`` fixture (guest-program tests run on every backend), the KVM summary line."""

import os

import pytest
from hypothesis import HealthCheck, settings

from kvm_support import kvm_marks
from pyflank.platform.linux.assets import AssetsUnavailable, LinuxAssets, ensure

settings.register_profile(
    "default", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "soak", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("PYFLANK_HYPOTHESIS_PROFILE", "default"))


KVM_TESTS: set[str] = set()


def backend_params() -> list[object]:
    return ["emu", pytest.param("kvm", marks=kvm_marks())]


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The backend a test runs its guests on; tests asking for it run on each."""
    return str(getattr(request, "param", "emu"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backend_independent: runs once, on the software CPU (no guest, or no KVM)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("backend_independent"):
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        if "backend" in str(mark.args[0]):
            return  # the test chose its own backends
    metafunc.parametrize("backend", backend_params(), indirect=True)


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    KVM_TESTS.update(item.nodeid for item in items if item.get_closest_marker("kvm"))


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    """Say how many KVM tests ran, and why the others were skipped."""
    ran = skipped = 0
    reasons: set[str] = set()
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "nodeid", None) not in KVM_TESTS:
                continue
            if outcome == "skipped":
                skipped += 1
                if isinstance(report.longrepr, tuple):
                    reasons.add(str(report.longrepr[2]))
            elif report.when == "call" or outcome == "error":
                ran += 1
    line = f"KVM tests: {ran} ran, {skipped} skipped"
    if reasons:
        line += " (" + "; ".join(sorted(reasons)) + ")"
    terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def linux_assets() -> LinuxAssets:
    """Debian's kernel and the initramfs: fetched once (apt-get download), cached; a test
    that needs them skips, saying why, only where no package manager can provide them."""
    try:
        return ensure("cloud")
    except AssetsUnavailable as exc:
        pytest.skip(f"no Debian kernel: {exc}")
