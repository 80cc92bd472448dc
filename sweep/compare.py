"""`moonsweep compare A B [C ...]`: sweeps side by side, from their stores alone (no Ray).

What it puts beside each other:

- per density level the sweeps share, each sweep's arms (its best searched trial there,
  `moon_auto`, `sparse`, `sparse+voting`, `dense`: `sweep.levels`) with the mean and 95%
  t-interval over its seeds, and where the seeds and the data split match, the paired
  per-seed deltas of every later sweep against the first (`B - A`), arm by arm: seed `s` of
  B's arm minus seed `s` of A's, both read from the stores' per-seed records;
- the hypervolume of every sweep's searched trials under ONE reference point: the nadir of
  the complete feasible trials of all the compared studies (`sweep.hypervolume.nadir`), over
  the objectives they share, moved out by REFERENCE_MARGIN of each objective's range (a
  trial at the worst density still adds volume);
- the trade-off curves of all sweeps on one plot (`sweep.plots.sweeps_tradeoff`).

Sweeps whose spaces differ are compared on what they share (objectives, levels, figures);
`Comparison.left_out` says what was not compared and why. The first sweep named is the
reference of the deltas.

Example:
    >>> from sweep.compare import compare_sweeps, comparison_markdown  # doctest: +SKIP
    >>> comparison = compare_sweeps(["rigl", "set"], workdir="moonsweep-runs")  # doctest: +SKIP
    >>> print(comparison_markdown(comparison))  # doctest: +SKIP
"""

from __future__ import annotations

import html
import io
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import optuna

from engine.checkpoint import save_json
from engine.config import ConfigError
from sweep import plots
from sweep.contrasts import SAME, UNMATCHED, Match, differences, match
from sweep.hypervolume import feasible, hypervolume_history, nadir
from sweep.levels import (
    PUBLISHED,
    SEARCHED,
    Level,
    compare_levels,
    level_metrics,
    pick_rule,
    points_cell,
)
from sweep.naming import EXPERIMENT_TAGS, WORKFLOW
from sweep.render import CSS, html_figure, html_table
from sweep.state import SweepState, TrialRow, finished_study, load_state, trial_rows
from sweep.stats import CONFIDENCE, Interval, Paired, correct, paired_test
from sweep.stores import ensure_experiment, is_server, mask_url, mlflow_client

COMPARE_EXPERIMENT = "moonsweep-compare"
ARTIFACT_DIR = "compare"
# Settings that may differ without making two sweeps' runs unpaired or their figures apart.
IGNORED_SETTINGS = ("seed", "data.root", "sparsity.density")
# The shared reference point: the nadir of every sweep's feasible trials, moved out by this
# fraction of each objective's range (a trial at the worst density still adds volume).
REFERENCE_MARGIN = 0.1


@dataclass
class Side:
    """One compared sweep, as its stores hold it."""

    name: str
    state: SweepState
    folder: Path
    rows: list[TrialRow] = field(repr=False)
    levels: list[Level] = field(repr=False)
    settings: dict[str, str]  # the training settings of one of its finished baselines

    @property
    def objectives(self) -> list[tuple[str, str]]:
        return [(o["metric"], o["direction"]) for o in self.state.space["objectives"]]

    @property
    def seeds(self) -> list[int]:
        return [int(s) for s in self.state.space["seeds"]]

    def level(self, density: float) -> Level | None:
        return next((lv for lv in self.levels if lv.density == density), None)


@dataclass
class Volume:
    """One sweep's hypervolume under the shared reference point."""

    complete: int  # searched trials that ran to the end
    feasible: int  # of those, meeting the space's constraints
    hypervolume: float


