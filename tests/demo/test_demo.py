"""make run: the demo guest and the bfm session both complete, readably."""

import pytest

from pyflank import demo


def test_demo_guest(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--guest-only"]) == 0
    out = capsys.readouterr().out
    for expected in (
        "leaf 0x0: eax=0x16",
        "(GenuineIntel)",
        "(PyFlank)",
        "IA32_EFER <- 0xd01",
        "IA32_EFER -> 0xd01",
        "IA32_LSTAR -> 0xffffffffffff8000",
        "invd",
        "versions: success -> 0.1.0",
        "unittest: success",
        "data: success string_unformatted -> b'hello from the guest'",
        """data: success string_json -> b'{"from":"guest","n":[1,2,3]}'""",
        "binary_unformatted",
        "| demo guest: leaving VMX operation",
        "vCPU 0 stopped: promoted after 22 exits",
    ):
        assert expected in out, expected


def test_demo_bfm_session(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--bfm-only"]) == 0
    out = capsys.readouterr().out
    assert "$ bfm start --backend emu\n  started ExitHandlerIntelX64" in out
    assert "received from vmm: hello from bfm" in out
    assert "vmm unittest 1: passed" in out
    assert out.rstrip().endswith("$ bfm status\n  VMM_LOADED")


def test_make_run_boots_linux_to_the_marker(
    capsys: pytest.CaptureFixture[str], linux_assets: object
) -> None:
    assert demo.main([]) == 0
    out = capsys.readouterr().out
    assert "pyflank-init: uptime" in out
    assert "power off after" in out
    assert "cpuid" in out and "rdmsr" in out  # the exit summary's rows
