"""The package's layers, checked on its source: every import points down.

    core (device, normalisation, boxes, distributed)  <-  ops (loss, crop, label codec)
        <-  data, models  <-  labels  <-  train  <-  sweep  <-  commands (`hald ...`)

hald_ext.reference is the plain-PyTorch oracle of the tests and benchmarks: no other module imports
it. Imports inside functions are kept for optional dependencies only (the extras: torchvision, timm,
PyYAML, tqdm, matplotlib, DALI), so a module's dependencies are read at its top. The module-level
import graph has no cycle."""
from __future__ import annotations

import ast
import pathlib
import sys

import pytest

import hald_ext
from hald_ext.cli import COMMANDS

ROOT = pathlib.Path(hald_ext.__file__).parent

# (rank, module prefixes); the longest matching prefix wins, and a command module (one `hald`
# sub-command's entry point, wherever it lives) is the top layer.
LAYERS = [
    (0, "core", ("hald_ext._C", "hald_ext._ext", "hald_ext.core")),
    (1, "ops", ("hald_ext", "hald_ext.ops", "hald_ext.loss", "hald_ext.functional", "hald_ext.timm")),
    (1, "reference", ("hald_ext.reference",)),
    (2, "data", ("hald_ext.data",)),
    (2, "models", ("hald_ext.models",)),
    (3, "labels", ("hald_ext.labels",)),
    (4, "train", ("hald_ext.train",)),
    (5, "sweep", ("hald_ext.sweep",)),
    (6, "commands", ("hald_ext.cli", "hald_ext.commands") + tuple(sorted({module for module, _ in COMMANDS.values()}))),
]
# Imported inside functions on purpose: optional extras, and numpy's private module names that
# differ between numpy 1 and 2 (read by the pickle allow-list of the label importers).
OPTIONAL = ("torchvision", "timm", "yaml", "tqdm", "matplotlib", "nvidia", "numpy._core", "numpy.core")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
COMPILED = {"hald_ext._C"}  # the extension library, loaded by hald_ext._ext


def layer(module: str) -> tuple:
    best = None
    for rank, name, prefixes in LAYERS:
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0] or (len(prefix) == best[0] and rank > best[1][0]):
                    best = (len(prefix), (rank, name))
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[1]


def imports(module: str) -> list:
    """(target module, line, inside a function) for every import of `module`; `from pkg import name`
    resolves to pkg.name when that is a module."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + ([base] if base else []))
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    out.append((sub if sub in MODULES or sub in COMPILED else base, child.lineno, in_function))
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return out


def is_typing_only(module: str, line: int) -> bool:
    """An import under `if TYPE_CHECKING:` (annotations only, never executed)."""
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            if any(getattr(n, "lineno", -1) == line for n in ast.walk(node)):
                return True
    return False


def test_every_module_has_a_layer():
    for module in MODULES:
        layer(module)


def test_imports_point_down():
    up = []
    for module in MODULES:
        rank, name = layer(module)
        for target, line, _ in imports(module):
            if not target.startswith("hald_ext") or target == module:
                continue
            t_rank, t_name = layer(target)
            if t_rank > rank:
                up.append(f"{MODULES[module].relative_to(ROOT.parent)}:{line}: {name} imports {t_name} ({target})")
    assert not up, "imports that run up the layers:\n" + "\n".join(up)


def test_only_tests_and_benchmarks_use_the_reference():
    used = [f"{MODULES[m].relative_to(ROOT.parent)}:{line} imports {t}"
            for m in MODULES if not m.startswith("hald_ext.reference")
            for t, line, _ in imports(m) if t.startswith("hald_ext.reference")]
    assert not used, "production code must not import the test oracle:\n" + "\n".join(used)


def test_imports_inside_functions_are_optional_dependencies():
    inner = [f"{MODULES[m].relative_to(ROOT.parent)}:{line}: {t}"
             for m in MODULES for t, line, in_function in imports(m)
             if in_function and not any(t == o or t.startswith(o + ".") for o in OPTIONAL)]
    assert not inner, ("imports inside functions of required modules (move them to the module's top; only "
                       "optional extras are imported late):\n" + "\n".join(inner))


def test_no_import_cycles():
    graph = {m: sorted({t for t, line, inner in imports(m)
                        if t in MODULES and t != m and not inner and not is_typing_only(m, line)
                        # a module importing its own package's __init__ only reads a sibling through it
                        and not (m.startswith(t + ".") and MODULES[t].name == "__init__.py")})
             for m in MODULES}
    state, stack, cycles = {}, [], []

    def dfs(m):
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                dfs(t)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            dfs(m)
    assert not cycles, "module-level import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("bad", ["up", "reference", "inner"])
def test_the_checks_catch_a_violation(bad, monkeypatch, tmp_path):
    """Each check fails on a module written to break it (so a passing run means something)."""
    text = {"up": "from hald_ext.sweep import plan\n",
            "reference": "from hald_ext.reference import crop\n",
            "inner": "def f():\n    import json\n    return json\n"}[bad]
    fake = ROOT / "core" / "zz_layering_probe.py"
    monkeypatch.setitem(MODULES, "hald_ext.core.zz_layering_probe", fake)
    monkeypatch.setattr(pathlib.Path, "read_text",
                        lambda self, *a, _orig=pathlib.Path.read_text, **k: text if self == fake else _orig(self, *a, **k))
    check = {"up": test_imports_point_down, "reference": test_only_tests_and_benchmarks_use_the_reference,
             "inner": test_imports_inside_functions_are_optional_dependencies}[bad]
    with pytest.raises(AssertionError, match="zz_layering_probe"):
        check()
    assert sys.modules.get("hald_ext.core.zz_layering_probe") is None
