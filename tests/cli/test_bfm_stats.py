"""``bfm stats`` (issue 14, item 1 and 5): the running VMM's exits per reason, counted by
the service as they happen, as a table, as JSON, and as a picture."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from bfm_helpers import Bfm


@pytest.fixture
def bfm(tmp_path: Path) -> Iterator[Bfm]:
    runtime = Bfm(tmp_path / "run")
    yield runtime
    runtime("stop")


def _vmcall_count(figures: dict[str, object]) -> int:
    vcpus = figures["vcpus"]
    assert isinstance(vcpus, dict)
    return int(vcpus["0"]["reasons"].get("18", {"count": 0})["count"])


def test_stats_counts_the_exits_of_the_running_vmm(bfm: Bfm, tmp_path: Path) -> None:
    assert bfm("start", "--backend", "emu").code == 0
    before = json.loads(bfm("stats", "--json").out)
    for i in range(3):
        assert bfm("vmcall", "string", "unformatted", f"hello {i}").code == 0
    after = json.loads(bfm("stats", "--json").out)
    assert _vmcall_count(after) == _vmcall_count(before) + 3
    table = bfm("stats")
    assert table.code == 0 and "vCPU 0" in table.out and "vmcall" in table.out
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("the picture needs the plot extra (matplotlib), not installed here")
    picture = tmp_path / "exits.png"
    drawn = bfm("stats", "--plot", str(picture))
    assert drawn.code == 0, drawn
    assert picture.read_bytes().startswith(b"\x89PNG")


def test_stats_without_a_running_vmm_says_so_in_one_line(bfm: Bfm) -> None:
    assert "bfm start" in bfm.fails("stats")


def test_stats_takes_no_stray_argument(bfm: Bfm) -> None:
    assert "unexpected argument" in bfm.fails("stats", "now")
