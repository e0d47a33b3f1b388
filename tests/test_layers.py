"""Imports point down the layer stack (README, Architecture): a lower layer never imports a higher one."""

import ast
from pathlib import Path

import sdfm

LAYERS = {
    "protocols": 0,
    "checks": 0,
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
