"""Where a Linux boot puts its structures in low guest memory (all below 1 MiB, inside
the first usable e820 region; the kernel replaces or frees them once it runs)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinuxLayout:
    gdt: int = 0x1000  # null, null, boot CS 0x10, boot DS 0x18, TSS 0x20
    tss: int = 0x1100
    start_info: int = 0x6000  # PVH: hvm_start_info, its module list and memory map
    boot_params: int = 0x7000  # the zero page
    stack_top: int = 0x8FF0
    page_tables: int = 0x9000
    page_tables_end: int = 0x10000
    cmdline: int = 0x20000
    cmdline_limit: int = 0x10000  # bytes the layout leaves for the command line
