"""Name -> builder registries, so a new dataset, model, sparse method or score is one
decorated function.

`registered_name` turns a registry into a pydantic field type, so the config schema
accepts exactly the names registered when it validates (no list typed by hand).

Example:
    >>> from engine.registry import Registry
    >>> models = Registry("model")
    >>> @models.register("tiny")
    ... def tiny(width: int = 4) -> list[int]:
    ...     return [width]
    >>> models.build("tiny", width=2)
    [2]
    >>> models.names()
    ['tiny']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of builders of one kind of component."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = builder
            return builder

        return add

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._builders[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
            ) from None

    def build(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return name in self._builders


def registered_name(registry: Registry[Any], *also: str) -> Any:
    """A pydantic field type: a str that is one of `also` or a name in `registry`.

    Checked when a config is validated, so names registered after import count too; the
    message lists what is allowed, as pydantic's own for a Literal does.

        >>> from pydantic import TypeAdapter, ValidationError
        >>> kinds = Registry("kind")
        >>> _ = kinds.register("b")(list)
        >>> TypeAdapter(registered_name(kinds, "a")).validate_python("b")
        'b'
        >>> try:
        ...     TypeAdapter(registered_name(kinds, "a")).validate_python("c")
        ... except ValidationError as exc:
        ...     print(exc.errors()[0]["msg"])
        Value error, Input should be 'a' or 'b'
    """

    def check(value: str) -> str:
        allowed = [*also, *registry.names()]
        if value not in allowed:
            quoted = [repr(name) for name in allowed]
            listing = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
            raise ValueError(f"Input should be {listing}")
        return value

    return Annotated[str, AfterValidator(check)]
