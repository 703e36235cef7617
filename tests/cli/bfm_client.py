"""A bfm client process for the concurrency test: N vmcalls, each reply checked.

python bfm_client.py TAG COUNT VCPUS
"""

import sys

from pyflank.cli.bfm import run
from pyflank.cli.runtime import RuntimeDir


def main() -> int:
    tag, count, vcpus = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rt = RuntimeDir.default()
    for i in range(count):
        text = f"{tag}-{i}"
        cpuid = i % vcpus
        reply = run(["vmcall", "--cpuid", str(cpuid), "string", "unformatted", text], rt)
        if reply != f"received from vmm: {text}":
            print(f"mismatch: sent {text!r}, got {reply!r}")
            return 1
    print(f"{tag}: {count} ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
