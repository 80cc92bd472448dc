"""Confirmation of the per-level answer on fresh seeds (`moonsweep confirm NAME --seeds N`).

The per-level table (sweep/levels.py) puts each level's best searched trial beside the arms
trained at that level, on the seeds that chose it: its figures lean its way. `confirm`
re-trains, with the engine alone (no Ray), each level's best searched trial
(`sweep.levels.best_searched`) and every arm that finished at that level (`dense` once) on
N fresh seeds: the next N after the space's largest seed, the same for every trial. Each
seed keeps every test-time variant, as a sweep's trial does, and the variant the trial kept
when recorded (not a new pick on the fresh seeds); its files go, one seed at a time as each
finishes, on the trial's own MLflow run, in the format of `final/`:

- `confirm/metrics-seed<s>.json`: the kept variant's every figure;
- `confirm/variants-seed<s>.json`: `{"picked": ..., "published": ..., "variants": {name:
  figures}}` (`engine.test_time.variant_figures` of each variant).

The seeds are recorded first, on the sweep's parent run (`CONFIRM_TAG`, e.g. `5,6,7`), so
an interrupted confirm resumes: run it again with the same N and only the seeds whose files
are missing are trained (a later resume of the sweep that changes a level's best trial:
again, and just that trial is trained). Another N is refused: the confirmation of a sweep is
one set of seeds. `sweep.state.confirmed_records` reads a trial's files back (None until
every seed is there), which is what the per-level table shows as confirmed.

Example:
    >>> fresh_seeds({"seeds": [0, 1, 2, 3, 4]}, 3)
    [5, 6, 7]
    >>> seeds_text([5, 6, 7]), seeds_text([5]), seeds_text([5, 7])
    ('5-7', '5', '5, 7')
    >>> from sweep.state import load_state  # doctest: +SKIP
    >>> state, _ = load_state("demo")  # doctest: +SKIP
    >>> done = confirm(state, 3, on_progress=print)  # doctest: +SKIP
    confirm 1/27: search#7@0.05 seed 5
    ...
    >>> done.seeds, [t.label for t in done.trials][:2]  # doctest: +SKIP
    ([5, 6, 7], ['search#7@0.05', 'moon_auto@0.05'])
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.checkpoint import save_json
from engine.config import ConfigError
from sweep.levels import best_searched
from sweep.naming import CONFIRM_DIR, CONFIRM_TAG
from sweep.replay import SeedVariants, retrain_seeds
from sweep.spaces import SEARCH_ARM
from sweep.state import SweepState, TrialRow, confirm_seeds, trial_rows
from sweep.stores import mlflow_client

ProgressFn = Callable[[str], None]


@dataclass
class ConfirmedTrial:
    """One trial confirmed: which, and the fresh seeds this call trained (`trained`) or
    found already there (`present`)."""

    label: str  # `search#7@0.05`, `moon_auto@0.05`, `dense`
    run_id: str  # its MLflow run, which holds `confirm/`
    trained: list[int] = field(default_factory=list)
    present: list[int] = field(default_factory=list)


@dataclass
class Confirmation:
    """What `confirm` did: the fresh seeds, each trial and why a level has no searched one."""

    seeds: list[int]
    trials: list[ConfirmedTrial]
    notes: list[str] = field(default_factory=list)  # e.g. no searched trial at 0.05 ran ...

    @property
    def trainings(self) -> int:
        """How many seeds this call trained, over all trials."""
        return sum(len(t.trained) for t in self.trials)


def fresh_seeds(space: Mapping[str, Any], n_seeds: int) -> list[int]:
    """The N seeds after the space's largest (as `select --confirm-seeds` takes them)."""
    first = max(int(s) for s in space.get("seeds", [0])) + 1
    return list(range(first, first + n_seeds))


def seeds_text(seeds: Sequence[int]) -> str:
    """Seeds as said in words: `5-9` when consecutive, else listed."""
    ordered = list(seeds)
    if len(ordered) > 1 and ordered == list(range(ordered[0], ordered[0] + len(ordered))):
        return f"{ordered[0]}-{ordered[-1]}"
    return ", ".join(map(str, ordered))


def confirm_targets(
    state: SweepState, rows: Sequence[TrialRow]
) -> tuple[list[tuple[str, TrialRow]], list[str]]:
    """The trials to confirm, labelled, level by level (its best searched trial, then its
    finished arms; `dense`, trained once, last), and a note per level without a searched one.
    """
    targets: dict[str, tuple[str, TrialRow]] = {}
    notes = []
    for level in (float(d) for d in state.space.get("levels") or []):
        best, note = best_searched(state, rows, level)
        if best is None:
            notes.append(note)
        else:
            targets[best["mlflow_run_id"]] = (f"search#{best['optuna']}@{level:g}", best)
        for row in rows:
            if row["arm"] != SEARCH_ARM and row["state"] == "done" and row["level"] == level:
                targets[row["mlflow_run_id"]] = (f"{row['arm']}@{level:g}", row)
    for row in rows:
        if row["arm"] == "dense" and row["state"] == "done" and row["level"] is None:
            targets[row["mlflow_run_id"]] = ("dense", row)
    return list(targets.values()), notes


def record_seeds(state: SweepState, seeds: list[int]) -> None:
    """Record the fresh seeds on the parent run (CONFIRM_TAG), or refuse other seeds than
    those recorded (ConfigError: exit 2)."""
    recorded = confirm_seeds(state)
    if recorded and recorded != seeds:
        raise ConfigError(
            f"sweep {state.name} is confirmed on seeds {seeds_text(recorded)} ({CONFIRM_TAG} "
            f"on its parent run), not {seeds_text(seeds)}: run `moonsweep confirm "
            f"{state.name} --seeds {len(recorded)}` to resume or repeat it"
        )
    if not recorded:
        tag = ",".join(map(str, seeds))
        mlflow_client(state.tracking_uri).set_tag(state.parent_run_id, CONFIRM_TAG, tag)


def confirmed_seeds(state: SweepState, run_id: str, seeds: Sequence[int]) -> list[int]:
    """The seeds among `seeds` whose two confirmation files the run already holds."""
    client = mlflow_client(state.tracking_uri)
    present = {Path(f.path).name for f in client.list_artifacts(run_id, CONFIRM_DIR)}
    return [s for s in seeds if {f"metrics-seed{s}.json", f"variants-seed{s}.json"} <= present]


def write_seed(state: SweepState, run_id: str, seed: SeedVariants) -> None:
    """One seed's `confirm/` files on the trial's run: the variants first, the metrics last
    (a seed is confirmed once its metrics file is there)."""
    client = mlflow_client(state.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        variants = Path(tmp) / f"variants-seed{seed.seed}.json"
        metrics = Path(tmp) / f"metrics-seed{seed.seed}.json"
        save_json(variants, seed.variants_record())
        save_json(metrics, seed.metrics)
        client.log_artifact(run_id, str(variants), CONFIRM_DIR)
        client.log_artifact(run_id, str(metrics), CONFIRM_DIR)


def confirm(
    state: SweepState,
    n_seeds: int,
    on_progress: ProgressFn | None = None,
    rows: Sequence[TrialRow] | None = None,
) -> Confirmation:
    """Re-train each level's best searched trial and its arms (`dense` once) on `n_seeds`
    fresh seeds and store each seed under `confirm/` on the trial's run (see the module).

    ConfigError (exit 2 from the command line) for N below 1, a sweep without levels, a
    driver running the sweep, or another N than a confirm already recorded. `on_progress`
    gets one line per training: `confirm 3/40: moon_auto@0.05 seed 6`.
    """
    if n_seeds < 1:
        raise ConfigError(f"--seeds {n_seeds}: confirm needs 1 or more fresh seeds")
    if not state.space.get("levels"):
        raise ConfigError(
            f"sweep {state.name} has no density levels; confirm re-trains each level's best "
            "searched trial and its arms"
        )
    if state.current_status() == "running":  # a driver holds the sweep's lock
        raise ConfigError(
            f"sweep {state.name} is being run by a driver; confirm it once that has ended"
        )
    seeds = fresh_seeds(state.space, n_seeds)
    rows = trial_rows(state, all_metrics=True) if rows is None else rows
    targets, notes = confirm_targets(state, rows)
    record_seeds(state, seeds)  # first: an interrupted confirm resumes on the same seeds
    plan: list[tuple[ConfirmedTrial, list[int]]] = []  # each trial, its seeds to train
    for label, row in targets:
        present = confirmed_seeds(state, row["mlflow_run_id"], seeds)
        trial = ConfirmedTrial(label, row["mlflow_run_id"], present=present)
        plan.append((trial, [s for s in seeds if s not in present]))
    total = sum(len(missing) for _, missing in plan)
    done = 0
    for trial, missing in plan:

        def progress(seed: int, label: str = trial.label) -> None:
            nonlocal done
            done += 1
            if on_progress is not None:
                on_progress(f"confirm {done}/{total}: {label} seed {seed}")

        if missing:  # each seed's files are written as soon as it is trained
            for result in retrain_seeds(state, trial.run_id, missing, on_seed=progress):
                write_seed(state, trial.run_id, result)
                trial.trained.append(result.seed)
    return Confirmation(seeds, [trial for trial, _ in plan], notes)


def summary_lines(done: Confirmation, name: str) -> list[str]:
    """What `moonsweep confirm` prints at the end: each trial and its seeds, the notes."""
    lines = [
        f"confirmed {len(done.trials)} trials of sweep {name} on seeds {seeds_text(done.seeds)}: "
        f"{done.trainings} trainings now, "
        f"{sum(len(t.present) for t in done.trials)} seeds already there"
    ]
    for trial in done.trials:
        now = f"trained seeds {seeds_text(trial.trained)}" if trial.trained else "nothing to train"
        lines.append(f"  {trial.label:<24} {now}  runs:/{trial.run_id}/{CONFIRM_DIR}")
    lines += [f"  note: {note}" for note in done.notes]
    lines.append(
        f"`moonsweep status {name}` and `moonsweep report {name}` now show the confirmed "
        f"figures (seeds {seeds_text(done.seeds)})"
    )
    return lines
