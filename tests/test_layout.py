"""The package's shape: no import cycle between prorl's modules, counting imports inside functions
too (a lazy import must not be what keeps a cycle out of sight), and no module past ~700 lines."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "prorl"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PKG.parent / rel).with_suffix(".py").exists() or (PKG.parent / rel / "__init__.py").exists()


def _imports(path: Path) -> set[str]:
    """prorl modules that `path` imports anywhere in its body (relative or absolute)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("prorl"):
                subs = {f"{target}.{a.name}" for a in node.names}  # `from . import algos` imports a module
                out.update(subs)
                if not any(_is_module(t) for t in subs):
                    out.add(target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("prorl"))
    return out


def test_no_import_cycles_even_through_function_level_imports():
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {m: {t for t in _imports(p) if t in modules and t != m} for m, p in modules.items()}
    state, cycle = {}, []

    def visit(m, path):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycle.extend(path[path.index(t):] + [t] if t in path else [m, t])
                return True
            if t not in state and visit(t, path + [t]):
                return True
        state[m] = "done"
        return False

    for m in sorted(graph):
        if m not in state and visit(m, [m]):
            break
    assert not cycle, " -> ".join(cycle)


def test_no_module_is_a_framework():
    long = {p.name: n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 720}
    assert not long, long
