"""A folder of tracking writes not yet confirmed by the tracking store.

Every MLflow write the driver queues is first written here (one small file, atomically);
the file is removed once the store has the data. A tracking server that goes away, or a
driver killed mid-sweep, therefore loses nothing: the writer keeps retrying while the sweep
trains, and `moonsweep resume` sends whatever is left, in the original order.

Example:
    >>> import tempfile
    >>> from sweep.spool import Spool
    >>> spool = Spool(tempfile.mkdtemp())
    >>> entry = spool.put("set_tag", ("run-1", "k", "v"))
    >>> [(op, args) for _, op, args in spool.pending()]
    [('set_tag', ('run-1', 'k', 'v'))]
    >>> spool.remove(entry)
    >>> spool.pending()
    []
"""

from __future__ import annotations

import itertools
import os
import pickle
import time
from pathlib import Path
from typing import Any

from engine import faults
from engine.checkpoint import save_bytes


class Spool:
    """Pending writes as `<time>-<pid>-<n>.pkl` files, replayed oldest first."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._counter = itertools.count()

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder}  # a counter does not pickle

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"])

    def put(self, op: str, args: tuple) -> Path:
        """Record one write (the method's name and its arguments) before it is tried."""
        n = next(self._counter)
        name = f"{time.time_ns():020d}-{os.getpid()}-{n:08d}.pkl"
        path = self.folder / name
        save_bytes(path, pickle.dumps((op, args)), lambda: faults.fire("spool", n + 1))
        return path

    def pending(self) -> list[tuple[Path, str, tuple]]:
        """Writes not yet confirmed, oldest first; unreadable leftovers are skipped."""
        out = []
        for path in sorted(self.folder.glob("*.pkl")):
            try:
                op, args = pickle.loads(path.read_bytes())
            except (OSError, EOFError, pickle.UnpicklingError):
                continue  # cannot be half-written (atomic), but never block a resume on one
            out.append((path, op, args))
        return out

    def remove(self, entry: Path) -> None:
        entry.unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(list(self.folder.glob("*.pkl")))
