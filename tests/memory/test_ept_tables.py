"""EPT tables in SDM format: the builder, the walk, misconfigurations, and the reader that
turns a tree into runs (kept per table page: reading again gives what a fresh read does)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyflank.memory import GuestPhysicalMemory
from pyflank.memory.ept import (
    EXECUTE,
    READ,
    RWX,
    WRITE,
    WRITE_BACK,
    EptReader,
    EptTables,
    misconfiguration,
    walk,
)
from pyflank.memory.host import VMM_BASE, HostMemory

MIB = 1 << 20
LIMIT = 1 << 39


def _tables(size: int = 16 * MIB) -> EptTables:
    tables = EptTables(HostMemory(GuestPhysicalMemory(size)))
    tables.identity_map(size)
    return tables


def test_the_eptp_and_the_tables_are_in_vmm_memory() -> None:
    tables = _tables()
    assert tables.eptp == tables.pml4 | 3 << 3 | WRITE_BACK
    assert tables.pml4 >= VMM_BASE and tables.host.is_vmm(tables.pml4)


def test_identity_mapping_uses_large_pages_and_protect_splits_one() -> None:
    tables = _tables()
    leaf = walk(tables.host, tables.eptp, 0x345678)
    assert (leaf.size, leaf.hpa, leaf.permissions, leaf.level) == (2 * MIB, 0x200000, RWX, 2)
    tables.protect(0x345000, 0x1000, READ)
    leaf = walk(tables.host, tables.eptp, 0x345678)
    assert (leaf.size, leaf.base, leaf.permissions, leaf.level) == (0x1000, 0x345000, READ, 1)
    assert walk(tables.host, tables.eptp, 0x346000).permissions == RWX  # the rest as it was
    assert walk(tables.host, tables.eptp, 16 * MIB).permissions == 0  # beyond RAM: absent


@pytest.mark.parametrize(
    ("entry", "level", "why"),
    [
        (0b010, 1, "write without read"),
        (0b110, 1, "write without read"),
        (0b100, 1, "execute-only"),
        (0b111 | 2 << 3, 1, "memory type 2"),
        (0b111 | 7 << 3, 2 | 0x80, "memory type 7"),
        (0b111 | 1 << 3, 4, "reserved bits"),
        (0b111 | 0x80 | 6 << 3 | 1 << 12, 2, "reserved bits"),  # a 2 MiB page, bit 12
        (0b111 | 1 << 40, 1, "physical-address width"),
    ],
)
def test_misconfigurations(entry: int, level: int, why: str) -> None:
    if level & 0x80:
        level, entry = level & 0x7F, entry | 0x80
    found = misconfiguration(entry, level, physical_width=39, execute_only=False)
    assert found is not None and why in found


def test_execute_only_is_fine_where_supported() -> None:
    assert misconfiguration(0b100 | 6 << 3, 1, physical_width=39, execute_only=True) is None


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=8 * 512 - 1),  # a page of the first 32 MiB
            st.integers(min_value=1, max_value=600),  # pages
            st.sampled_from([0, READ, READ | WRITE, READ | EXECUTE, RWX, EXECUTE]),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_the_reader_agrees_with_a_fresh_reader_and_with_the_walk(
    changes: list[tuple[int, int, int]],
) -> None:
    tables = _tables(32 * MIB)
    reader = EptReader(tables.host)
    reader.runs(tables.eptp, LIMIT)
    for page, pages, permissions in changes:
        tables.protect(page << 12, pages << 12, permissions)
        runs = reader.runs(tables.eptp, LIMIT)
        assert runs == EptReader(tables.host).runs(tables.eptp, LIMIT)
    for run in runs:
        for gpa in {run.start, run.end - 0x1000}:
            if gpa < 40 * MIB:
                assert walk(tables.host, tables.eptp, gpa).permissions == run.permissions
