"""abi/ is the bottom of the stack: it imports only the standard library."""

import ast
from pathlib import Path

import pyflank.abi

ABI = Path(pyflank.abi.__file__).parent


def test_abi_imports_only_itself_and_the_standard_library() -> None:
    for path in ABI.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith("pyflank") or name.startswith("pyflank.abi"), (
                    f"{path.name} imports {name}"
                )


def test_the_exit_handler_does_not_import_platform() -> None:
    import pyflank.exit_handler.exit_handler_intel_x64 as handler

    source = Path(handler.__file__).read_text()
    assert "pyflank.platform" not in source and "pyflank.vmcall" not in source
