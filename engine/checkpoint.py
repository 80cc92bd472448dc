"""Atomic writes and safe loads of checkpoints and JSON results.

Example:
    >>> import tempfile, pathlib
    >>> from engine.checkpoint import save_json, load_json
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "metrics.json"
    >>> save_json(path, {"accuracy": 0.5})
    >>> load_json(path)
    {'accuracy': 0.5}
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or not one of ours."""


_PARTIAL = ".tmp"  # the suffix of a write not yet renamed into place


def _atomic_write(path: Path, write: Any, before_rename: Callable[[], None] | None = None) -> None:
    # Write beside the target, then rename: a crash leaves the old file or the new, never half.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_PARTIAL)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_partial_writes(folder: str | Path) -> list[Path]:
    """Delete the temporary files that writes into `folder` left when their process was
    killed (SIGKILL runs no clean-up) before the rename; the targets are untouched.

    Call it only when no process writes there any more, e.g. as a killed driver's sweep
    resumes:

        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / ".sweep.json.x1y2.tmp").write_text("{")
        >>> [p.name for p in remove_partial_writes(folder)]
        ['.sweep.json.x1y2.tmp']
    """
    removed = sorted(Path(folder).glob(f".*{_PARTIAL}"))
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def save_checkpoint(
    path: str | Path, payload: dict[str, Any], before_rename: Callable[[], None] | None = None
) -> None:
    """Write `payload` with torch.save to a temporary file beside `path`, then rename it.

    `before_rename` runs between the two (the tests' failpoint for a crash mid-write).
    """
    _atomic_write(Path(path), lambda handle: torch.save(payload, handle), before_rename)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # truncated or foreign files raise many different types
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from None


def load_newest(paths: Sequence[str | Path]) -> tuple[dict[str, Any], Path, list[str]]:
    """The first of `paths` (newest first) that loads, and why each newer one did not.

    A corrupt latest checkpoint costs the epochs since the previous one, not the run:

        payload, used, skipped = load_newest([latest, previous])
    """
    problems: list[str] = []
    for path in paths:
        try:
            return load_checkpoint(path), Path(path), problems
        except CheckpointError as exc:
            problems.append(str(exc))
    raise CheckpointError("no usable checkpoint: " + "; ".join(problems or ["none given"]))


def save_bytes(
    path: str | Path, data: bytes, before_rename: Callable[[], None] | None = None
) -> None:
    """Write `data` atomically (temporary file, fsync, rename); `before_rename` as in
    `save_checkpoint` (e.g. a checkpoint already serialized with torch.save)."""
    _atomic_write(Path(path), lambda handle: handle.write(data), before_rename)


def save_json(path: str | Path, data: Any) -> None:
    """Write `data` as JSON atomically, keys in their given order.

    Order is kept, not sorted: a stored search space lists a `when` condition's parameter
    before the parameter it gates, and reading it back re-validates that order.
    """
    save_bytes(path, json.dumps(data, indent=2).encode())


def load_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())
