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
from sweep.naming import read_adopted
from sweep.spaces import SEARCH_ARM


def trial_outcome(trial: Any, ended: bool = False, errored: bool = False) -> str:
    """done, collapsed (finished at chance accuracy), raced (out after its first seeds),
    failed, stopped (early, by the scheduler), running or pending.

    `ended`/`errored`: the trial is being completed right now (Ray updates its status after
    the callbacks run).
    """
    if errored or trial.status == "ERROR":
        return "failed"
    if not ended and trial.status != "TERMINATED":
        return "running" if trial.status == "RUNNING" else "pending"
    return result_outcome(trial.last_result or {})


def result_outcome(result: dict[str, Any]) -> str:
    """The outcome of a trial that ended with this last result (`trial_outcome`'s words).

    >>> result_outcome({"final": 1, "val_accuracy": 0.9}), result_outcome({"epoch": 3})
    ('done', 'stopped')
    """
    if "fail_reason" in result:
        return "failed"
    if result.get("raced_out"):
        return RACED  # an estimate from its first seeds, never a candidate
    if result.get("final") != 1:
        return "stopped"
    return COLLAPSED if failure_of(result) == COLLAPSED else "done"


RACED = "raced"
ENDED = ("done", "failed", "stopped", RACED, COLLAPSED)


class LiveView(tune.Callback):
    """Rewrites one status line on a terminal; prints a line per finished trial otherwise.

    A finished trial's outcome is worked out once (`outcomes`), so a line costs a look at
    the trials still running, not a pass over every result of a sweep of thousands.
    """

    def __init__(
        self,
        total: int,
        objective: str,
        mode: str,
        stream: Any = None,
        adopted_file: str | None = None,
    ) -> None:
        self.total = total
        self.objective = objective
        self.mode = mode
        self.stream = stream
        # Trials a resume adopted (sweep.adoption): ended, but not in Ray's trial list.
        self.adopted_file = adopted_file
        self._adopted_read = False
        self._last = 0.0
        self.outcomes: dict[str, str] = {}  # trial id -> its outcome once it has ended
        self.counts = dict.fromkeys(ENDED, 0)
        self.best: tuple[float, str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A restored driver reads the adopted-trials file again: a resume may have added some.
        return {**self.__dict__, "stream": None, "_adopted_read": False}

    @property
    def out(self) -> Any:
        return self.stream or sys.stderr

    def _record(self, trial_id: str, outcome: str, arm: Any, result: dict[str, Any]) -> None:
        previous = self.outcomes.get(trial_id)
        if previous is not None:  # a resumed trial that ended again
            self.counts[previous] -= 1
        self.outcomes[trial_id] = outcome
        self.counts[outcome] += 1
        value = result.get(self.objective)
        if outcome == "done" and arm == SEARCH_ARM and value is not None:
            best = self.best
            if best is None or (value > best[0] if self.mode == "max" else value < best[0]):
                self.best = (float(value), trial_id)

    def _record_trial(self, trial: Any, outcome: str) -> None:
        self._record(trial.trial_id, outcome, trial.config.get("arm"), trial.last_result or {})

    def _record_adopted(self) -> None:
        self._adopted_read = True
        # `adopted_file` is absent in an older sweep's pickle.
        for trial_id, entry in read_adopted(getattr(self, "adopted_file", None)).items():
            if trial_id not in self.outcomes:
                result = entry["result"]
                self._record(trial_id, result_outcome(result), entry["arm"], result)

    def line(self, trials: list, ended: Any = None, errored: bool = False) -> str:
        if not getattr(self, "_adopted_read", False):
            self._record_adopted()
        running = 0
        for trial in trials:
            if trial is ended:
                self._record_trial(trial, trial_outcome(trial, ended=True, errored=errored))
            elif trial.status == "RUNNING":
                running += 1
            elif trial.trial_id not in self.outcomes and trial.status in ("TERMINATED", "ERROR"):
                self._record_trial(trial, trial_outcome(trial))  # ended before a resume
        counts = self.counts
        text = (
            f"[moonsweep] {sum(counts.values())}/{self.total} trials: {counts['done']} done, "
            f"{running} running, {counts['failed']} failed, "
            f"{counts['stopped']} stopped early"
        )
        for outcome, words in ((RACED, "raced out"), (COLLAPSED, "collapsed")):
            if counts[outcome]:
                text += f", {counts[outcome]} {words}"
        if self.best is not None:
            text += f"  best {self.objective} {self.best[0]:.4f} (trial {self.best[1]})"
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
