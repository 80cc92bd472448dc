"""One compact live line for a sweep: trials done / running / failed and the best so far."""

from __future__ import annotations

import sys
import time
from typing import Any

from ray import tune


class LiveView(tune.Callback):
    """Rewrites one status line on a terminal; prints a line per finished trial otherwise."""

    def __init__(self, total: int, objective: str, mode: str, stream: Any = None) -> None:
        self.total = total
        self.objective = objective
        self.mode = mode
        self.stream = stream
        self.best: tuple[float, str] | None = None
        self.done = self.failed = self.stopped = 0
        self._last = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "stream": None}

    @property
    def out(self) -> Any:
        return self.stream or sys.stderr

    def _line(self, trials: list, ended: Any = None) -> str:
        running = sum(1 for t in trials if t.status == "RUNNING" and t is not ended)
        best = ""
        if self.best is not None:
            best = f"  best {self.objective} {self.best[0]:.4f} ({self.best[1]})"
        return (
            f"[moonsweep] {self.done + self.failed + self.stopped}/{self.total} trials: "
            f"{self.done} done, {running} running, {self.failed} failed, "
            f"{self.stopped} stopped early{best}"
        )

    def _show(self, trials: list, force: bool = False, ended: Any = None) -> None:
        now = time.monotonic()
        if not force and now - self._last < 1.0:
            return
        self._last = now
        if self.out.isatty():
            self.out.write("\r\033[K" + self._line(trials, ended))
        elif force:
            self.out.write(self._line(trials, ended) + "\n")
        self.out.flush()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._show(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        if "fail_reason" in result:
            self.failed += 1
        elif result.get("final") == 1:
            self.done += 1
            value = result.get(self.objective)
            if trial.config.get("arm") == "search" and value is not None:
                better = self.best is None or (
                    value > self.best[0] if self.mode == "max" else value < self.best[0]
                )
                if better:
                    self.best = (float(value), f"trial {trial.trial_id}")
        else:
            self.stopped += 1
        self._show(trials, force=True, ended=trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.failed += 1
        self._show(trials, force=True, ended=trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.out.isatty():
            self.out.write("\n")
            self.out.flush()
