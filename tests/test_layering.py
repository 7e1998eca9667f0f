"""The layers hold: landscape/ never imports Ray, Hydra or OmegaConf (a GPU machine without them
runs it), and analysis/ never imports torch or Ray (it reads Parquet). Each checked in a fresh
interpreter that imports every module of the package."""

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


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("landscape", ("ray", "hydra", "omegaconf")), ("analysis", ("torch", "ray"))],
)
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
