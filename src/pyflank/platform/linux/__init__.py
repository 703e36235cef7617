"""Linux guests: the x86 boot protocol (bzImage) and the PVH entry (ELF vmlinux), the
command line the platform needs, and the kernel, busybox and initramfs assets.

Submodules are imported directly (``.setup_header``, ``.boot_params``, ``.bzimage``,
``.pvh``, ``.entry``, ``.cmdline``, ``.initramfs``, ``.assets``).
"""
