"""The layers hold: landscape/ never imports Ray, Hydra, OmegaConf (a GPU machine without them
runs it) or analysis/, analysis/ never imports torch or Ray (it reads Parquet), and sweeps/ never
imports analysis/ (it runs the report's own command). Checked in the source of every module,
the imports inside functions too; and for landscape/ and analysis/ also in a fresh interpreter
that imports every module of the package (and what those import in turn: sweeps/ imports only
itself, landscape/ and other distributions)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> list[str]:
    return sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / package).rglob("*.py")
    )


LAYERS = [
    ("landscape", ("ray", "hydra", "omegaconf", "analysis")),
    ("analysis", ("torch", "ray")),
    ("sweeps", ("analysis",)),
]


# sweeps/ imports only itself, landscape/ and other distributions: its source check suffices
@pytest.mark.parametrize(("package", "forbidden"), LAYERS[:2])
def test_a_layer_never_imports_what_it_must_not(package, forbidden):
    code = (
        "import importlib, sys\n"
        f"for m in {_modules(package)!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in {forbidden!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0:
        return [node.module]
    return []


@pytest.mark.parametrize(("package", "forbidden"), LAYERS)
def test_no_module_of_a_layer_names_what_it_must_not_even_in_a_function(package, forbidden):
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        for name in _imported(node)
        if name.split(".")[0] in forbidden
    ]
    assert found == []
