"""Test-only failpoints: make a trial fail, or pause, on purpose at a chosen moment.

Off unless `MOONSWEEP_FAILPOINT` is set; the reliability tests and `bench/reliability.py`
set it to reproduce faults that are hard to provoke for real (an out-of-memory error on a
machine without a GPU, a driver killed while a checkpoint file is being written).

    MOONSWEEP_FAILPOINT=oom@2          raise torch.OutOfMemoryError after epoch 2
    MOONSWEEP_FAILPOINT=error@1        raise RuntimeError after epoch 1
    MOONSWEEP_FAILPOINT=stall@2        after epoch 2 (before its report), touch
                                       `<MOONSWEEP_FAILPOINT_DIR>/paused` and sleep 30 s
    MOONSWEEP_FAILPOINT=pause@3        before renaming the checkpoint written after epoch 3,
                                       touch `<MOONSWEEP_FAILPOINT_DIR>/paused` and sleep 30 s
    MOONSWEEP_FAILPOINT=crash@0        the `moonsweep` command raises an unexpected RuntimeError
                                       before it does anything (its crash report is tested)
    MOONSWEEP_FAILPOINT=die@3          the driver SIGKILLs itself right after Ray has recorded a
                                       trial's checkpoint_000003: after Ray's checkpoint retention
                                       deleted older ones, before Ray saved its experiment state
    MOONSWEEP_FAILPOINT=orphan@1       the driver SIGKILLs itself when the first trial ends that
                                       Ray's experiment state saved on storage does not hold
                                       (it started and ended between two saves)
    MOONSWEEP_FAILPOINT=unhandled@1    the driver SIGKILLs itself when the first final result
                                       reaches it of a trial Ray's saved state does not hold,
                                       before any callback has seen it (the worker wrote its
                                       final checkpoint; MLflow's run is still RUNNING)
    MOONSWEEP_FAILPOINT=torn@5         the driver SIGKILLs itself while it writes its 5th tracking
                                       write to the spool (sweep.spool), before the rename
    MOONSWEEP_FAILPOINT_TIMES=1        fire at most this many times in all processes
    MOONSWEEP_FAILPOINT_DIR=/some/dir  where firings are counted (needed with TIMES)

Example:
    >>> import os
    >>> from engine.faults import fire
    >>> os.environ.pop("MOONSWEEP_FAILPOINT", None) and None
    >>> fire("epoch", 2)  # no failpoint set: nothing happens
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import torch

PAUSE_SECONDS = 30.0
# Where each kind of failpoint sits: after an epoch, or inside a checkpoint write.
SITES = {
    "oom": "epoch",
    "error": "epoch",
    "stall": "epoch",
    "pause": "checkpoint",
    "crash": "cli",
    "die": "save",
    "orphan": "unrecorded",
    "torn": "spool",
    "unhandled": "result",
}


def names(site: str) -> bool:
    """Whether the failpoint set (if any) sits at `site`: a caller may skip the work of
    finding out whether it fires."""
    kind = os.environ.get("MOONSWEEP_FAILPOINT", "").partition("@")[0]
    return SITES.get(kind) == site


def _armed(site: str, epoch: int) -> str | None:
    spec = os.environ.get("MOONSWEEP_FAILPOINT", "")
    if not spec:
        return None
    kind, _, at = spec.partition("@")
    if SITES.get(kind) != site or not at.isdigit() or int(at) != epoch:
        return None
    times = os.environ.get("MOONSWEEP_FAILPOINT_TIMES")
    folder = Path(os.environ.get("MOONSWEEP_FAILPOINT_DIR", "."))
    if times is not None:
        folder.mkdir(parents=True, exist_ok=True)
        if len(list(folder.glob("fired-*"))) >= int(times):
            return None
        (folder / f"fired-{uuid.uuid4().hex}").touch()
    return kind


def fire(site: str, epoch: int) -> None:
    """Raise or pause here if the failpoint names this site and epoch (test-only)."""
    kind = _armed(site, epoch)
    if kind == "oom":
        raise torch.OutOfMemoryError(f"simulated CUDA out of memory after epoch {epoch}")
    if kind == "error":
        raise RuntimeError(f"simulated failure after epoch {epoch}")
    if kind == "crash":
        raise RuntimeError("simulated internal error (MOONSWEEP_FAILPOINT=crash@0)")
    if kind in ("die", "orphan", "torn", "unhandled"):  # as a crash: no handler, atexit, flush
        os.kill(os.getpid(), signal.SIGKILL)
    if kind in ("stall", "pause"):
        folder = Path(os.environ.get("MOONSWEEP_FAILPOINT_DIR", "."))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "paused").touch()
        time.sleep(PAUSE_SECONDS)
