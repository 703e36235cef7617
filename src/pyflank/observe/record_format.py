"""The recording file (``observe.Recorder``, ``observe.Replayer``), spelled once: gzip-
compressed JSON, one object per line, each with a ``type``.

``header`` (first): ``format`` ("pyflank-recording"), ``version``, ``pyflank``, ``unicorn``
(the engine build), ``platform`` ("pc" or "minimal"), ``memory_size``, ``start`` (SHA-256
of the state the run started from: RAM, each vCPU's VMCS and StateSave).

``vcpu``: ``vcpu``, ``handler`` (module.Class).

``input``, host input for COM1 as the guest got it: ``kind`` and ``at`` say where ("check":
the machine's ``at``-th look for host input, which it makes at each exit and pause;
"idle": while halted waiting for input, after the ``at``-th look; "exit": on the minimal
platform, before the handler sees exit ``at``), ``executed`` and ``idle_ns`` (guest time
then), ``data`` (hex).

``exit``, one per exit the handler saw: ``n`` (its index), ``reason`` (basic), ``qualification``,
``rip``, ``executed`` (the engine's progress count, -1 where it has none), ``cpu`` (what
the handler asked the CPU and was answered, as ``observe.format`` writes CPU calls), and
``decided``: what the handler did -- ``rip`` (where the guest resumes, if it moved), ``regs``
(registers it changed), ``vmcs`` (fields it wrote: name -> value), ``state`` ("halted" or
"promoted" when it did not resume the guest).

``stop`` (last): ``reason``, ``message``, ``exits``, ``console`` (SHA-256 of what COM1 sent)
and ``console_bytes`` (how much it sent).

Values are JSON numbers (exact for 64 bits in Python).  A reader refuses another format or
version, and a file that is not one, in one line.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

FORMAT: Final = "pyflank-recording"
VERSION: Final = 1
_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


class RecordingError(ValueError):
    """A file that is not a recording this pyflank can replay (the message says why)."""


@dataclass(frozen=True)
class InputPoint:
    """Where host input reached the guest (``input`` lines)."""

    kind: str
    at: int
    executed: int
    idle_ns: int

    def describe(self) -> str:
        where = {"check": "look", "idle": "idle wait after look", "exit": "exit"}[self.kind]
        return f"{where} {self.at} (guest progress {self.executed}, idle {self.idle_ns} ns)"


@dataclass(frozen=True)
class RecordedInput:
    point: InputPoint
    data: bytes


@dataclass(frozen=True)
class RecordedExit:
    n: int
    reason: int
    qualification: int
    rip: int
    executed: int
    cpu: list[list[Any]]
    decided: dict[str, Any]


@dataclass
class Recording:
    """A recording, read (``read_recording``)."""

    header: dict[str, Any]
    handler: str = ""
    exits: list[RecordedExit] = field(default_factory=list)
    inputs: list[RecordedInput] = field(default_factory=list)
    stop: dict[str, Any] | None = None


class RecordingWriter:
    """Writes a recording line by line (any thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._raw = self.path.open("wb")
        self._file: IO[str] = gzip.open(self._raw, "wt", encoding="utf-8", compresslevel=3)  # noqa: SIM115
        self._lock = threading.Lock()
        self.lines = 0

    def write(self, line: dict[str, Any]) -> None:
        text = _encode(line) + "\n"
        with self._lock:
            self._file.write(text)
            self.lines += 1

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()
                self._raw.close()


def read_recording(path: str | Path) -> Recording:
    """The recording at ``path``; ``RecordingError`` with the reason if it is none."""
    path = Path(path)
    lines = _lines(path)
    first = next(lines, None)
    if first is None or first.get("type") != "header" or first.get("format") != FORMAT:
        raise RecordingError(f"{path} is not a pyflank recording (no header)")
    if first.get("version") != VERSION:
        raise RecordingError(f"{path} is a version {first.get('version')} recording; this "
                             f"pyflank replays version {VERSION} only")  # fmt: skip
    recording = Recording(first)
    try:
        for line in lines:
            kind = line.get("type")
            if kind == "vcpu":
                recording.handler = str(line["handler"])
            elif kind == "input":
                point = InputPoint(str(line["kind"]), int(line["at"]), int(line["executed"]),
                                   int(line["idle_ns"]))  # fmt: skip
                recording.inputs.append(RecordedInput(point, bytes.fromhex(line["data"])))
            elif kind == "exit":
                recording.exits.append(RecordedExit(
                    int(line["n"]), int(line["reason"]), int(line["qualification"]),
                    int(line["rip"]), int(line["executed"]), list(line.get("cpu", [])),
                    dict(line["decided"]),
                ))  # fmt: skip
            elif kind == "stop":
                recording.stop = line
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordingError(f"{path}: a line is not what a recording holds: {exc}") from None
    return recording


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as file:
            for number, text in enumerate(file, 1):
                try:
                    line = json.loads(text)
                except ValueError:
                    raise RecordingError(f"{path}, line {number}: not JSON") from None
                if not isinstance(line, dict):
                    raise RecordingError(f"{path}, line {number}: not a JSON object")
                yield line
    except OSError as exc:  # not gzip, cut short, unreadable
        raise RecordingError(f"{path} is not a pyflank recording: {exc}") from None
    except (EOFError, zlib.error) as exc:
        raise RecordingError(f"{path} is cut short or corrupt: {exc}") from None


def digest(*parts: bytes | memoryview) -> str:
    """SHA-256 of ``parts`` (the start of a run, a console)."""
    hashed = hashlib.sha256()
    for part in parts:
        hashed.update(part)
    return hashed.hexdigest()