@dataclass
class Comparison:
    """Everything `moonsweep compare` shows."""

    sides: list[Side]
    objectives: list[tuple[str, str]]  # shared by every sweep, in the first sweep's order
    metrics: list[str]  # the per-level figures every sweep has (test, then validation)
    levels: list[float]  # the density levels every sweep has
    paired: bool  # same data split and some seeds in common: paired deltas
    seeds: list[int]  # the seeds in common
    # density -> "B - A" -> arm -> metric -> interval of the per-seed differences
    deltas: dict[float, dict[str, dict[str, dict[str, Interval]]]]
    reference: list[float] | None  # the shared hypervolume reference point (objectives' order)
    volumes: dict[str, Volume]
    differs: dict[str, list[str]]  # setting -> its value in each sweep, where they differ
    left_out: list[str]  # what was not compared, and why
    # density -> "B - A" -> arm -> the shared test-time setting of its paired difference
    delta_settings: dict[float, dict[str, dict[str, str]]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sides]

    def as_dict(self) -> dict[str, Any]:
        return {
            "sweeps": [
                {
                    "name": s.name,
                    "space": s.state.space_source,
                    "tracking_uri": mask_url(s.state.tracking_uri),
                    "experiment_id": s.state.experiment_id,
                    "parent_run_id": s.state.parent_run_id,
                    "objectives": s.objectives,
                    "seeds": s.seeds,
                    "levels": [lv.density for lv in s.levels],
                }
                for s in self.sides
            ],
            "objectives": self.objectives,
            "metrics": self.metrics,
            "levels": [
                {
                    "density": d,
                    "sweeps": {
                        s.name: _level_dict(s.level(d), self.metrics)
                        for s in self.sides
                        if s.level(d) is not None
                    },
                    "deltas": {
                        pair: {
                            arm: {m: i.as_dict() for m, i in figures.items()}
                            for arm, figures in arms.items()
                        }
                        for pair, arms in self.deltas.get(d, {}).items()
                    },
                    "delta_settings": self.delta_settings.get(d, {}),
                }
                for d in self.levels
            ],
            "paired": self.paired,
            "seeds": self.seeds,
            "hypervolume_reference": self.reference,
            "hypervolumes": {n: vars(v) for n, v in self.volumes.items()},
            "differs": self.differs,
            "left_out": self.left_out,
        }


def _level_dict(level: Level | None, metrics: Sequence[str]) -> dict[str, Any]:
    """A level's `as_dict()` with only the shared figures (what the tables and plot show)."""
    data = level.as_dict() if level is not None else {"arms": {}, "deltas": {}, "note": ""}
    for arm in data["arms"].values():
        arm["figures"] = {m: v for m, v in arm["figures"].items() if m in metrics}
    data["deltas"] = {}  # within-sweep deltas are the sweep's own report's
    return data


# -- reading ------------------------------------------------------------------------------


def load_sides(names: Sequence[str], workdir: str | Path | None = None) -> list[Side]:
    """The sweeps to compare: each a name in `workdir` or the path of a sweep's folder.
    ConfigError for fewer than two, a sweep named twice, or one that does not exist."""
    if len(names) < 2:
        given = f"only {names[0]!r}" if names else "none"
        raise ConfigError(
            f"compare needs at least two sweeps (given {given}): moonsweep compare A B"
        )
    sides: list[Side] = []
    for name in names:
        state, folder = _load(name, workdir)
        if any(s.folder == folder for s in sides):
            raise ConfigError(f"sweep {name!r} is named twice; compare different sweeps")
        rows = trial_rows(state, all_metrics=True)
        sides.append(
            Side(
                state.name, state, folder, rows, compare_levels(state, rows), _settings(state, rows)
            )
        )
    labels = [s.name for s in sides]
    if len(set(labels)) < len(labels):  # same name in two work dirs: tell them apart
        for side in sides:
            side.name = f"{side.folder.parent.name}/{side.name}"
    return sides


def _load(name: str, workdir: str | Path | None) -> tuple[SweepState, Path]:
    path = Path(name)
    if (path / "sweep.json").is_file():  # a sweep's folder, wherever it is
        return load_state(path.name, path.parent)
    return load_state(name, workdir)


def _settings(state: SweepState, rows: Sequence[TrialRow]) -> dict[str, str]:
    """The training settings (MLflow params) of the sweep's first finished baseline that is
    not dense (the space's fixed settings with an arm's own), else of any finished trial."""
    done = [r for r in rows if r["state"] == "done"]
    ordered = sorted(done, key=lambda r: (r["arm"] in ("search", "dense"), r["arm"]))
    if not ordered:
        return {}
    params = mlflow_client(state.tracking_uri).get_run(ordered[0]["mlflow_run_id"]).data.params
    return {k: v for k, v in sorted(params.items()) if not k.startswith("searched.")}


