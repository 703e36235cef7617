"""Pictures of a run's exits (the ``plot`` extra): per reason, and over the run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from observe_helpers import rounds_vm

from pyflank.observe import ExitStatistics, ExitTrace, plot_exits, read_trace
from pyflank.observe.plot import exit_figure, exit_series

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_trace_drawn_per_reason_and_over_the_run(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    rounds_vm(backend, vcpus=2, observers=[ExitTrace(path)]).run(timeout=10)
    trace = read_trace(path)
    series = exit_series(trace)
    # Two vCPUs' instruction counts are not one axis: time is.
    assert series.axis == "seconds" and series.vcpus == 2 and len(series.points) == 15
    bars, over = exit_figure(trace).axes
    labels = [tick.get_text() for tick in bars.get_yticklabels()]
    assert labels == ["io_instruction (30)", "rdmsr (31)"]  # the most frequent on top
    assert [patch.get_width() for patch in bars.patches] == [6, 9]
    assert sum(patch.get_height() for patch in over.patches) == 15  # every exit, once
    image = plot_exits(trace, tmp_path / "exits.png")
    assert image.read_bytes().startswith(PNG)
    assert plot_exits(path, tmp_path / "exits.svg").read_text().startswith("<?xml")


def test_one_vcpu_is_drawn_against_its_instructions(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    rounds_vm(backend, observers=[ExitTrace(path)]).run(timeout=10)
    series = exit_series(path)
    if backend == "kvm":  # GAPS["instruction_count"]
        assert series.axis == "seconds"
    else:
        assert series.axis == "guest instructions"
        assert [x for x, _ in series.points] == [3, 4, 5, 6, 7]


def test_statistics_are_drawn_from_their_timeline(backend: str, tmp_path: Path) -> None:
    stats = ExitStatistics()
    rounds_vm(backend, vcpus=2, observers=[stats]).run(timeout=10)
    series = exit_series(stats)
    assert series.axis == "seconds" and len(series.points) == stats.exits() == 15
    assert plot_exits(stats, tmp_path / "stats.png").read_bytes().startswith(PNG)
    untimed = ExitStatistics(timeline=False)
    rounds_vm(backend, observers=[untimed]).run(timeout=10)
    with pytest.raises(ValueError, match="kept no timeline"):
        exit_series(untimed)


def observe(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = f"{prelude}import runpy; runpy.run_module('pyflank.observe', run_name='__main__')"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )


def test_plot_from_the_command_line_and_without_matplotlib(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    rounds_vm("emu", observers=[ExitTrace(path)]).run(timeout=10)
    done = observe("plot", str(path), "-o", str(tmp_path / "cli.png"), "--title", "hello")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cli.png").read_bytes().startswith(PNG)
    hidden = "import sys; sys.modules['matplotlib'] = None; "  # as if not installed
    missing = observe("plot", str(path), "-o", str(tmp_path / "no.png"), prelude=hidden)
    assert missing.returncode == 2
    assert "pip install 'pyflank[plot]'" in missing.stderr
    assert not (tmp_path / "no.png").exists()
    stats = observe("stats", str(path), prelude=hidden)  # the rest needs no matplotlib
    assert stats.returncode == 0 and "5 exits" in stats.stdout
