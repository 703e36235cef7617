"""The package's layers (ARCHITECTURE.md, "Layers"), read from the source: nothing points up,
no import cycles, the handler knows only the architecture, memory and the ABI."""

from __future__ import annotations

import ast
from pathlib import Path

import pyflank

ROOT = Path(pyflank.__file__).parent
# Top to bottom; a module may import its own layer and the layers below it.
LAYERS = (
    ("cli", "demo", "linux_demo", "testing", "observe", "debugger"),
    ("vmm",),
    ("gdbstub", "snapshot"),
    ("debug",),
    ("backends",),
    ("processor",),
    ("platform",),
    ("exit_handler", "introspect"),
    ("abi", "guests"),
    ("intel_x64",),
    ("memory",),
    ("native",),  # the optional accelerator: handed everything it uses, imports nothing
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imports(path: Path) -> set[str]:
    """Every pyflank module ``path`` imports at run time (lazily too; not for type checking)."""
    found: set[str] = set()
    package = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            # ``from package import module`` imports the module; ``from module import
            # name`` the module the name is in.
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {name for name in found if name == "pyflank" or name.startswith("pyflank.")}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """The nodes of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    nodes: list[ast.AST] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        nodes.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return nodes


def graph() -> dict[str, set[str]]:
    """Module -> the pyflank modules (that exist) it imports."""
    return {
        name: {target for target in imports(path) if target in MODULES and target != name}
        for name, path in MODULES.items()
    }


def top(name: str) -> str:
    return name.split(".")[1] if "." in name else ""


def test_every_part_of_the_package_has_a_layer() -> None:
    assert {top(name) for name in MODULES if top(name)} - set(RANK) == set()


def test_no_import_cycles() -> None:
    edges = graph()
    cycles = []
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == []


def test_nothing_points_up() -> None:
    upward = [
        f"{source} imports {target}"
        for source, targets in graph().items()
        for target in targets
        if top(source) and (not top(target) or RANK[top(target)] < RANK[top(source)])
    ]
    assert upward == []


def test_the_handler_knows_only_the_architecture_memory_and_the_abi() -> None:
    allowed = {"exit_handler", "intel_x64", "memory", "abi"}
    found = {
        f"{source} imports {target}"
        for source, targets in graph().items()
        if top(source) == "exit_handler"
        for target in targets
        if top(target) not in allowed
    }
    assert found == set()


def test_no_backend_imports_another() -> None:
    engines = {
        p.name for p in (ROOT / "backends").iterdir() if p.is_dir() and p.name != "__pycache__"
    }
    found = {
        f"{source} imports {target}"
        for source, targets in graph().items()
        for target in targets
        if (engine := source.split(".")[2:3])
        and engine[0] in engines
        and target.startswith("pyflank.backends.")
        and target.split(".")[2] in engines
        and target.split(".")[2] != engine[0]
    }
    assert found == set()
