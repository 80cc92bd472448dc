"""MLflow tracking from the driver: a parent run per sweep, a child run per trial.

Everything is written by the driver process (one writer, so SQLite stays safe): trials
report through Ray, and this callback turns each report into one batched MLflow call.
A child run is found again by its `ray.trial_id` tag, so a resumed sweep continues the
same runs instead of duplicating them. Every write is spooled to disk first (sweep.spool)
and forgotten only once the store has it: a tracking server that goes away holds nothing
up, and `resume` sends what a killed driver left.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray import tune

from engine.checkpoint import load_json
from sweep.failures import RAY, failure_of, reason_of
from sweep.naming import (
    FAIL_REASON_TAG,
    FAILURE_TAG,
    FINAL_DIR,
    RACED_TAG,
    VOTING_TAG,
    kept_voting,
    mlflow_metric,
    trial_name,
    trial_tags,
)
from sweep.records import picked_settings, start_settings
from sweep.spaces import SEARCH_ARM, SearchSpace
from sweep.spool import Spool
from sweep.state import PARENT_TAG
from sweep.stores import library_versions, mask_url, mlflow_client, unreachable

# Per-epoch metrics are sent at most this often (one batched call per run), so the driver
# spends its time scheduling rather than committing small SQLite transactions.
FLUSH_SECONDS = 5.0
WRITE_ATTEMPTS = 3
# While the store is unreachable the writer waits and tries again, up to this long apart.
RETRY_MAX_SECONDS = 15.0
# At the end of a sweep, wait this long for a store that is down; the rest stays spooled.
DRAIN_SECONDS = float(os.environ.get("MOONSWEEP_TRACKING_DRAIN_S", "60"))
# Trial notes (strings in a Ray result) that become tags of the trial's run.
NOTE_KEYS = ("checkpoint_fallback", "retried")
# Where a trial ran (its latest report): Ray's node id (nodes may share an IP), host, IP.
PLACEMENT_KEYS = ("node_id", "hostname", "node_ip")
logger = logging.getLogger("moonsweep.tracking")


def numeric_metrics(result: dict[str, Any], step: int, ts: int) -> list[Metric]:
    """A report's figures as MLflow metrics, under the keys `sweep.naming` gives them."""
    return [
        Metric(mlflow_metric(key), float(value), ts, step)
        for key, value in result.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and _loggable(key)
    ]


_RAY_KEYS = {
    "timestamp",
    "time_this_iter_s",
    "time_total_s",
    "pid",
    "training_iteration",
    "time_since_restore",
    "iterations_since_restore",
    "done",
    "final",
}


def _loggable(key: str) -> bool:
    return key not in _RAY_KEYS and not key.startswith("config/")


