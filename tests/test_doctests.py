"""The docstring examples of `engine` and `sweep` run: each module's examples are a test.

Examples that need Ray, a finished sweep or minutes carry `# doctest: +SKIP`; the rest must
pass as written.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for package in ("engine", "sweep")
    for path in (ROOT / package).rglob("*.py")
    if path.name != "__init__.py"
)
# Known failures, each owned elsewhere (strict: the test says when one is fixed).
BROKEN: dict[str, str] = {}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(m, marks=pytest.mark.xfail(strict=True, reason=BROKEN[m]))
        if m in BROKEN
        else m
        for m in MODULES
    ],
)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"


def test_every_module_is_checked() -> None:
    assert {"sweep.stats", "sweep.state", "sweep.catalog", "engine.registry"} <= set(MODULES)
