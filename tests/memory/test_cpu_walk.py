"""Cross-check against a CPU: unicorn's x86 MMU walks the builder's tables like translate().

unicorn (QEMU's softmmu) loads the tables through CR3 straight from guest RAM, checks R/W
with CR0.WP and XD with EFER.NXE, and reports #PF with CR2. Every access it performs must
succeed or fault exactly when translate() says so, and reach the same guest-physical byte.
"""

from __future__ import annotations

import random
from array import array
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyflank.memory import (
    PAGE_SIZE_1G,
    PAGE_SIZE_2M,
    PAGE_SIZE_4K,
    GuestPhysicalMemory,
    PageFault,
    PageTableBuilder,
    translate,
)

unicorn = pytest.importorskip("unicorn")
x86 = pytest.importorskip("unicorn.x86_const")

RAM = 0x40_0000
TABLES = (0x1000, 0x8_0000)
CODE_GPA = 0x8_0000
DATA = 0x10_0000  # [DATA, RAM) may be written by probes; below it are tables and code
CODE_GVA = 0xFFFF_FFFF_FFFF_F000  # indices 511 everywhere: random requests never reach it
READ, WRITE = CODE_GVA, CODE_GVA + 0x10
IA32_EFER = 0xC000_0080
EFER_LME_LMA_NXE = (1 << 8) | (1 << 10) | (1 << 11)
CR0_PE_PG, CR0_WP, CR4_PAE = 1 | (1 << 31), 1 << 16, 1 << 5
PF = 14
# Every quadword of DATA holds its own address, so a read tells which byte it reached.
TAGS = array("Q", range(DATA, RAM, 8)).tobytes()


class Cpu:
    """One long-mode vCPU over ``mem``; each run starts from the same saved context."""

    def __init__(self, mem: GuestPhysicalMemory, cr3: int, wp: bool) -> None:
        uc: Any = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        uc.mem_map_ptr(0, mem.size, unicorn.UC_PROT_ALL, mem.address)
        uc.reg_write(x86.UC_X86_REG_CR3, cr3)
        uc.reg_write(x86.UC_X86_REG_CR4, CR4_PAE)
        uc.msr_write(IA32_EFER, EFER_LME_LMA_NXE)
        uc.reg_write(x86.UC_X86_REG_CR0, CR0_PE_PG | (CR0_WP if wp else 0))
        uc.hook_add(unicorn.UC_HOOK_INTR, self._on_interrupt)
        self._uc = uc
        self._context = uc.context_save()
        self.faults: list[tuple[int, int]] = []

    def _on_interrupt(self, uc: Any, vector: int, _user: object) -> None:
        self.faults.append((vector, uc.reg_read(x86.UC_X86_REG_CR2)))
        uc.emu_stop()

    def step(self, rip: int, rbx: int = 0, rcx: int = 0) -> tuple[list[tuple[int, int]], int]:
        """Execute one instruction; (exceptions seen, rax)."""
        self.faults = []
        self._uc.context_restore(self._context)
        self._uc.reg_write(x86.UC_X86_REG_RBX, rbx)
        self._uc.reg_write(x86.UC_X86_REG_RCX, rcx)
        # `until` must differ from rip (rip == until runs nothing); count bounds the run.
        self._uc.emu_start(rip, (1 << 64) - 1, count=1)
        return self.faults, self._uc.reg_read(x86.UC_X86_REG_RAX)


def machine() -> tuple[GuestPhysicalMemory, PageTableBuilder]:
    mem = GuestPhysicalMemory(RAM)
    pt = PageTableBuilder(mem, *TABLES)
    pt.map(CODE_GVA, CODE_GPA, PAGE_SIZE_4K, writable=False)
    mem.write(CODE_GPA, bytes.fromhex("488b03f4"))  # mov rax, [rbx]; hlt
    mem.write(CODE_GPA + 0x10, bytes.fromhex("48890bf4"))  # mov [rbx], rcx; hlt
    return mem, pt


def test_smoke_scattered_1g_split_and_read_only() -> None:
    mem, pt = machine()
    pt.map(PAGE_SIZE_1G, 0, PAGE_SIZE_1G, page_size=PAGE_SIZE_1G, executable=False)
    pt.unmap(PAGE_SIZE_1G + 0x30_0000, PAGE_SIZE_4K)
    pt.protect(PAGE_SIZE_1G + 0x31_0000, PAGE_SIZE_4K)
    mem.write_u64(0x30_1000, 0xFEED)
    cpu = Cpu(mem, pt.cr3, wp=True)
    assert cpu.step(READ, PAGE_SIZE_1G + 0x30_1000) == ([], 0xFEED)
    assert cpu.step(READ, PAGE_SIZE_1G + 0x30_0008)[0] == [(PF, PAGE_SIZE_1G + 0x30_0008)]
    assert cpu.step(WRITE, PAGE_SIZE_1G + 0x31_0000, 1)[0] == [(PF, PAGE_SIZE_1G + 0x31_0000)]
    assert cpu.step(PAGE_SIZE_1G + 0x20_0000)[0] == [(PF, PAGE_SIZE_1G + 0x20_0000)]  # XD
    assert Cpu(mem, pt.cr3, wp=False).step(WRITE, PAGE_SIZE_1G + 0x31_0000, 7)[0] == []
    assert mem.read_u64(0x31_0000) == 7