# -- comparing ----------------------------------------------------------------------------


def compare_sweeps(names: Sequence[str], workdir: str | Path | None = None) -> Comparison:
    """Load the sweeps `names` (see `load_sides`) and compare them (`compare_sides`)."""
    return compare_sides(load_sides(names, workdir))


def compare_sides(sides: Sequence[Side]) -> Comparison:
    """The comparison of loaded sweeps on what they share; the rest in `left_out`."""
    left_out: list[str] = []
    first = sides[0]
    objectives = [o for o in first.objectives if all(o in s.objectives for s in sides)]
    unshared = list(dict.fromkeys(o for s in sides for o in s.objectives if o not in objectives))
    for metric, direction in unshared:
        having = [s.name for s in sides if (metric, direction) in s.objectives]
        others = [s.name for s in sides if (metric, direction) not in s.objectives]
        left_out.append(
            f"objective {metric} ({direction}) of {', '.join(having)}: not in "
            f"{', '.join(others)}, so not in the hypervolume nor the tables"
        )
    metrics = [
        m for m in level_metrics(first.state) if all(m in level_metrics(s.state) for s in sides)
    ]
    levels = [lv.density for lv in first.levels if all(s.level(lv.density) for s in sides)]
    for side in sides:
        if not side.levels:
            left_out.append(
                f"{side.name}: its space declares no density levels, so no per-level tables"
            )
    for density in sorted({lv.density for s in sides for lv in s.levels} - set(levels)):
        having = [s.name for s in sides if s.level(density)]
        others = [s.name for s in sides if not s.level(density)]
        left_out.append(
            f"density level {density:g} of {', '.join(having)}: not in {', '.join(others)}"
        )
    differs = _differences(sides)
    seeds = sorted(set.intersection(*(set(s.seeds) for s in sides)))
    data = {k: v for k, v in differs.items() if k.startswith("data.")}
    paired = bool(seeds) and not data
    if data:
        shown = "; ".join(f"{k} {' vs '.join(v)}" for k, v in data.items())
        left_out.append(f"paired deltas: the data differ ({shown}); figures side by side only")
    elif not seeds:
        left_out.append("paired deltas: no seed in common; figures side by side only")
    elif any(set(s.seeds) != set(seeds) for s in sides):
        left_out.append(
            "seeds of one sweep only: the paired deltas use the seeds in common, "
            + ", ".join(map(str, seeds))
        )
    deltas, settings = _sweep_deltas(sides, levels, metrics, seeds) if paired else ({}, {})
    reference, volumes, notes = _hypervolumes(sides, objectives)
    left_out += notes
    return Comparison(
        list(sides),
        objectives,
        metrics,
        levels,
        paired,
        seeds,
        deltas,
        reference,
        volumes,
        differs,
        left_out,
        settings,
    )


def _differences(sides: Sequence[Side]) -> dict[str, list[str]]:
    keys = sorted(set().union(*(s.settings for s in sides)) - set(IGNORED_SETTINGS))
    out = {}
    for key in keys:
        values = [s.settings.get(key, "-") for s in sides]
        if len(set(values)) > 1:
            out[key] = values
    return out


