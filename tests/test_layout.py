"""The code's shape, read from its source with `ast`: no import loops, each part imports only the parts its folder's
docstring allows ("May import: ..."), imports of cpkgs' own modules at the top of each module, no function over 60
lines.

Imports are counted wherever they stand (at the top, inside a function, under `if TYPE_CHECKING:`): an import
inside a function still makes a loop, only a later one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "cpkgs_admin"
MAX_FUNCTION_LINES = 60
# Imports of cpkgs' own modules inside a function, each for a start-up cost measured with `python -X importtime`
# (its comment says which): (importing module, imported module).
LAZY_INTERNAL = {
    ("cpkgs_admin.pipeline.build", "cpkgs_admin.pipeline.assemble"),
    # The CLI's modules load inside the entry point's try, so a Ctrl-C while they import is one line.
    ("cpkgs_admin.__main__", "cpkgs_admin.cli"),
    # the pip machinery (uv's driver, installer, the resolver), for envs with a pip part only
    ("cpkgs_admin.pipeline.spec", "cpkgs_admin.pipeline.pypi.part"),
    ("cpkgs_admin.pipeline.build", "cpkgs_admin.pipeline.pip"),
    ("cpkgs_admin.pipeline.assemble", "cpkgs_admin.pipeline.pip"),
    ("cpkgs_admin.lifecycle.pack", "cpkgs_admin.pipeline.pip"),
}
# Modules outside the parts' folders: the package itself (its version), the error tree, `python -m cpkgs_admin`.
TOP_MODULES = {"cpkgs_admin": set(), "cpkgs_admin.errors": set(), "cpkgs_admin.__main__": {"cli"}}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported cpkgs module, line, inside a function or class) for every import in the module NAME."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nested = {id(n) for top in tree.body if not isinstance(top, (ast.Import, ast.ImportFrom, ast.If))
              for n in ast.walk(top)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` the module mod
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        out += [(t, node.lineno, id(node) in nested) for t in dict.fromkeys(targets) if t in MODULES and t != name]
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _part(module: str) -> str:
    if module in TOP_MODULES:
        return module.removeprefix("cpkgs_admin.")
    return module.split(".")[1]


def _allowed() -> dict[str, set[str]]:
    """Each part's folder docstring: "May import: errors, site." (or "every part")."""
    allowed = {_part(m): set(parts) for m, parts in TOP_MODULES.items()}
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        m = re.search(r"^May import: (.*?)\.?$", doc, re.M)
        assert m is not None, f"{init.relative_to(REPO)}: its docstring says what the part may import (May import: ...)"
        words = {w.strip() for w in m.group(1).split(",")}
        allowed[init.parent.name] = {"*"} if words == {"every part"} else words
    return allowed


def test_no_import_loops() -> None:
    loops: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(mod: str) -> None:
        state[mod] = 1
        path.append(mod)
        for dep, _line, _nested in GRAPH[mod]:
            if state.get(dep) == 1:
                loops.append([*path[path.index(dep):], dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[mod] = 2

    for mod in sorted(GRAPH):
        if mod not in state:
            visit(mod)
    assert loops == [], "import loops:\n" + "\n".join(" -> ".join(loop) for loop in loops)


def test_parts_import_only_what_their_docstring_allows() -> None:
    allowed = _allowed()
    assert set(allowed) >= {_part(m) for m in MODULES}, "every part states what it may import"
    wrong = []
    for mod, deps in GRAPH.items():
        mine = _part(mod)
        for dep, line, _nested in deps:
            theirs = _part(dep)
            if theirs not in (mine, "cpkgs_admin", "errors") and "*" not in allowed[mine] and theirs not in allowed[mine]:
                wrong.append(f"{MODULES[mod].relative_to(REPO)}:{line}: {mine} imports {dep} ({theirs})")
    assert wrong == [], "\n".join(wrong)


def test_own_modules_are_imported_at_the_top() -> None:
    lazy = {(mod, dep) for mod, deps in GRAPH.items() for dep, _line, nested in deps if nested}
    assert lazy == LAZY_INTERNAL


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_over_60_lines(path: Path) -> None:
    long = [f"{node.name} (line {node.lineno}): {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno is not None and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []
