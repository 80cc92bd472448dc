"""One compact live line for a sweep: trials done / running / failed and the best so far.

The counts are derived from Ray's trial list each time, so a resumed sweep shows the
trials finished before the interruption too.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ray import tune

from sweep.failures import COLLAPSED, failure_of
from sweep.spaces import SEARCH_ARM


def trial_outcome(trial: Any, ended: bool = False, errored: bool = False) -> str:
    """done, collapsed (finished at chance accuracy), failed, stopped (early, by the
    scheduler), running or pending.

    `ended`/`errored`: the trial is being completed right now (Ray updates its status after
    the callbacks run).
    """
    if errored or trial.status == "ERROR":
        return "failed"
    if not ended and trial.status != "TERMINATED":
        return "running" if trial.status == "RUNNING" else "pending"
    result = trial.last_result or {}
    if "fail_reason" in result:
        return "failed"
    if result.get("raced_out"):
        return "stopped"  # raced out after its first seeds: an estimate, not a candidate
    if result.get("final") != 1:
        return "stopped"
    return COLLAPSED if failure_of(result) == COLLAPSED else "done"


class LiveView(tune.Callback):
    """Rewrites one status line on a terminal; prints a line per finished trial otherwise."""

    def __init__(self, total: int, objective: str, mode: str, stream: Any = None) -> None:
        self.total = total
        self.objective = objective
        self.mode = mode
        self.stream = stream
        self._last = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "stream": None}

    @property
    def out(self) -> Any:
        return self.stream or sys.stderr

    def line(self, trials: list, ended: Any = None, errored: bool = False) -> str:
        counts = {"done": 0, "failed": 0, "stopped": 0, "running": 0, COLLAPSED: 0}
        best: tuple[float, str] | None = None
        for trial in trials:
            now = trial is ended
            outcome = trial_outcome(trial, ended=now, errored=now and errored)
            counts[outcome] = counts.get(outcome, 0) + 1
            value = (trial.last_result or {}).get(self.objective)
            if outcome == "done" and trial.config.get("arm") == SEARCH_ARM and value is not None:
                if best is None or (value > best[0] if self.mode == "max" else value < best[0]):
                    best = (float(value), trial.trial_id)
        finished = counts["done"] + counts["failed"] + counts["stopped"] + counts[COLLAPSED]
        text = (
            f"[moonsweep] {finished}/{self.total} trials: {counts['done']} done, "
            f"{counts['running']} running, {counts['failed']} failed, "
            f"{counts['stopped']} stopped early"
        )
        if counts[COLLAPSED]:
            text += f", {counts[COLLAPSED]} collapsed"
        if best is not None:
            text += f"  best {self.objective} {best[0]:.4f} (trial {best[1]})"
        return text

    def _show(
        self, trials: list, force: bool = False, ended: Any = None, errored: bool = False
    ) -> None:
        now = time.monotonic()
        if not force and now - self._last < 1.0:
            return
        self._last = now
        if self.out.isatty():
            self.out.write("\r\033[K" + self.line(trials, ended, errored))
        elif force:
            self.out.write(self.line(trials, ended, errored) + "\n")
        self.out.flush()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._show(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._show(trials, force=True, ended=trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._show(trials, force=True, ended=trial, errored=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.out.isatty():
            self.out.write("\n")
            self.out.flush()