def _sweep_deltas(
    sides: Sequence[Side], levels: Sequence[float], metrics: Sequence[str], seeds: Sequence[int]
) -> tuple[
    dict[float, dict[str, dict[str, dict[str, Paired]]]], dict[float, dict[str, dict[str, str]]]
]:
    """Per level, each later sweep minus the first, arm by arm, over the shared seeds, both
    sides at one shared test-time setting (`sweep.contrasts.match`; MOON as published at its
    published one), Holm-corrected over the test table (the validation table apart); and
    each difference's setting in words."""
    base = sides[0]
    rule = pick_rule(base.state)
    out: dict[float, dict[str, dict[str, dict[str, Paired]]]] = {}
    settings: dict[float, dict[str, dict[str, str]]] = {}
    for density in levels:
        mine_level = base.level(density)
        per_pair: dict[str, dict[str, dict[str, Paired]]] = {}
        for side in sides[1:]:
            theirs = side.level(density)
            pair = f"{side.name} - {base.name}"
            arms: dict[str, dict[str, Paired]] = {}
            for arm, later in (theirs.arms if theirs else {}).items():
                earlier = mine_level.arms.get(arm) if mine_level else None
                if earlier is None or later.records is None or earlier.records is None:
                    continue
                # Seed s of the later sweep's arm minus seed s of the first's.
                mine = _only(later.records.variants, seeds)
                other = _only(earlier.records.variants, seeds)
                if arm == PUBLISHED:
                    kind = SAME if later.variant == earlier.variant else UNMATCHED
                    m = Match(later.variant, earlier.variant, kind)
                else:
                    m = match(mine, other, rule, (later.variant, earlier.variant))
                figures = {}
                for metric in metrics:
                    _, diffs = differences(mine, other, m, metric)
                    if diffs:
                        figures[metric] = paired_test(diffs)
                if figures:
                    arms[arm] = figures
                    settings.setdefault(density, {}).setdefault(pair, {})[arm] = m.setting
            per_pair[pair] = arms
        out[density] = per_pair
    for val in (False, True):
        correct(
            [
                p
                for per_pair in out.values()
                for arms in per_pair.values()
                for figures in arms.values()
                for metric, p in figures.items()
                if metric.startswith("val/") == val
            ]
        )
    return out, settings


def _only(per_seed: Mapping[int, Any], seeds: Sequence[int]) -> dict[int, Any]:
    return {s: per_seed[s] for s in seeds if s in per_seed}


def projected_study(
    study: optuna.Study, objectives: Sequence[tuple[str, str]], names: Sequence[str]
) -> optuna.Study:
    """An in-memory copy of `study` (objectives `names`) with only `objectives` as its values;
    states, constraints and trial order kept, so feasibility is as the sweep saw it."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    index = [list(names).index(m) for m, _ in objectives]
    copy = optuna.create_study(directions=[d for _, d in objectives])
    for trial in study.get_trials(deepcopy=False):
        complete = trial.state == optuna.trial.TrialState.COMPLETE
        copy.add_trial(
            optuna.trial.create_trial(
                state=trial.state if complete else optuna.trial.TrialState.FAIL,
                values=[trial.values[i] for i in index] if complete else None,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs=trial.user_attrs,
                system_attrs=trial.system_attrs,
            )
        )
    return copy


def _hypervolumes(
    sides: Sequence[Side], objectives: Sequence[tuple[str, str]]
) -> tuple[list[float] | None, dict[str, Volume], list[str]]:
    notes: list[str] = []
    if not objectives:
        return None, {}, ["hypervolume: the sweeps share no objective"]
    studies: dict[str, optuna.Study] = {}
    for side in sides:
        study = finished_study(side.state)  # trials that ran to the end only
        if study is None:
            notes.append(f"hypervolume of {side.name}: it has no Optuna study")
            continue
        names = [m for m, _ in side.objectives]
        studies[side.name] = projected_study(study, objectives, names)
    try:
        reference = nadir(list(studies.values()), REFERENCE_MARGIN) if studies else None
    except ValueError:
        reference = None
    if reference is None:
        notes.append("hypervolume: no complete searched trial in any sweep")
        return None, {}, notes
    volumes = {}
    for name, study in studies.items():
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        numbers, values = hypervolume_history(study, reference)
        volumes[name] = Volume(
            len(complete), sum(feasible(t) for t in complete), values[-1] if values else 0.0
        )
    return reference, volumes, notes


# -- showing ------------------------------------------------------------------------------


def _trial_label(arm: Any) -> str:
    return f"optuna {arm.optuna}" if arm.optuna >= 0 else arm.trial


def level_rows(
    c: Comparison, density: float, part: str = "test"
) -> tuple[list[str], list[list[str]]]:
    """One level's table: the metrics shown, then rows of (sweep, arm, trial, cells...): every
    sweep's arms, then the paired deltas of each later sweep against the first."""
    val = part == "val"
    metrics = [m for m in c.metrics if m.startswith("val/") == val]
    rows = []
    for side in c.sides:
        level = side.level(density)
        if level is not None and level.note:  # why the level has no best searched trial
            rows.append([side.name, SEARCHED, f"none: {level.note}", *["-"] * len(metrics)])
        for name, arm in (level.arms if level else {}).items():
            cells = [points_cell(arm.figures.get(m)) for m in metrics]
            rows.append([side.name, name, _trial_label(arm), *cells])
    for pair, arms in c.deltas.get(density, {}).items():
        for arm, figures in arms.items():
            n = max(i.n for i in figures.values())
            cells = [points_cell(figures.get(m), signed=True) for m in metrics]
            setting = c.delta_settings.get(density, {}).get(pair, {}).get(arm, "")
            rows.append([pair, arm, f"paired, {n} seeds, {setting}", *cells])
    return metrics, rows


