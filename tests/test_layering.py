"""The product's shape: registry/ and store/ never import engine/, nor each other; no import cycles; no imports of
the project's own modules hidden from a reader (importlib, __import__); every import names the installed
``tether`` namespace, never a bare ``engine``/``registry``/``store``."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "registry", "store")
FORBIDDEN = {"registry": {"engine", "store"}, "store": {"engine", "registry"}}


def module_name(path: Path) -> str:
    """``engine/copy/plan.py`` -> ``tether.engine.copy.plan`` (engine/api/ is the ``tether`` package itself)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[:2] == ["engine", "api"]:
        return ".".join(["tether", *parts[2:]])
    return ".".join(["tether", *parts])


def product_files() -> dict[str, Path]:
    return {module_name(f): f for pkg in PACKAGES for f in sorted((ROOT / pkg).rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks (annotations only: no run-time edge)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(sub) for stmt in node.body for sub in ast.walk(stmt))
    return inside


def imports_of(path: Path, module: str, *, runtime_only: bool = False) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import statement in ``path``, relative ones resolved;
    ``runtime_only`` leaves out those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skip = _type_checking_nodes(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([base] if base else [])])
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def hidden_imports(path: Path) -> Iterator[tuple[int, str]]:
    """importlib.import_module / __import__ calls with a literal name of the project's."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = ast.unparse(node.func)
            if fn.endswith("import_module") or fn == "__import__":
                arg = node.args[0] if node.args else None
                name = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else "?"
                if name == "?" or name.split(".")[0] in ("tether", *PACKAGES):
                    yield node.lineno, name


def subpackage(name: str) -> str | None:
    """``tether.store.tar.apply`` -> ``store``; None for modules outside the product."""
    parts = name.split(".")
    return parts[1] if parts[0] == "tether" and len(parts) > 1 and parts[1] in PACKAGES else None


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    modules = product_files()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for _, target in imports_of(path, mod, runtime_only=True):
            found = resolve(target, modules) if target.startswith("tether") else None
            # importing tether.engine.copy from tether.engine.copy.plan is the package, not a cycle
            if found and found != mod and not mod.startswith(found + "."):
                graph[mod].add(found)
    return graph


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_forbidden_siblings(package: str) -> None:
    offenders = []
    for mod, path in product_files().items():
        if subpackage(mod) != package:
            continue
        for line, target in imports_of(path, mod):
            if subpackage(target) in FORBIDDEN[package] or target == "tether":
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not offenders, "\n".join(offenders)


#: Inside engine/: who may import whom. copy/ is the engine's core and knows nothing of the bound-image
#: lifecycle or the command line; bound/ builds on copy/; cli/ sits on top of everything.
ENGINE_LAYERS = {
    "tether.engine.copy": {"tether.engine.bound", "tether.engine.cli"},
    "tether.engine.bound": {"tether.engine.cli"},
}


def test_engine_subpackages_keep_their_layers() -> None:
    offenders = []
    for mod, path in product_files().items():
        forbidden = next((bad for layer, bad in ENGINE_LAYERS.items() if mod == layer or mod.startswith(layer + ".")),
                         set())
        for line, target in imports_of(path, mod):
            if any(target == b or target.startswith(b + ".") for b in forbidden):
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not offenders, "\n".join(offenders)


def test_imports_name_the_tether_namespace() -> None:
    offenders = []
    for mod, path in product_files().items():
        for line, target in imports_of(path, mod):
            if target.split(".")[0] in PACKAGES:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {target} (write tether.{target})")
    assert not offenders, "\n".join(offenders)


def test_no_hidden_imports_of_the_project() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {name} at run time"
                 for path in [*product_files().values(), *sorted((ROOT / "tests").rglob("*.py"))]
                 for line, name in hidden_imports(path)]
    assert not offenders, "\n".join(offenders)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_checkers_see_what_they_look_for(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("import tether.engine.cli.main\nfrom tether.store import errors\nfrom . import x\n"
                      "import importlib\nimportlib.import_module('tether.engine.copy.pull')\n")
    found = {name for _, name in imports_of(sample, "tether.registry.m")}
    assert {"tether.engine.cli.main", "tether.store", "tether.store.errors", "tether.registry.x"} <= found
    assert [name for _, name in hidden_imports(sample)] == ["tether.engine.copy.pull"]
    assert find_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert module_name(ROOT / "engine" / "api" / "__init__.py") == "tether"


#: The only functions that import at call time, each for a start-up saving measured with ``python -X importtime``
#: (the figure is in the function's comment): a new one must be added here with its reason.
LAZY_IMPORTS = {
    ("engine/api/__init__.py", "__getattr__"): "import tether must not load the pull engine (~0.4 s)",
    ("engine/cli/main.py", "dispatch"): "each verb pays only for its own imports",
    ("engine/copy/progress.py", "make_progress"): "rich (~55 ms) only for a terminal display",
    ("engine/copy/sources/__init__.py", "open_image_source"): "layouts (store.oci, tarfile: ~7 ms) only for oci: names",
    ("engine/copy/verify.py", "enforce_policy"): "registries.d (YAML) and the signature fetcher (~13 ms) only for "
                                                 "policies that read signatures",
    ("engine/copy/progress.py", "__init__"): "rich (~55 ms) only for a terminal display",
    ("registry/trust/evaluate.py", "_evaluate_requirement"): "cryptography (50-70 ms) only for sigstore policies",
    ("store/containers_storage/export.py", "export_layer"): "tar-split only when a layer is exported (~4 ms)",
    ("store/containers_storage/export.py", "check"): "the tree check (tar reader, tar-split: ~14 ms) only for check",
    ("store/containers_storage/layers.py", "process_extractor"): "the worker pool only when a layer is staged",
    ("store/containers_storage/layers.py", "prewarm_extractors"): "the worker pool only when a layer is staged",
    ("store/tar/decompress.py", "__init__"): "zstandard only for zstd layers (~2 ms per extraction child)",
}


def test_imports_at_call_time_are_the_measured_few() -> None:
    found = set()
    for path in product_files().values():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
                    isinstance(sub, ast.Import | ast.ImportFrom) for sub in ast.walk(node)):
                found.add((str(path.relative_to(ROOT)), node.name))
    assert found <= set(LAZY_IMPORTS), sorted(found - set(LAZY_IMPORTS))
