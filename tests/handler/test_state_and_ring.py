"""StateSave and the debug ring."""

import threading

import pytest

from pyflank.exit_handler import DebugRing, StateSave


def test_state_save_layout() -> None:
    state = StateSave(vcpuid=3)
    names = list(state.as_dict())
    assert names[:4] == ["rax", "rbx", "rcx", "rdx"]
    assert {"r08", "r15", "rip", "rsp", "vcpuid"} <= set(names)
    state.update({"rax": -1})
    assert state.rax == 0xFFFF_FFFF_FFFF_FFFF
    with pytest.raises(AttributeError):
        state.update({"eax": 1})


def test_ring_drops_oldest_lines_first() -> None:
    ring = DebugRing(capacity=20)
    ring.write("first line\nsecond\n")
    ring.write("third line")
    text = ring.read()
    assert text == "second\nthird line\n"
    assert len(ring) <= 20 and ring.dropped == 1


def test_ring_truncates_a_huge_line() -> None:
    ring = DebugRing(capacity=8)
    ring.write("x" * 100)
    assert len(ring.read()) == 8


def test_concurrent_writers_never_interleave_mid_line() -> None:
    ring = DebugRing(capacity=1 << 20)

    def writer(tag: str) -> None:
        for i in range(300):
            ring.write(f"{tag}-{i}-" + tag * 20 + "\n" + f"{tag}-{i}-end")

    threads = [threading.Thread(target=writer, args=(t,)) for t in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for line in ring.read().splitlines():
        tag = line[0]
        assert line.endswith("-end") or line.endswith(tag * 20), line
    assert len(ring.read().splitlines()) == 4 * 300 * 2