def _markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]], right: int) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * right + "---:|" * (len(head) - right)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def volume_rows(c: Comparison) -> list[list[str]]:
    """(sweep, complete, feasible, hypervolume) for each sweep with a study."""
    return [
        [name, str(v.complete), str(v.feasible), f"{v.hypervolume:.4g}"]
        for name, v in c.volumes.items()
    ]


def reference_text(c: Comparison) -> str:
    if c.reference is None:
        return "no reference point"
    return ", ".join(f"{m} {v:.4g}" for (m, _), v in zip(c.objectives, c.reference, strict=True))


def comparison_markdown(c: Comparison, part: str = "test") -> str:
    """The per-level tables, the hypervolumes and what was left out, as markdown."""
    lines = [f"sweeps: {', '.join(c.names)} (deltas: each against {c.names[0]})"]
    for key, values in c.differs.items():
        lines.append(f"  {key}: {' | '.join(values)}")
    for density in c.levels:
        metrics, rows = level_rows(c, density, part)
        seeds = f"{len(c.seeds)} paired seeds" if c.paired else "not paired"
        lines += [
            "",
            f"density {density:g} ({part} split, {seeds}, points x100; higher is better but for "
            "ece and fpr95):",
            "",
            *_markdown_table(["sweep", "arm", "trial", *metrics], rows, 3),
        ]
    lines += [
        "",
        "hypervolume of the searched trials (complete, feasible), under one reference point "
        f"(the nadir of all, {REFERENCE_MARGIN:.0%} of each range further out): "
        f"{reference_text(c)}",
        "",
        *_markdown_table(["sweep", "complete", "feasible", "hypervolume"], volume_rows(c), 1),
    ]
    if c.left_out:
        lines += ["", "left out:", *(f"- {line}" for line in c.left_out)]
    return "\n".join(lines)


def tradeoff_png(c: Comparison) -> bytes:
    """The trade-off curves of every sweep on one plot (test parts), as PNG bytes."""
    shown = [m for m in plots.TRADEOFF_METRICS if m in c.metrics]
    per_sweep = {s.name: [_level_dict(lv, c.metrics) for lv in s.levels] for s in c.sides}
    fig = plots.sweeps_tradeoff(
        per_sweep, metrics=shown or list(plots.TRADEOFF_METRICS), scale=plots.POINTS
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def comparison_html(c: Comparison, images: dict[str, bytes], generated: str) -> str:
    """The comparison as one self-contained page (like `moonsweep report`'s)."""
    esc = html.escape
    title = "moonsweep compare: " + " vs ".join(c.names)
    head = ["sweep", "space", "objectives", "seeds", "levels", "MLflow parent run"]
    body = [
        [
            s.name,
            s.state.space_source,
            ", ".join(f"{m} ({d})" for m, d in s.objectives),
            ", ".join(map(str, s.seeds)),
            ", ".join(f"{lv.density:g}" for lv in s.levels) or "none",
            f"{s.state.parent_run_id} (experiment {s.state.experiment_id}, "
            f"{mask_url(s.state.tracking_uri)})",
        ]
        for s in c.sides
    ]
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p class=note>Generated {esc(generated)}. Deltas: each sweep against "
        f"{esc(c.names[0])}, seed by seed.</p>",
        html_table(head, body, css="kv"),
    ]
    if c.differs:
        parts.append("<h2>Settings that differ</h2>")
        parts.append(html_table(["setting", *c.names], [[k, *v] for k, v in c.differs.items()]))
    parts.append("<h2>Left out</h2>")
    items = c.left_out or ["nothing: the sweeps share their objectives, levels, data and seeds"]
    parts.append("<ul class=leftout>" + "".join(f"<li>{esc(x)}</li>" for x in items) + "</ul>")
    parts.append("<h2>Trade-off curves</h2>")
    parts.append(
        html_figure(
            images,
            "tradeoff.png",
            "Test parts; per sweep (colour) and arm (line style) the mean over its seeds at "
            "each of its density levels; the band is the "
            f"{int(CONFIDENCE * 100)}% t-interval of each sweep's best searched trial (cut at 0 "
            "and 1); dense as a dotted horizontal line per sweep.",
        )
    )
    parts.append("<h2>At equal density</h2>")
    parts.append(
        f"<p class=note>Points (x100); mean and {int(CONFIDENCE * 100)}% t-interval over the "
        "seeds; paired deltas are per seed (later sweep minus the first, same arm, same "
        "seed, both at one shared test-time setting, named in the row; * where Holm's "
        "correction over the comparison's table leaves p < 0.05).</p>"
    )
    for part, label in (("test", "test parts"), ("val", "validation parts")):
        tables = []
        for density in c.levels:
            metrics, rows = level_rows(c, density, part)
            tables.append(
                f"<h3>density {density:g}, {label}</h3>"
                + html_table(["sweep", "arm", "trial", *metrics], rows, css="level")
            )
        if part == "test":
            parts += tables
        else:
            parts.append(
                "<details><summary>Validation parts (what chose each best searched trial)"
                "</summary>" + "".join(tables) + "</details>"
            )
    parts.append("<h2>Hypervolume, one reference point</h2>")
    parts.append(
        "<p class=note>The searched trials that ran to the end; the reference point is, per "
        "shared objective, the worst value over the complete feasible trials of every compared "
        f"sweep, moved out by {REFERENCE_MARGIN:.0%} of that objective's range (so a trial at "
        f"the worst value still adds volume): {esc(reference_text(c))}.</p>"
    )
    parts.append(
        html_table(["sweep", "complete", "feasible", "hypervolume"], volume_rows(c), css="hv")
    )
    parts.append("</body></html>")
    return "\n".join(parts)


# -- writing ------------------------------------------------------------------------------


def default_out(c: Comparison) -> Path:
    """`<the first sweep's work dir>/compare/<A>-vs-<B>...`."""
    slug = "-vs-".join(n.replace("/", "_") for n in c.names)
    return c.sides[0].folder.parent / "compare" / slug


@dataclass
class Written:
    folder: Path
    html: Path
    images: list[Path]
    run_id: str | None = None  # the MLflow run that holds it
    tracking_uri: str | None = None