# -- property: for random tables, the CPU and translate() agree on every probe --------------

INDICES = ([0, 1, 256], [0, 511], [0, 1, 511], [0, 1, 511])


def _gva(idx: list[int]) -> int:
    va = (idx[0] << 39) | (idx[1] << 30) | (idx[2] << 21) | (idx[3] << 12)
    return va | (0xFFFF << 48) if va & (1 << 47) else va


@st.composite
def operations(draw: st.DrawFn) -> tuple[str, int, int, int, bool, bool]:
    kind = draw(st.sampled_from(["map", "map", "map", "unmap", "protect"]))
    page_size = draw(st.sampled_from([PAGE_SIZE_4K, PAGE_SIZE_2M, PAGE_SIZE_1G]))
    if kind != "map":
        page_size = PAGE_SIZE_4K
    gva = _gva([draw(st.sampled_from(c)) for c in INDICES]) & ~(page_size - 1)
    # Every frame lands in RAM: 1 GiB at 0, 2 MiB at 2 MiB, 4 KiB anywhere in DATA.
    gpa = {PAGE_SIZE_1G: 0, PAGE_SIZE_2M: PAGE_SIZE_2M}.get(
        page_size, draw(st.integers(DATA // PAGE_SIZE_4K, RAM // PAGE_SIZE_4K - 2)) * PAGE_SIZE_4K
    )
    return kind, gva, gpa, page_size, draw(st.booleans()), draw(st.booleans())


def _apply(pt: PageTableBuilder, op: tuple[str, int, int, int, bool, bool]) -> None:
    kind, gva, gpa, page_size, writable, executable = op
    try:
        if kind == "map":
            pt.map(gva, gpa, page_size, page_size=page_size, writable=writable,
                   executable=executable)  # fmt: skip
        elif kind == "unmap":
            pt.unmap(gva, 2 * PAGE_SIZE_4K)
        else:
            pt.protect(gva, PAGE_SIZE_4K, writable, executable=executable)
    except ValueError:
        pass  # conflicts and holes are the builder's business; only agreement matters here


def _expect(mem: GuestPhysicalMemory, cr3: int, gva: int, **access: bool) -> int | None:
    """gpa of a data byte the access may touch, None if translate() faults, -1 to skip."""
    try:
        gpa = translate(mem, cr3, gva, **access).gpa
    except PageFault:
        return None
    return gpa if gpa >= DATA and gpa + 8 <= RAM else -1


@settings(max_examples=25, deadline=None)
@given(st.lists(operations(), min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_cpu_agrees_with_translate(
    ops: list[tuple[str, int, int, int, bool, bool]], rnd: random.Random
) -> None:
    mem, pt = machine()
    for op in ops:
        _apply(pt, op)
    mem.write(DATA, TAGS)
    cpus = {wp: Cpu(mem, pt.cr3, wp) for wp in (True, False)}
    probes = {op[1] + rnd.choice([0, 8, PAGE_SIZE_4K - 8, PAGE_SIZE_4K]) for op in ops}
    probes |= {op[1] + rnd.randrange(0, op[3], 8) for op in ops}
    for probe in sorted(probes):
        # Accesses translate() sends outside DATA are not run: the CPU would hit unmapped
        # host memory or could scribble over the tables under test.
        gpa = _expect(mem, pt.cr3, probe)
        if gpa is None:
            assert cpus[True].step(READ, probe)[0] == [(PF, probe)]
        elif gpa >= 0:
            assert cpus[True].step(READ, probe) == ([], mem.read_u64(gpa))
        for wp, cpu in cpus.items():
            gpa = _expect(mem, pt.cr3, probe, write=True, wp=wp)
            if gpa is None:
                before = mem.read(DATA, RAM - DATA)
                assert cpu.step(WRITE, probe, 1)[0] == [(PF, probe)]
                assert mem.read(DATA, RAM - DATA) == before
            elif gpa >= 0:
                assert cpu.step(WRITE, probe, 0x5A5A_0000 | wp)[0] == []
                assert mem.read_u64(gpa) == 0x5A5A_0000 | wp
        gpa = _expect(mem, pt.cr3, probe, execute=True)
        if gpa is None:
            assert cpus[True].step(probe)[0] == [(PF, probe)]
        elif gpa >= 0:
            # hlt: harmless, and it ends QEMU's translation block, which otherwise decodes
            # ahead and may fault on the next page where one real instruction would not.
            mem.write_u8(gpa, 0xF4)
            assert cpus[True].step(probe)[0] == []
