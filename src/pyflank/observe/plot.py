"""Pictures of a run's exits: how many of each reason, and when they came.

    plot_exits(read_trace("run.jsonl"), "exits.png")
    plot_exits(stats, "exits.png")        # an ExitStatistics of a run

matplotlib is an optional extra (``pip install 'pyflank[plot]'``); this module says so
when it is missing.  The picture has two panels: exits per basic reason (bars), and the
exits over the run (a histogram stacked by reason), against the guest's instruction
count where every exit has one (the software CPU, traced), else against time since the
run began.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pyflank.intel_x64 import exit_reasons
from pyflank.observe.statistics import ExitStatistics
from pyflank.observe.tracefile import Trace, read_trace

try:
    from matplotlib.figure import Figure
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("pictures of exits need matplotlib: pip install 'pyflank[plot]'") from exc

__all__ = ["ExitSeries", "exit_figure", "exit_series", "plot_exits"]

LINES = 8  # reasons with a colour of their own; the rest are "other"
Source = Trace | ExitStatistics | str | Path


@dataclass(frozen=True)
class ExitSeries:
    """What a picture is drawn from: every exit's place on the x axis and its reason."""

    points: list[tuple[float, int]]
    """(x, basic reason) of every exit, in x order."""
    axis: str
    """What x is ("guest instructions" or "seconds")."""
    vcpus: int

    def counts(self) -> Counter[int]:
        """Basic reason -> exits."""
        return Counter(reason for _, reason in self.points)


def exit_series(source: Source) -> ExitSeries:
    """The exits of ``source``: a ``Trace``, a trace file, or an ``ExitStatistics``
    (kept with ``timeline``)."""
    if isinstance(source, str | Path):
        source = read_trace(source)
    if isinstance(source, ExitStatistics):
        points = [(ns / 1e9, reason) for ns, _, reason in source.timeline()]
        if not points and source.exits():
            raise ValueError("these statistics kept no timeline (ExitStatistics(timeline=True))")
        return ExitSeries(points, "seconds", len(source.vcpus))
    vcpus = len({e.vcpu for e in source.exits})
    counted = bool(source.exits) and all(e.instructions is not None for e in source.exits)
    if counted and vcpus <= 1:
        points = [(float(e.instructions or 0), e.reason) for e in source.exits]
        return ExitSeries(sorted(points), "guest instructions", vcpus)
    return ExitSeries(sorted((e.ns / 1e9, e.reason) for e in source.exits), "seconds", vcpus)


def _label(reason: int) -> str:
    return f"{exit_reasons.description(reason)} ({reason})"


def exit_figure(source: Source, *, title: str | None = None, bins: int = 60) -> Figure:
    """The picture of ``source``'s exits, as a matplotlib ``Figure``: exits per reason,
    and exits over the run in ``bins`` slices, stacked by reason."""
    series = exit_series(source)
    counts = series.counts()
    ranked = sorted(counts, key=lambda r: (-counts[r], r))
    shown = ranked[:LINES]
    colors = {reason: f"C{index}" for index, reason in enumerate(shown)}
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    bars, over = figure.subplots(1, 2, width_ratios=(1, 1.4))
    order = list(reversed(ranked))  # the most frequent on top
    bars.barh([_label(r) for r in order], [counts[r] for r in order],
              color=[colors.get(r, "grey") for r in order])  # fmt: skip
    if ranked and counts[ranked[0]] > 100 * counts[ranked[-1]]:
        bars.set_xscale("log")
    for index, reason in enumerate(order):
        bars.annotate(f" {counts[reason]:,}", (counts[reason], index), va="center", fontsize=8)
    bars.set_xlabel("exits")
    bars.set_title(f"exits per reason ({sum(counts.values()):,} in all)")
    groups = [[x for x, r in series.points if r == reason] for reason in shown]
    labels, palette = [_label(r) for r in shown], [colors[r] for r in shown]
    rest = [x for x, r in series.points if r not in colors]
    if rest:
        groups, labels, palette = [*groups, rest], [*labels, "other"], [*palette, "grey"]
    if series.points:
        over.hist(groups, bins=bins, stacked=True, label=labels, color=palette)
        over.set_ylim(0, over.get_ylim()[1] * 1.3)  # room for the legend above the bars
        over.legend(loc="upper center", fontsize=8, ncols=3)
    over.set_xlabel(series.axis)
    over.set_ylabel(f"exits per 1/{bins} of the run")
    over.set_title("exits over the run")
    over.grid(alpha=0.3)
    vcpus = f"{series.vcpus} vCPU" + ("s" if series.vcpus != 1 else "")
    figure.suptitle(title or f"VM exits ({vcpus})")
    return figure


def plot_exits(source: Source, path: str | Path, *, title: str | None = None) -> Path:
    """Draw ``source``'s exits (``exit_figure``) into the image file ``path`` (its suffix
    picks the format: .png, .svg, .pdf); the path."""
    target = Path(path)
    exit_figure(source, title=title).savefig(target, dpi=110)
    return target