def write_comparison(c: Comparison, out: Path) -> Written:
    """`compare.html` (self-contained), `tradeoff.png`, `compare.json`, `compare.md` in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    images = {"tradeoff.png": tradeoff_png(c)}
    for name, data in images.items():
        (out / name).write_bytes(data)
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    save_json(out / "compare.json", {"generated": generated, **c.as_dict()})
    (out / "compare.md").write_text(
        comparison_markdown(c) + "\n\n" + comparison_markdown(c, "val") + "\n"
    )
    (out / "compare.html").write_text(comparison_html(c, images, generated))
    return Written(out, out / "compare.html", [out / n for n in images])


def comparison_table(c: Comparison) -> dict[str, list[Any]]:
    """The per-level tables as columns (one row per level, sweep and arm, then per paired
    delta), each shared figure as mean, low and high: the shape `mlflow.log_table` takes."""
    entries: list[tuple[float, str, str, str, dict[str, Interval]]] = []
    for density in c.levels:
        for side in c.sides:
            level = side.level(density)
            for name, arm in (level.arms if level else {}).items():
                entries.append((density, side.name, name, "arm", arm.figures))
        for pair, arms in c.deltas.get(density, {}).items():
            entries += [(density, pair, arm, "paired delta", f) for arm, f in arms.items()]
    columns: dict[str, list[Any]] = {k: [] for k in ("density", "sweep", "arm", "kind", "n")}
    for m in c.metrics:
        columns.update({m: [], f"{m} low": [], f"{m} high": []})
    for density, sweep, arm, kind, figures in entries:
        shown = {m: figures[m] for m in c.metrics if m in figures}
        columns["density"].append(density)
        columns["sweep"].append(sweep)
        columns["arm"].append(arm)
        columns["kind"].append(kind)
        columns["n"].append(max((i.n for i in shown.values()), default=0))
        for m in c.metrics:
            i = shown.get(m)
            columns[m].append(None if i is None else i.mean)
            columns[f"{m} low"].append(None if i is None else i.low)
            columns[f"{m} high"].append(None if i is None else i.high)
    return columns


def log_comparison(c: Comparison, written: Written, tracking_uri: str | None = None) -> Written:
    """A run in the `moonsweep-compare` experiment (of the first sweep's tracking store, or
    `tracking_uri`) that links the sweeps' parent runs (tags, and a description with links)
    and holds the page, the plot, the table and the JSON under `compare/`."""
    first = c.sides[0].state
    uri = tracking_uri or first.tracking_uri
    client = mlflow_client(uri)
    root = None
    if not is_server(uri):  # the sweeps' own artifact folder (not ./mlruns where it runs)
        root = (
            client.get_experiment(first.experiment_id).artifact_location
            if uri == first.tracking_uri
            else None
        )
    experiment = ensure_experiment(client, COMPARE_EXPERIMENT, root, EXPERIMENT_TAGS)
    tags = {
        "moonsweep.kind": "compare",
        "moonsweep.compare.sweeps": ",".join(c.names),
        "mlflow.note.content": _description(c, uri),
    }
    for side in c.sides:
        key = f"moonsweep.compare.{side.name.replace('/', '.')}"
        tags[f"{key}.parent_run_id"] = side.state.parent_run_id
        tags[f"{key}.experiment_id"] = side.state.experiment_id
        tags[f"{key}.tracking_uri"] = mask_url(side.state.tracking_uri)
    run = client.create_run(experiment, run_name=" vs ".join(c.names), tags=tags)
    run_id = run.info.run_id
    for i, (metric, _) in enumerate(c.objectives):
        if c.reference is not None:
            client.log_param(run_id, f"reference.{metric}", f"{c.reference[i]:.6g}")
    for name, volume in c.volumes.items():
        client.log_metric(run_id, f"hypervolume/{name.replace('/', '.')}", volume.hypervolume)
    client.log_table(run_id, data=comparison_table(c), artifact_file=f"{ARTIFACT_DIR}/levels.json")
    client.log_artifacts(run_id, str(written.folder), artifact_path=ARTIFACT_DIR)
    client.set_terminated(run_id, "FINISHED")
    written.run_id, written.tracking_uri = run_id, uri
    return written


def _description(c: Comparison, uri: str) -> str:
    """Markdown for the run's description: a link to each sweep's parent run (relative to
    the UI, for the sweeps in this tracking store)."""
    lines = ["Compared by `moonsweep compare " + " ".join(c.names) + "`:", ""]
    for side in c.sides:
        state = side.state
        if state.tracking_uri == uri:
            # A new tab opens in the UI's default (GenAI) mode unless the link says otherwise.
            link = f"#/experiments/{state.experiment_id}/runs/{state.parent_run_id}?{WORKFLOW}"
            lines.append(f"- [{side.name}]({link}) (experiment {state.experiment_id})")
        else:
            lines.append(
                f"- {side.name}: run {state.parent_run_id} in {mask_url(state.tracking_uri)}"
            )
    return "\n".join(lines)


def describe_written(written: Written) -> str:
    line = f"wrote {written.html} and {len(written.images)} PNG beside it"
    if written.run_id:
        line += (
            f"\nlogged to MLflow run {written.run_id} (experiment {COMPARE_EXPERIMENT}) "
            f"under {ARTIFACT_DIR}/"
        )
    return line


def as_json(c: Comparison) -> str:
    return json.dumps(c.as_dict(), indent=2, default=str)
