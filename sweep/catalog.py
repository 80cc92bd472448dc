"""What can be named in a training config or a search space, read from where it is defined:
the engine's registries (models, data suites, OOD scores), the presets and the spaces.

Example:
    >>> from sweep.catalog import names
    >>> "mlp" in names("models"), "digits" in names("suites"), "msp" in names("scores")
    (True, True, True)
    >>> names("colours")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    engine.errors.ConfigError: unknown kind 'colours'; allowed: models, suites, sparse-methods, ...
"""

from __future__ import annotations

from collections.abc import Callable

from engine.config import ConfigError, preset_names
from engine.data import suites
from engine.models import models
from engine.scores import scores
from engine.sparse_methods import DENSE, sparse_methods
from sweep.spaces import space_names


def _sparse_methods() -> list[str]:
    return sorted([DENSE, *sparse_methods.names()])  # dense: no mask, not a registered rule


SOURCES: dict[str, Callable[[], list[str]]] = {
    "models": models.names,
    "suites": suites.names,
    "sparse-methods": _sparse_methods,
    "scores": scores.names,
    "spaces": space_names,
    "presets": preset_names,
}
KINDS = tuple(SOURCES)


def names(kind: str) -> list[str]:
    """The names of one kind (see KINDS); ConfigError for another kind."""
    if kind not in SOURCES:
        raise ConfigError(f"unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    return list(SOURCES[kind]())


def everything() -> dict[str, list[str]]:
    """Every kind's names, in KINDS order."""
    return {kind: names(kind) for kind in KINDS}