class MlflowTracking(tune.Callback):
    """Ray Tune callback that mirrors every trial into an MLflow child run.

    The callbacks only take a snapshot of what they need and queue it; one writer thread
    sends everything to MLflow in order (with retries), so the driver never waits on the
    tracking store and the store has a single writer.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        space: SearchSpace,
        spool_dir: str | Path | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.space = space
        self.runs: dict[str, str] = {}
        self.last_step: dict[str, int] = {}
        self.pending: dict[str, list[Metric]] = {}
        # Only a restored sweep can already hold runs for its trials (see __getstate__).
        self.restored = False
        self.failed_writes = 0
        self.placed: dict[str, dict[str, str]] = {}  # trial id -> its node, as last tagged
        # Every write is kept on disk until the store has it (None: in memory only).
        self.spool = Spool(spool_dir) if spool_dir else None
        self.closed: set[str] = set()  # runs FINISHED before a resume: never written again
        self.undescribed: set[str] = set()  # runs created whose params are not written yet
        self._unflushed: list[Path] = []  # spooled epochs whose metrics wait in `pending`
        self._deadline: float | None = None  # set by drain(): stop waiting for the store
        self._flushed = 0.0
        self._client: MlflowClient | None = None
        self._queue: queue.Queue | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles callbacks with the experiment, and unpickles them only to resume it.
        # A live client (DB engine), the queue and the thread do not pickle.
        return {
            **self.__dict__,
            "_client": None,
            "_queue": None,
            "runs": {},
            "last_step": {},
            "pending": {},
            "closed": set(),
            "undescribed": set(),
            "_unflushed": [],
            "_deadline": None,
            "restored": True,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"undescribed": set(), **state})  # pickled before it existed

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = mlflow_client(self.tracking_uri)
        return self._client

    # -- the writer thread ------------------------------------------------------------------
    def _submit(self, fn: Any, *args: Any) -> None:
        if self._queue is None:
            self._queue = queue.Queue()
            threading.Thread(target=self._work, name="mlflow-writer", daemon=True).start()
            atexit.register(self.drain, DRAIN_SECONDS)
        entry = self.spool.put(fn.__name__, args) if self.spool is not None else None
        self._queue.put((fn, args, entry))

    def _work(self) -> None:
        assert self._queue is not None
        while True:
            fn, args, entry = self._queue.get()
            if self._write(fn, args):
                self._confirm(entry)
            self._queue.task_done()

    def _write(self, fn: Any, args: tuple) -> bool:
        """Try a write until it lands; while the store is unreachable, wait for it.

        Gives up after WRITE_ATTEMPTS on a store that answers (the write itself is bad), or
        once drain()'s deadline has passed; the spooled entry then stays for `resume`.
        """
        attempt = 0
        while True:
            try:
                fn(*args)
                return True
            except Exception as exc:  # the store's errors come in many types
                attempt += 1
                down = unreachable(self.tracking_uri)
                late = self._deadline is not None and time.monotonic() > self._deadline
                if late or (down is None and attempt >= WRITE_ATTEMPTS):
                    self.failed_writes += 1
                    logger.warning("MLflow write %s failed: %s", fn.__name__, mask_url(str(exc)))
                    return False
                time.sleep(min(RETRY_MAX_SECONDS, 2.0**attempt))

    def _confirm(self, entry: Path | None) -> None:
        """The store has this write: forget it, unless its metrics still wait in `pending`."""
        if entry is None or self.spool is None:
            return
        if self.pending:
            self._unflushed.append(entry)
        else:
            self.spool.remove(entry)

    def drain(self, timeout: float | None = None) -> None:
        """Wait until everything queued has been written (or `timeout` seconds have passed)."""
        if self._queue is not None:
            if timeout is not None:
                self._deadline = time.monotonic() + timeout
            self._submit(self._flush, 0.0)
            self._queue.join()

    def send_spooled(self) -> int:
        """Send, in order, what an earlier driver spooled but the store never confirmed."""
        if self.spool is None:
            return 0
        self.restored = True  # its runs may exist already: find them by tag
        entries = self.spool.pending()
        for entry, op, args in entries:
            if self._write(getattr(self, op), args):  # a failed one stays for the next resume
                self._confirm(entry)
        self._write(self._flush, (0.0,))
        return len(entries)

    def record_end(
        self, trial_id: str, config: dict[str, Any], result: dict[str, Any], checkpoint: Any
    ) -> bool:
        """Write a trial's end now, as `on_trial_complete` would have; whether the store took
        it. For a trial whose end a killed driver never handled (sweep.adoption): its run is
        found by tag, its epochs since the last logged one and its final figures and files
        are written, and it ends as the trial did."""
        self.restored = True
        return self._write(self._complete, (trial_id, config, result, checkpoint))

    # -- Ray Tune callbacks (driver thread): snapshot and queue --------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._submit(self._run_for, trial.trial_id, dict(trial.config))

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        history = list(result.get("history", []))
        self._submit(self._log_epochs, trial.trial_id, dict(trial.config), history)
        notes = {key: str(result[key]) for key in NOTE_KEYS if key in result}
        if notes:
            self._submit(self._note, trial.trial_id, dict(trial.config), notes)
        self._place(trial, result)

    def _place(self, trial: Any, result: dict) -> None:
        """Tag the run with the trial's node when it first reports, and when it moves."""
        node = {key: str(result[key]) for key in PLACEMENT_KEYS if key in result}
        if "node_id" in node and self.placed.get(trial.trial_id) != node:
            self.placed[trial.trial_id] = node
            self._submit(self._note, trial.trial_id, dict(trial.config), node)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = dict(trial.last_result or {})
        self._submit(self._complete, trial.trial_id, dict(trial.config), result, trial.checkpoint)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        reason = "ray error"
        if trial.error_file and Path(trial.error_file).exists():
            lines = Path(trial.error_file).read_text().strip().splitlines()
            reason = lines[-1] if lines else reason
        self._submit(self._fail, trial.trial_id, dict(trial.config), reason[:500])

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.drain(DRAIN_SECONDS)

    # -- MLflow writes (writer thread) -----------------------------------------------------------
    def _run_for(self, trial_id: str, config: dict[str, Any]) -> str:
        """The trial's child run: created once, or found by tag after a resume."""
        if trial_id in self.runs:
            self._describe_once(self.runs[trial_id], config)
            return self.runs[trial_id]
        found = []
        if self.restored:
            found = self.client.search_runs(
                [self.experiment_id],
                filter_string=(
                    f"tags.`ray.trial_id` = '{trial_id}' "
                    f"and tags.`{PARENT_TAG}` = '{self.parent_run_id}'"
                ),
            )
        if found:
            run_id = found[0].info.run_id
            if not found[0].data.params:  # created by a driver killed before it described it
                self.undescribed.add(run_id)
            # A resumed trial repeats the epochs after its last checkpoint: log them once.
            self.last_step[run_id] = int(found[0].data.metrics.get("epoch", 0))
            if found[0].info.status == "FINISHED":
                self.closed.add(run_id)  # finished before the driver died: keep as it is
            else:
                self.client.update_run(run_id, status="RUNNING")
        else:
            run_id = self._create(trial_id, config)
        self.runs[trial_id] = run_id
        self._describe_once(run_id, config)
        return run_id

    def _describe_once(self, run_id: str, config: dict[str, Any]) -> None:
        # Apart from the run's creation: a store that goes away between the two must not
        # make the retry create a second run for the trial.
        if run_id in self.undescribed:
            self._describe(run_id, config)
            self.undescribed.discard(run_id)

    def _create(self, trial_id: str, config: dict[str, Any]) -> str:
        arm, level = config.get("arm", SEARCH_ARM), config.get("level")
        optuna_trial = int(config.get("optuna_trial", -1))
        configs = self.space.arm_configs(config)
        tags = {
            PARENT_TAG: self.parent_run_id,
            "ray.trial_id": trial_id,
            "optuna.trial_number": str(optuna_trial),
            "moonsweep.seeds": ",".join(str(s) for s in self.space.seeds),
            **trial_tags(arm, level, configs[0], self.space.test_time_for(config)),
        }
        name = trial_name(arm, level, optuna_trial, configs[0])
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.undescribed.add(run.info.run_id)
        return run.info.run_id

    def _describe(self, run_id: str, config: dict[str, Any]) -> None:
        """The run's params and `trial.json` (both safe to write again)."""
        arm, level = config.get("arm", SEARCH_ARM), config.get("level")
        configs = self.space.arm_configs(config)
        # The settings that apply (sweep.records); those a test-time grid decides are logged
        # with its pick, at the end: a param once logged cannot change.
        params = start_settings(configs, self.space.test_time_for(config) is not None)
        params.update({f"searched.{k}": v for k, v in config.get("params", {}).items()})
        self._log_params(run_id, params)
        self.client.log_dict(
            run_id,
            {
                "arm": arm,
                "level": level,
                "params": config.get("params", {}),
                "configs": [c.model_dump(mode="json") for c in configs],
                # Searched trials evaluate this grid after training and keep its rule's pick.
                "test_time": None
                if (tt := self.space.test_time_for(config)) is None
                else tt.model_dump(mode="json", by_alias=True),
                "versions": library_versions(),
            },
            "trial.json",
        )

    def _log_epochs(
        self, trial_id: str, config: dict[str, Any], history: list[dict[str, Any]]
    ) -> None:
        """Queue each epoch's figures once; send them at most every few seconds."""
        run_id = self._run_for(trial_id, config)
        if run_id in self.closed:
            return
        ts = int(time.time() * 1000)
        for record in history:
            step = int(record.get("epoch", 0))
            if step <= self.last_step.get(run_id, 0):
                continue
            self.last_step[run_id] = step
            self.pending.setdefault(run_id, []).extend(numeric_metrics(record, step, ts))
        self._flush(FLUSH_SECONDS)

    def _flush(self, older_than: float) -> None:
        now = time.monotonic()
        if now - self._flushed < older_than:
            return
        self._flushed = now
        while self.pending:
            run_id = next(iter(self.pending))
            self._log_metrics(run_id, self.pending[run_id])
            del self.pending[run_id]  # only once sent: a failed call keeps them for the retry
        if self.spool is not None:
            for entry in self._unflushed:
                self.spool.remove(entry)
        self._unflushed = []

    def _log_metrics(self, run_id: str, metrics: list[Metric]) -> None:
        for start in range(0, len(metrics), 900):  # log_batch takes at most 1000 metrics
            self.client.log_batch(run_id, metrics=metrics[start : start + 900])

    def _complete(
        self, trial_id: str, config: dict[str, Any], result: dict[str, Any], checkpoint: Any
    ) -> None:
        run_id = self._run_for(trial_id, config)
        if run_id in self.closed:
            return
        self._log_epochs(trial_id, config, result.get("history", []))
        self._flush(0.0)
        # A failed trial's reason and kind; a collapsed one finishes with them as well.
        if failure_of(result):
            self.client.set_tag(run_id, FAILURE_TAG, failure_of(result))
        if reason_of(result):
            self.client.set_tag(run_id, FAIL_REASON_TAG, reason_of(result))
        if "fail_reason" in result:
            self.client.set_terminated(run_id, "FAILED")
        elif result.get("final") == 1:
            history = result.get("history") or [{}]
            ts, step = int(time.time() * 1000), int(result.get("epoch", 0))
            with ExitStack() as stack:
                folder = None
                if checkpoint is not None:
                    folder = Path(stack.enter_context(checkpoint.as_directory())) / FINAL_DIR
                # Every final figure: Ray's result carries only those the sweep decides on
                # (sweep.trial.reported); the checkpoint's metrics.json has them all.
                recorded = folder / "metrics.json" if folder is not None else None
                figures = load_json(recorded) if recorded and recorded.is_file() else result
                # The last epoch's figures were just logged from the history: not twice.
                final = {k: v for k, v in figures.items() if k not in history[-1]}
                self._log_metrics(run_id, numeric_metrics(final, step, ts))
                if folder is not None and folder.is_dir():
                    self.client.log_artifacts(run_id, str(folder), artifact_path="final")
            if "test_time_pick" in result:  # the variant its rule kept (final/variants.json)
                pick = str(result["test_time_pick"])
                self.client.set_tag(run_id, "moonsweep.test_time", pick)
                self.client.set_tag(run_id, VOTING_TAG, kept_voting(pick))
            self._log_pick(run_id, config, result.get("test_time_settings"))
            if result.get("raced_out"):
                # Raced out after its first seeds (sweep/racing.py): an estimate, never a
                # candidate; KILLED like a trial stopped early, tagged with the reference.
                self.client.set_tag(run_id, RACED_TAG, str(result.get("raced_by")))
                self.client.set_terminated(run_id, "KILLED")
                return
            self.client.set_terminated(run_id, "FINISHED")
        else:
            self.client.set_tag(run_id, "moonsweep.stopped_early", "true")
            self.client.set_terminated(run_id, "KILLED")

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        if not params:
            return
        self.client.log_batch(
            run_id, params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        )

    def _log_pick(self, run_id: str, config: dict[str, Any], recorded: Any) -> None:
        """The settings a trial's test-time grid picked (its `test_time_settings`), as params.

        A run described before its grid's keys were left out at the start (an older sweep,
        resumed) holds them already, with the config's values: those stay (MLflow keeps a
        param's first value), the tags say the pick."""
        if self.space.test_time_for(config) is None or not recorded:
            return
        picked = picked_settings(self.space.arm_configs(config), str(recorded))
        logged = self.client.get_run(run_id).data.params
        kept = {k: v for k, v in picked.items() if str(v) != logged.get(k, str(v))}
        if kept:
            logger.warning(
                "run %s: params %s were logged before the test-time pick; they stay as they "
                "are (the pick: %s)",
                run_id,
                ", ".join(f"{k}={logged[k]}" for k in kept),
                recorded,
            )
        self._log_params(run_id, {k: v for k, v in picked.items() if k not in logged})

    def _note(self, trial_id: str, config: dict[str, Any], notes: dict[str, str]) -> None:
        run_id = self._run_for(trial_id, config)
        for key, value in notes.items():
            self.client.set_tag(run_id, f"moonsweep.{key}", value[:5000])

    def _fail(self, trial_id: str, config: dict[str, Any], reason: str) -> None:
        run_id = self._run_for(trial_id, config)
        if run_id in self.closed:
            return
        self._flush(0.0)
        self.client.set_tag(run_id, FAIL_REASON_TAG, reason)
        self.client.set_tag(run_id, FAILURE_TAG, RAY)
        self.client.set_terminated(run_id, "FAILED")
