"""Crash reports: an unexpected error becomes one line for the user and a file for a bug report.

The `moonsweep` command names where a report goes as soon as it knows (the sweep's folder,
else the work directory); the report holds the masked command line and the traceback.

Example:
    >>> import tempfile
    >>> from sweep.crash import crash_home, write_crash_report
    >>> crash_home(tempfile.mkdtemp())
    >>> try:
    ...     raise RuntimeError("boom")
    ... except RuntimeError as exc:
    ...     path = write_crash_report(exc, ["moonsweep", "status", "s"])
    >>> "RuntimeError: boom" in path.read_text()
    True
"""

from __future__ import annotations

import os
import shlex
import tempfile
import time
import traceback
from pathlib import Path

from sweep.state import default_workdir
from sweep.stores import mask_url

_home: Path | None = None


def crash_home(workdir: str | Path | None, sweep: str | None = None) -> None:
    """Send the next crash report to the sweep's folder if it exists, else the work directory."""
    global _home
    base = Path(workdir) if workdir else default_workdir()
    _home = base / sweep if sweep and (base / sweep).is_dir() else base


def _candidates() -> list[Path]:
    return [p for p in (_home, default_workdir(), Path(tempfile.gettempdir())) if p is not None]


def write_crash_report(exc: BaseException, argv: list[str]) -> Path:
    """Write the traceback of `exc` and the command line; return the file's path."""
    text = (
        f"command: {mask_url(shlex.join(['moonsweep', *argv[1:]]))}\n"
        f"time: {time.strftime('%Y-%m-%dT%H:%M:%S')}\n\n"
        + mask_url("".join(traceback.format_exception(exc)))
    )
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in _candidates():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text)
            return path.resolve()
        except OSError:
            continue  # read-only or vanished: the next place
    raise OSError("no writable place for a crash report")  # the temp dir itself is gone
