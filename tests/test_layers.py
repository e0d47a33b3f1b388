"""Imports point down the layer stack (README, Architecture): a lower layer never imports a higher one."""

import ast
from pathlib import Path

import sdfm

LAYERS = {
    "protocols": 0,
    "checks": 0,
    "extras": 0,
    "faults": 0,
    "transport": 0,
    "couplings": 1,
    "flow": 1,
    "samplers": 1,
    "models": 1,
    "data": 1,
    "metrics": 1,
    "artifacts": 1,
    "parallel": 1,
    "progress": 1,
    "train": 2,
    "evaluation": 2,
    "cli": 3,
}


def _layer(module: str):
    parts = module.split(".")
    if parts[0] != "sdfm" or len(parts) < 2:
        return None
    return LAYERS.get(parts[1])


def test_lower_layers_do_not_import_higher_ones():
    root = Path(sdfm.__file__).parent
    problems = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root.parent).with_suffix("")
        module = ".".join(rel.parts)
        own = _layer(module if not module.endswith("__init__") else module[: -len(".__init__")])
        if own is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                other = _layer(name)
                if other is not None and other > own:
                    problems.append(f"{module} (L{own}) imports {name} (L{other})")
    assert not problems, problems


def test_transport_has_no_nn_files_or_distributed():
    root = Path(sdfm.__file__).parent / "transport"
    for path in root.rglob("*.py"):
        text = path.read_text()
        for banned in ("torch.nn", "torch.distributed", "open(", "safetensors"):
            assert banned not in text, f"{path.name} uses {banned}"


def _imports() -> dict[str, set[tuple[str, tuple[str, ...]]]]:
    """module -> {(imported module, imported names)} for every sdfm import, function-level ones too."""
    root = Path(sdfm.__file__).parent
    out = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {(a.name, ()) for a in node.names if a.name.startswith("sdfm")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("sdfm"):
                    found.add((node.module, tuple(a.name for a in node.names)))
        out[module] = found
    return out


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_circles_between_modules():
    """Modules (package __init__ files aside, which only re-export) import each other in one direction:
    no circle, at any layer, counting function-level imports."""
    imports = _imports()
    modules = {m for m in imports if not (Path(sdfm.__file__).parent.parent / m.replace(".", "/")).is_dir()}
    graph = {}
    for m in modules:
        targets = set()
        for name, names in imports[m]:
            for candidate in [f"{name}.{n}" for n in names] + [name]:
                if candidate in modules:
                    targets.add(candidate)
                    break
        graph[m] = targets - {m}
    state, stack, circles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                circles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, circles


def test_no_imports_of_another_packages_private_names():
    """``_private`` modules and names stay inside their package (sdfm.transport._stream is transport's)."""
    problems = []
    for module, found in _imports().items():
        for name, names in found:
            if _package(name) == _package(module):
                continue
            private = [p for p in name.split(".") if p.startswith("_")] + [
                n for n in names if n.startswith("_")
            ]
            if private:
                problems.append(f"{module} imports {name}: {private}")
    assert not problems, problems


def test_long_functions_say_why():
    """No function in src/ over 80 lines without a reason written beside it (a ``# long: ...`` line
    right above its ``def``)."""
    root = Path(sdfm.__file__).parent
    problems = []
    for path in root.rglob("*.py"):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if node.end_lineno - first + 1 > 80 and not lines[first - 2].strip().startswith("# long:"):
                    problems.append(f"{path.relative_to(root)}:{node.lineno} {node.name}")
    assert not problems, problems
