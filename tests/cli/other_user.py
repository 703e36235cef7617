"""A second local user for the attack tests: uid 65534, reached with setuid in a child.

The child is started as root and drops to the other user before running ``code``; it
cannot exec Python again as that user (the interpreter lives under /root), so the
modules ``code`` needs are imported before the switch.
"""

import os
import subprocess
import sys

import pytest

OTHER_UID = OTHER_GID = 65534
needs_root = pytest.mark.skipif(
    os.getuid() != 0, reason="needs root to act as a second user (setuid to uid 65534)"
)
_PRELUDE = (
    "import base64, json, os, socket, struct, sys, time\n"
    "{imports}"
    f"os.setgroups([]); os.setgid({OTHER_GID}); os.setuid({OTHER_UID})\n"
)


def as_other_user(
    code: str, *args: str, imports: str = "", env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Run Python ``code`` as the other user; ``imports`` run first, as root."""
    script = _PRELUDE.format(imports=imports + "\n" if imports else "") + code
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def run_as_other_user(code: str, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    child = as_other_user(code, *args, **kwargs)  # type: ignore[arg-type]
    out, err = child.communicate(timeout=60)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)
