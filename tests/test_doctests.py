"""Every example in a docstring (``>>>``) runs, in every package: an example that drifts from
the code fails here."""

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("landscape", "sweeps", "analysis")


def _modules_with_examples() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if ">>> " in path.read_text():
                found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return found


def test_some_module_has_examples():
    assert _modules_with_examples(), "the search found no docstring examples at all"


@pytest.mark.parametrize("name", _modules_with_examples())
def test_the_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, f"{name}: {result}"
