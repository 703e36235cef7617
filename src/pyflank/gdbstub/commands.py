"""The gdb stub's packets, each answered on the stopped vCPU gdb works on (``Hg``): its
registers, memory, breakpoints and watchpoints, threads, queries and monitor commands.
Going on (``c``, ``s``, ``vCont``) is the session's (``server``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pyflank.backends.emu.debug import WatchKind
from pyflank.debug.views import RegisterView, read_memory, write_memory
from pyflank.gdbstub import monitor
from pyflank.gdbstub.target import TARGET_XML, decode, encode
from pyflank.intel_x64.register_set import REGISTERS

if TYPE_CHECKING:
    from pyflank.gdbstub.server import GdbStub

DETACH: Final = object()  # the session ends (``D``, ``k``)
Reply = str | bytes | object | None  # a payload, DETACH, or None: a stop reply was sent
CALL_TIMEOUT: Final = 30.0
_WATCH_KINDS = {2: WatchKind.WRITE, 3: WatchKind.READ, 4: WatchKind.ACCESS}
_SUPPORTED = (
    "PacketSize=20000;qXfer:features:read+;QStartNoAckMode+;swbreak+;hwbreak+;vContSupported+"
)


def handle(stub: GdbStub, text: str) -> Reply:
    """The reply to packet ``text``."""
    command = _COMMANDS.get(text[:1])
    if command is not None:
        return command(stub, text[1:])
    return _query(stub, text)


def _query(stub: GdbStub, text: str) -> Reply:
    if text.startswith("qSupported"):
        return _SUPPORTED
    if text.startswith("QStartNoAckMode"):
        return "OK"
    if text.startswith("qXfer:features:read:target.xml:"):
        offset, length = (int(x, 16) for x in text.rsplit(":", 1)[1].split(","))
        more = offset + length < len(TARGET_XML)
        return (b"m" if more else b"l") + TARGET_XML[offset : offset + length]
    if text == "qfThreadInfo":
        return "m" + ",".join(f"{p.vcpuid + 1:x}" for p in stub.live())
    if text == "qsThreadInfo":
        return "l"
    if text == "qC":
        return f"QC{stub.current + 1:x}"
    if text == "qAttached":
        return "1"
    if text.startswith("qThreadExtraInfo,"):
        return stub.thread_info(int(text.split(",")[1], 16) - 1).encode().hex()
    if text.startswith("qRcmd,"):
        output = monitor.run(stub, bytes.fromhex(text[6:]).decode(errors="replace"))
        if output:
            stub.console(output)
        return "OK"
    if text == "vCont?":
        return "vCont;c;C;s;S;t"
    if text.startswith("vCont;"):
        stub.resume(_vcont_actions(text[6:]))
        return None
    if text.startswith("vKill"):
        stub.kill()
        return "OK"
    return ""  # not supported: gdb does without


def _vcont_actions(text: str) -> dict[int | None, str]:
    """vCPU -> "c" or "s" (None: every other thread) of a ``vCont`` packet."""
    actions: dict[int | None, str] = {}
    for part in text.split(";"):
        action, _, thread = part.partition(":")
        letter = action[:1].lower()
        if letter in ("c", "s"):
            target = None if not thread or thread == "-1" else int(thread, 16) - 1
            actions.setdefault(target, letter)
    return actions


def _stop_reason(stub: GdbStub, _: str) -> Reply:
    return stub.last_reply


def _thread(stub: GdbStub, text: str) -> Reply:
    if text[:1] not in ("g", "c"):
        return ""
    tid = int(text[1:], 16)
    if tid > 0:
        if tid - 1 not in stub.vcpus or stub.vcpus[tid - 1].ended:
            return "E01"
        if text[0] == "g":
            stub.current = tid - 1
    return "OK"


def _alive(stub: GdbStub, text: str) -> Reply:
    parking = stub.vcpus.get(int(text, 16) - 1)
    return "OK" if parking is not None and not parking.ended else "E01"


def _value(view: RegisterView, name: str) -> int | None:
    try:
        return view.read(name)
    except (KeyError, ValueError):
        return None


def _read_registers(stub: GdbStub, _: str) -> Reply:
    return stub.on_current(lambda view: "".join(encode(r, _value(view, r.name)) for r in REGISTERS))


def _write_registers(stub: GdbStub, text: str) -> Reply:
    def write_all(view: RegisterView) -> str:
        offset = 0
        for register in REGISTERS:
            size = register.bits // 4
            chunk = text[offset : offset + size]
            offset += size
            if chunk and "x" not in chunk:
                value = decode(register, chunk)
                if value != _value(view, register.name):  # gdb sends them all back
                    view.write(register.name, value)
        return "OK"

    return stub.on_current(write_all)


def _read_register(stub: GdbStub, text: str) -> Reply:
    number = int(text, 16)
    if number >= len(REGISTERS):
        return "E01"
    register = REGISTERS[number]
    return stub.on_current(lambda view: encode(register, _value(view, register.name)))


def _write_register(stub: GdbStub, text: str) -> Reply:
    number_text, _, value_text = text.partition("=")
    number = int(number_text, 16)
    if number >= len(REGISTERS):
        return "E01"
    register = REGISTERS[number]
    value = decode(register, value_text)

    def write(view: RegisterView) -> str:
        view.write(register.name, value)
        return "OK"

    return stub.on_current(write)


def _read_memory(stub: GdbStub, text: str) -> Reply:
    address_text, _, length_text = text.partition(",")
    address, length = int(address_text, 16), min(int(length_text, 16), 0x8000)
    physical = stub.physical

    def read(view: RegisterView) -> str:
        data = read_memory(view, address, length, physical=physical)
        return data.hex() if data else "E14"

    return stub.on_current(read)


def _write_memory(stub: GdbStub, text: str) -> Reply:
    where, _, data_text = text.partition(":")
    address = int(where.split(",")[0], 16)
    data = bytes.fromhex(data_text)
    physical = stub.physical

    def write(view: RegisterView) -> str:
        return "OK" if write_memory(view, address, data, physical=physical) else "E14"

    reply = stub.on_current(write)
    if reply == "OK":
        for parking in stub.live():
            parking.debug.memory_written()
    return reply


def _insert(stub: GdbStub, text: str) -> Reply:
    return _breakpoint(stub, text, insert=True)


def _remove(stub: GdbStub, text: str) -> Reply:
    return _breakpoint(stub, text, insert=False)


def _breakpoint(stub: GdbStub, text: str, *, insert: bool) -> str:
    """``Z``/``z``: a breakpoint (0 software, 1 hardware) or watchpoint, on every vCPU."""
    kind_text, address_text, length_text = text.split(";")[0].split(",")[:3]
    kind, address, length = int(kind_text), int(address_text, 16), int(length_text, 16)
    if kind not in (0, 1) and kind not in _WATCH_KINDS:
        return ""

    def change(debug: Any) -> None:
        if kind in (0, 1) and insert:
            debug.set_breakpoint(address, hardware=kind == 1)
        elif kind in (0, 1):
            debug.clear_breakpoint(address)
        elif insert:
            debug.set_watchpoint(_WATCH_KINDS[kind], address, length)
        else:
            debug.clear_watchpoint(_WATCH_KINDS[kind], address, length)

    for parking in stub.live():
        parking.call(lambda _, p=parking: change(p.debug), CALL_TIMEOUT)  # type: ignore[misc]
    return "OK"


def _continue(stub: GdbStub, _: str) -> Reply:
    stub.resume({None: "c"})
    return None


def _step(stub: GdbStub, _: str) -> Reply:
    stub.resume({stub.current: "s"})
    return None


def _detach(stub: GdbStub, _: str) -> Reply:
    return DETACH


def _kill(stub: GdbStub, _: str) -> Reply:
    stub.kill()
    return DETACH


_COMMANDS: dict[str, Callable[[GdbStub, str], Reply]] = {
    "?": _stop_reason,
    "H": _thread,
    "T": _alive,
    "g": _read_registers,
    "G": _write_registers,
    "p": _read_register,
    "P": _write_register,
    "m": _read_memory,
    "M": _write_memory,
    "Z": _insert,
    "z": _remove,
    "c": _continue,
    "C": _continue,  # (with a signal gdb would deliver: there are none to deliver)
    "s": _step,
    "S": _step,
    "D": _detach,
    "k": _kill,
}
