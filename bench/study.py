"""Paired-seed study of MOON at equal density: moon_auto vs sparse vs sparse+voting vs dense.

The arms are engine/arms.py's, the one definition the sweep uses too. At every density level
(`--densities`; default: the preset's density, or `--set sparsity.density`) three arms are
trained with the preset's sparse method (RigL unless `--set sparsity.method=...`):
    moon_auto      MOON as published: unknown output, auto-tuned alpha, voting
    sparse         the same sparse training without any of MOON's pieces (cosine lr to the end)
    sparse+voting  sparse plus MOON's voting alone
and `dense` once (no mask, no MOON, no voting). Each arm is trained with seeds 0..N-1
(`seed=<s>`); the data split stays fixed (data.split_seed), so every arm of every level sees
the same seeds and the same split.

Test-time settings, as the sweep treats them (engine/test_time.py): every training is
evaluated on the test-time grid of the default search space (search_spaces/default.yaml,
`test_time`: voting mode x score x DICE percentile; the voting modes for the arms that vote
only, the `unknown` score for MOON only). Each arm keeps every variant's figures per seed
and picks its variant by the grid's rule on validation means (maximize val/auroc_near), as a
sweep's trial does; its published variant is the config's own (msp, its voting mode).

Prints, all figures in percent (x100) of the test-split metrics, per level:
  1. per arm at its pick (the variant named), and `moon_auto (published)` at msp as in the
     paper: mean +- std over seeds of accuracy, auroc_near, auroc_far, ece, fpr95_near;
  2. paired per-seed contrasts, each at one shared setting (sweep/contrasts.py `match`: the
     same score, the same voting mode where both vote, picked jointly on validation):
     moon_auto - sparse, sparse+voting - sparse, moon_auto - sparse+voting, each sparse arm
     - dense; the score choice per arm, `picked - msp` (same trained models, same voting
     mode); and the published contrast moon_auto (msp) - sparse (msp). Each: mean, 95%
     t-interval, paired t and Wilcoxon p (sweep/stats.py `paired_test`); Holm's correction
     over the whole test table (every level, contrast and metric, and dense's score choice;
     `correct`), * only where Holm's p < 0.05. A contrast equal on every seed has no
     interval, no p and no star;
  3. a verdict per level on near-OOD AUROC from the corrected figures;
  4. MOON's activity: median alpha_0 and the training error after warm-up (the share of
     samples MOON's weight acts on).
Progress goes to stderr, one line per finished run. `--json` also writes every run's config,
its published variant's full metric dict and every variant's figures, and each contrast's
p-values (t, Wilcoxon, Holm), so any figure can be re-derived; `--plot` writes the trade-off
plot (near-OOD AUROC, accuracy, ECE against density at each arm's pick, 95% interval bands).

Run (from the repository root; about 1-2 s per run on one core, 13 runs per seed for 4 levels):
    .venv/bin/python bench/study.py --seeds 20 --densities 0.02,0.05,0.1,0.2 --jobs 2 \\
        --json bench/out/study-levels.json --plot bench/study-levels.png
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running `python bench/study.py` puts bench/ first on sys.path, where bench/engine.py would
# shadow the project's `engine` package; drop that entry before importing it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from functools import cache  # noqa: E402
from typing import Any  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # no display: the plot is only written to a file

import torch  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import stats  # noqa: E402

from engine.arms import DESCRIPTIONS, arm_overrides  # noqa: E402
from engine.config import (  # noqa: E402
    ConfigError,
    TrainConfig,
    apply_overrides,
    format_value,
    load_config,
    resolve_source,
)
from engine.sparse_methods import DENSE  # noqa: E402
from engine.test_time import (  # noqa: E402
    TestTime,
    collected_modes,
    pick,
    variant_figures,
    variant_name,
    variants,
)
from engine.train import Run  # noqa: E402
from sweep.contrasts import (  # noqa: E402
    UNMATCHED,
    Match,
    Variants,
    candidates,
    differences,
    match,
    means,
    msp_of,
    names,
)
from sweep.spaces import load_space  # noqa: E402
from sweep.stats import Paired, correct, paired_test  # noqa: E402

PRESET = "default"
SPACE = "default"  # whose `test_time` grid every training is evaluated on
METRICS = ("accuracy", "auroc_near", "auroc_far", "ece", "fpr95_near")
SPARSE_ARMS = ("moon_auto", "sparse", "sparse+voting")
DENSE_ARM = "dense"
# Within a level (same density, method, seeds, split): which of MOON's pieces does the work.
COMPARISONS = (
    ("moon_auto", "sparse"),
    ("sparse+voting", "sparse"),
    ("moon_auto", "sparse+voting"),
    ("moon_auto", DENSE_ARM),
    ("sparse", DENSE_ARM),
    ("sparse+voting", DENSE_ARM),
)
# The score choice, per arm: the picked variant against msp in the same voting mode.
SCORE_CHOICE = (*SPARSE_ARMS, DENSE_ARM)
PUBLISHED = "moon_auto (published)"
# The paper's setting: each side at its own config's variant (msp).
PUBLISHED_CONTRAST = (PUBLISHED, "sparse (published)")
# Each level's verdicts, on VERDICT_METRIC: (contrast, what mine is, what theirs is).
VERDICT_METRIC = "auroc_near"
VERDICTS = (
    ("moon_auto - sparse", "MOON", "plain sparse training"),
    ("sparse+voting - sparse", "voting alone", "plain sparse training"),
    ("moon_auto - sparse+voting", "MOON", "voting alone"),
)
PLOTTED = (("auroc_near", "near-OOD AUROC (%)"), ("accuracy", "accuracy (%)"), ("ece", "ECE (%)"))

# One training run: (arm, density level or None for dense, seed, common overrides).
Task = tuple[str, float | None, int, list[str]]


def fit_schedule(overrides: list[str]) -> list[str]:
    """Extra overrides so an `--epochs` shorter than the preset's warm-up (5) or voting (8)
    epochs stays valid; both shrink, keeping their share of the run. Computed from the
    common overrides alone, so every arm gets the same schedule."""
    data = apply_overrides(resolve_source(PRESET), list(overrides))
    epochs = int(data.get("epochs", 100))
    moon = data.get("moon", {})
    voting = data.get("voting", {})
    extra = []
    if int(moon.get("warmup_epochs", 5)) >= epochs:
        extra.append(f"moon.warmup_epochs={max(1, min(epochs - 1, epochs // 8))}")
    if int(voting.get("epochs", 20)) > epochs:
        extra.append(f"voting.epochs={max(1, epochs // 5)}")
    return extra


def build_config(arm: str, density: float | None, common: list[str], seed: int) -> TrainConfig:
    """The config of `arm` at `density` (None: dense) for `seed`, on the common overrides."""
    settings = [f"{k}={format_value(v)}" for k, v in arm_overrides(arm, density).items()]
    return load_config(PRESET, [*common, *fit_schedule(common), *settings, f"seed={seed}"])


@cache
def test_time() -> TestTime:
    """The test-time grid every training is evaluated on: the default search space's."""
    return load_space(SPACE).test_time or TestTime()


def grid_names(cfg: TrainConfig) -> list[str]:
    """The variants of `cfg` on the grid (those its scores and voting allow), in grid order."""
    tt = test_time()
    grid = tt.grid(cfg.voting.mode != "off", list(cfg.eval.scores), cfg.eval.dice_percentile)
    return [v.name for v in grid]


def run_task(task: Task) -> dict[str, Any]:
    """Train one arm at one level for one seed, evaluate every test-time variant; its record
    for the JSON (picklable)."""
    arm, density, seed, common = task
    cfg = build_config(arm, density, common, seed)
    tt = test_time()
    started = time.perf_counter()
    # The same training as engine.train.train(cfg); it also keeps the snapshots the grid's
    # other voting mode folds (the training does not depend on which modes are kept).
    run = Run(cfg, None, collected_modes(cfg, tt))
    while not run.done:
        run.train_epoch()
    evaluated = variants(run, tt)
    by_name = {variant_name(v.config): v for v in evaluated}
    published = variant_name(cfg)
    hist = run.history
    warm = cfg.moon.warmup_epochs
    active = hist[warm:] if cfg.moon.enabled else []
    # MOON up-weights only misclassified samples, so the training error over the epochs after
    # warm-up (running, per batch) is the share of samples its loss acts on; alpha_0 its scale.
    return {
        "arm": arm,
        "density": density,
        "seed": seed,
        "seconds": time.perf_counter() - started,
        "alpha0": active[0]["alpha"] if active else None,
        "train_error_moon_epochs": (
            statistics.fmean(1.0 - h["train_accuracy"] for h in active) if active else None
        ),
        "final_train_accuracy": hist[-1]["train_accuracy"],
        "achieved_density": hist[-1]["density"],
        "config": cfg.model_dump(mode="json"),
        # The published variant's every figure (those of `train(cfg)`), then every variant's
        # compact figures (test and validation; engine.test_time.variant_figures).
        "published": published,
        "metrics": by_name[published].metrics,
        "variants": {name: variant_figures(v.metrics) for name, v in by_name.items()},
    }


def spread(values: list[float]) -> dict[str, float]:
    """Mean, std and the 95% t-interval of the mean over seeds (the plot's bands)."""
    n = len(values)
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "std": sd, "ci_low": mean - half, "ci_high": mean + half}


def level_key(density: float) -> str:
    return f"{density:g}"


def parse_densities(text: str) -> list[float]:
    """`0.02,0.05` -> [0.02, 0.05]; ValueError naming what is wrong and what is allowed."""
    levels = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"{item.strip()!r} is not a number") from None
        if not 0 < value < 1:
            raise ValueError(f"{value:g} is not a sparse density; allowed: 0 < density < 1")
        levels.append(value)
    if len(set(levels)) != len(levels):
        raise ValueError("a density is listed twice")
    return sorted(levels)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (at least 2)")
    ap.add_argument(
        "--densities",
        default=None,
        metavar="D1,D2,...",
        help="density levels, comma-separated, each in (0, 1) (default: the preset's)",
    )
    ap.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", type=Path, default=None, help="also write summary and raw runs")
    ap.add_argument("--plot", type=Path, default=None, help="write the trade-off plot (.png)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads per process")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (results identical)")
    args = ap.parse_args(argv)
    if args.seeds < 2:
        ap.error("--seeds must be at least 2 for an interval")
    if args.jobs < 1 or args.threads < 1:
        ap.error("--jobs and --threads must be at least 1")
    if args.epochs is not None and args.epochs < 2:
        ap.error("--epochs must be at least 2 (MOON's warm-up needs an epoch before the end)")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        ap.error(f"--plot {args.plot}: the plot is a PNG; name a file ending in .png")
    for item in args.overrides:
        key = item.partition("=")[0].strip()
        if key == "sparsity.density" and args.densities is not None:
            ap.error("--set sparsity.density and --densities: give the levels with one of them")
        if key == "seed":
            ap.error("--set seed: the seeds are 0..N-1, set their number with --seeds")
    try:
        args.common = [*args.overrides, *([f"epochs={args.epochs}"] if args.epochs else [])]
        base = load_config(PRESET, [*args.common, *fit_schedule(args.common)])
        args.densities = (
            [base.sparsity.density] if args.densities is None else parse_densities(args.densities)
        )
        for arm in (*SPARSE_ARMS, DENSE_ARM):  # every arm's config is valid before any trains
            cfg = build_config(arm, args.densities[0], args.common, 0)
            if variant_name(cfg) not in grid_names(cfg):
                raise ConfigError(
                    f"{arm}'s own test-time setting {variant_name(cfg)} is not on the grid of "
                    f"search space {SPACE!r} ({', '.join(grid_names(cfg))}): its published "
                    "figures would be missing"
                )
    except ConfigError as exc:
        ap.error(str(exc))
    except ValueError as exc:
        ap.error(f"--densities: {exc}")
    if base.sparsity.method == DENSE:
        ap.error("--set sparsity.method=dense: the levels need a sparse method (rigl, set, ...)")
    return args


def tasks(seeds: int, densities: list[float], common: list[str]) -> list[Task]:
    # Seeds outermost: a slow spell of the machine hits the arms of a seed alike.
    out: list[Task] = []
    for seed in range(seeds):
        out.append((DENSE_ARM, None, seed, common))
        out += [(arm, d, seed, common) for d in densities for arm in SPARSE_ARMS]
    return out


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def execute(todo: list[Task], jobs: int, threads: int) -> Iterator[dict[str, Any]]:
    """The runs' records in the order of `todo`, trained in `jobs` processes."""
    if jobs == 1:
        _init_worker(threads)
        yield from map(run_task, todo)
        return
    # spawn: a fresh interpreter per worker (no forked torch thread pools); each worker runs
    # whole trainings with its own thread count, so a run's figures do not depend on --jobs.
    ctx = multiprocessing.get_context("spawn")
    # Workers start with this process's sys.path. One that loaded an MLflow model in-process
    # has the model's code copy first (MLflow puts it there), and workers would import the
    # engine from that copy, without the presets beside it: this checkout's root goes first.
    saved = list(sys.path)
    sys.path.insert(0, str(_HERE.parent))
    try:
        with ctx.Pool(jobs, initializer=_init_worker, initargs=(threads,)) as pool:
            yield from pool.imap(run_task, todo)
    finally:
        sys.path[:] = saved


def arm_variants(runs: list[dict[str, Any]], arm: str, density: float | None) -> Variants:
    """seed -> variant name -> figures of one arm at one level (None: dense)."""
    chosen = [r for r in runs if r["arm"] == arm and r["density"] == density]
    return {r["seed"]: r["variants"] for r in sorted(chosen, key=lambda r: r["seed"])}


def picked(per_seed: Variants) -> str:
    """The variant the grid's rule keeps on the validation means over seeds (as a sweep's
    trial does, sweep/trial.py `_finish`); no test figure takes part."""
    available = names(per_seed)
    return available[pick([means(per_seed, n) for n in available], test_time().pick)]


def arm_row(per_seed: Variants, variant: str) -> dict[str, Any]:
    """An arm's row at `variant`: mean, std and 95% interval over seeds of each metric."""
    return {
        "variant": variant,
        "summary": {
            k: spread([per_seed[s][variant][k] for s in sorted(per_seed)]) for k in METRICS
        },
    }


def contrast(mine: Variants, theirs: Variants, m: Match, setting: str) -> dict[str, Any]:
    """Paired per-seed differences `mine - theirs` at the variants of `m`, every metric
    (Paired objects until `finish` turns them into dicts)."""
    return {
        "setting": setting,
        "variants": [m.mine, m.theirs],
        "kind": m.kind,
        "figures": {k: paired_test(differences(mine, theirs, m, k)[1]) for k in METRICS},
    }


def score_choice(per_seed: Variants, variant: str) -> dict[str, Any] | None:
    """picked - msp on the same trained models, same voting mode (None without an msp)."""
    msp = msp_of(variant, names(per_seed))
    if msp is None:
        return None
    m = Match(variant, msp, "same training")
    return contrast(per_seed, per_seed, m, f"{variant} vs {msp} (same models)")


def summarize(runs: list[dict[str, Any]], densities: list[float]) -> dict[str, Any]:
    rule = test_time().pick
    dense = arm_variants(runs, DENSE_ARM, None)
    dense_pick = picked(dense)
    dense_published = runs_published(runs, DENSE_ARM)
    dense_out = {
        **arm_row(dense, dense_pick),
        "published": dense_published,
        "score_choice": score_choice(dense, dense_pick),
    }
    levels = {}
    for d in densities:
        per_arm = {arm: arm_variants(runs, arm, d) for arm in SPARSE_ARMS}
        per_arm[DENSE_ARM] = dense
        picks = {arm: picked(v) for arm, v in per_arm.items()}
        published = {arm: runs_published(runs, arm) for arm in SPARSE_ARMS}
        arms = {arm: arm_row(per_arm[arm], picks[arm]) for arm in SPARSE_ARMS}
        arms[PUBLISHED] = arm_row(per_arm["moon_auto"], published["moon_auto"])
        contrasts = {}
        for a, b in COMPARISONS:
            m = match(per_arm[a], per_arm[b], rule, (picks[a], picks[b]))
            contrasts[f"{a} - {b}"] = contrast(per_arm[a], per_arm[b], m, m.setting)
        for arm in SPARSE_ARMS:
            choice = score_choice(per_arm[arm], picks[arm])
            if choice is not None:
                contrasts[f"{arm}: picked - msp"] = choice
        pub_a, pub_b = published["moon_auto"], published["sparse"]
        m = next(iter(candidates([pub_a], [pub_b])), Match(pub_a, pub_b, UNMATCHED))
        contrasts[f"{PUBLISHED_CONTRAST[0]} - {PUBLISHED_CONTRAST[1]}"] = contrast(
            per_arm["moon_auto"], per_arm["sparse"], m, f"as published: {m.setting}"
        )
        moon = [r for r in runs if r["arm"] == "moon_auto" and r["density"] == d]
        alpha0 = [r["alpha0"] for r in moon if r["alpha0"] is not None]
        err = [e for r in moon if (e := r["train_error_moon_epochs"]) is not None]
        levels[level_key(d)] = {
            "density": d,
            "achieved_density": statistics.fmean(
                r["achieved_density"] for r in runs if r["density"] == d
            ),
            "arms": arms,
            "contrasts": contrasts,
            "moon_activity": {
                "alpha0_median": statistics.median(alpha0) if alpha0 else None,
                "train_error_moon_epochs_mean": statistics.fmean(err) if err else None,
                "train_error_moon_epochs_max": max(err) if err else None,
            },
        }
    return finish({"dense": dense_out, "levels": levels})


def runs_published(runs: list[dict[str, Any]], arm: str) -> str:
    """The arm's published variant (its config's own; the same on every run)."""
    return next(r["published"] for r in runs if r["arm"] == arm)


def finish(summary: dict[str, Any]) -> dict[str, Any]:
    """Holm over the whole test table (every level, contrast and metric, and dense's score
    choice), each level's verdicts from the corrected figures, then every Paired as a dict
    (its p-values: t, Wilcoxon, Holm)."""
    tables = [c for lv in summary["levels"].values() for c in lv["contrasts"].values()]
    if summary["dense"]["score_choice"] is not None:
        tables.append(summary["dense"]["score_choice"])
    family: list[Paired] = [p for c in tables for p in c["figures"].values()]
    correct(family)
    summary["holm"] = {
        "method": "Holm over the test table (paired t p-values)",
        "family": sum(p.p_t is not None for p in family),
        "alpha": 0.05,
    }
    for key, lv in summary["levels"].items():
        lv["verdicts"] = [
            verdict(key, lv["contrasts"][name], mine, theirs)
            for name, mine, theirs in VERDICTS
            if name in lv["contrasts"]
        ]
    for c in tables:
        c["figures"] = {k: finite(p.as_dict()) for k, p in c["figures"].items()}
    return summary


def finite(d: dict[str, Any]) -> dict[str, Any]:
    """NaN figures (no interval: no spread) as None, for a strict JSON."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}


def delta_text(p: Paired) -> str:
    """A paired difference in points: `+1.0 [+0.3, +1.7]`, or `+0.0 on every seed`."""
    if not p.spread:
        return f"{100 * p.mean:+.1f} on every seed"
    return f"{100 * p.mean:+.1f} [{100 * p.low:+.1f}, {100 * p.high:+.1f}]"


def verdict(level: str, c: dict[str, Any], mine: str, theirs: str) -> str:
    """One contrast's answer in words on near-OOD AUROC (higher is better), from the
    corrected figures: who beats whom where Holm's correction shows it, else within noise."""
    p: Paired = c["figures"][VERDICT_METRIC]
    where = c["setting"] + (" (not like with like)" if c["kind"] == UNMATCHED else "")
    if not p.spread:
        return f"{level}: {mine} vs {theirs}: {delta_text(p)} near-OOD AUROC {where} (no spread)"
    if p.shown:
        if p.mean > 0:
            first, second, text = mine, theirs, delta_text(p)
        else:  # the interval reads from the winner's side
            flipped = Paired(-p.mean, -p.high, -p.low, p.n, p.p_t)
            first, second, text = theirs, mine, delta_text(flipped)
        return (
            f"{level}: {first} beats {second} by {text} near-OOD AUROC {where} "
            f"(shown after Holm over {p.family}, p = {p.p_holm:.2g})"
        )
    return (
        f"{level}: {mine} is within noise of {theirs}: {delta_text(p)} near-OOD AUROC {where} "
        f"(Holm p = {p.p_holm:.2g} over {p.family})"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    todo = tasks(args.seeds, args.densities, args.common)
    runs: list[dict[str, Any]] = []
    for rec in execute(todo, args.jobs, args.threads):
        runs.append(rec)
        m = rec["metrics"]
        where = "" if rec["density"] is None else f"@{rec['density']:g}"
        print(
            f"[{len(runs)}/{len(todo)}] seed {rec['seed']:2d}  {rec['arm'] + where:<19}  "
            + "  ".join(f"{k} {m[k]:.4f}" for k in METRICS)
            + f"  at {rec['published']}, {len(rec['variants'])} variants ({rec['seconds']:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    cfg0 = build_config("moon_auto", args.densities[0], args.common, 0)
    return {
        "settings": {
            "preset": PRESET,
            "seeds": list(range(args.seeds)),
            "densities": args.densities,
            "overrides": args.common,
            "sparse_method": cfg0.sparsity.method,
            "arms": {
                arm: {"overrides": arm_overrides(arm), "description": DESCRIPTIONS[arm]}
                for arm in (*SPARSE_ARMS, DENSE_ARM)
            },
            "suite": cfg0.data.suite,
            "split_seed": cfg0.data.split_seed,
            "epochs": cfg0.epochs,
            "warmup_epochs": cfg0.moon.warmup_epochs,
            "voting": cfg0.voting.model_dump(),
            "primary_score": cfg0.eval.primary,
            "test_time": {
                "space": SPACE,
                **test_time().model_dump(mode="json", by_alias=True),
                "rule": test_time().pick.describe(),
            },
        },
        "environment": {
            "torch": torch.__version__,
            "threads_per_job": args.threads,
            "jobs": args.jobs,
            "cpus": os.cpu_count(),
        },
        "wall_seconds": time.perf_counter() - started,
        **summarize(runs, args.densities),
        "runs": runs,
    }


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def delta_cell(d: dict[str, Any]) -> str:
    """A contrast's cell in points: mean, * where Holm shows it, [95% interval], Holm p;
    a contrast equal on every seed has neither interval nor p."""
    if d["p_t"] is None:
        return f"{100 * d['mean']:+.2f} (every seed)"
    return (
        f"{100 * d['mean']:+.2f}{'*' if d['shown'] else ''} "
        f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] p {d['p_holm']:.2g}"
    )


def report(res: dict[str, Any]) -> str:
    s = res["settings"]
    tt = s["test_time"]
    n = len(s["seeds"])
    holm = res["holm"]
    header = "| {} | " + " | ".join(METRICS) + " |"
    rule = "|---|" + "---:|" * len(METRICS)
    grid = " x ".join(
        f"{k} [{', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in tt[k])}]"
        for k in ("voting.mode", "eval.primary", "eval.dice_percentile")
    )
    lines = [
        f"suite {s['suite']} (split_seed {s['split_seed']}), {s['epochs']} epochs (warm-up "
        f"{s['warmup_epochs']}), {s['sparse_method']} at densities "
        f"{', '.join(f'{d:g}' for d in s['densities'])}, voting (last {s['voting']['epochs']} "
        f"epochs) in moon_auto and sparse+voting only, seeds 0..{n - 1} paired; overrides: "
        f"{' '.join(s['overrides']) or 'none'}",
        f"test-time grid of search space {tt['space']!r}: {grid}; each arm picks by "
        f"{tt['rule']} (validation means over seeds)",
        "",
        "All figures in percent (x100), test split. Arms: mean +- std over seeds, each at its "
        "picked variant; moon_auto (published) at its config's own (msp, as in the paper). "
        f"Contrasts: paired over {n} seeds, in points: mean [95% t-interval] and Holm's p, each "
        "at one shared setting (same score, same voting mode where both vote; picked jointly "
        "on validation); score choice: picked - msp on the same trained models. "
        f"Multiplicity: Holm over the whole test table, {holm['family']} comparisons (levels x "
        "contrasts x metrics, and dense's score choice); * = Holm's p < 0.05. (every seed): "
        "the same difference on every seed, no interval, no test. Higher is better for "
        "accuracy and AUROC, lower for ece and fpr95.",
    ]
    dense = res["dense"]
    for key, lv in res["levels"].items():
        lines += [
            "",
            f"### density {key} (achieved {lv['achieved_density']:.4f})",
            "",
            header.format("arm @ variant"),
            rule,
        ]
        for arm, m in [*lv["arms"].items(), (DENSE_ARM, dense)]:
            cells = [
                f"{_pct(m['summary'][k]['mean'])} +- {_pct(m['summary'][k]['std'])}"
                for k in METRICS
            ]
            lines.append(f"| {arm} @ {m['variant']} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "| contrast | setting | " + " | ".join(METRICS) + " |",
            "|---|---|" + "---|" * len(METRICS),
        ]
        for name, c in lv["contrasts"].items():
            cells = " | ".join(delta_cell(c["figures"][k]) for k in METRICS)
            lines.append(f"| {name} | {c['setting']} | {cells} |")
        act = lv["moon_activity"]
        if act["alpha0_median"] is not None:
            err_mean = 100 * act["train_error_moon_epochs_mean"]
            err_max = 100 * act["train_error_moon_epochs_max"]
            lines += [
                "",
                f"MOON activity (moon_auto): median alpha_0 {act['alpha0_median']:.4g}; "
                f"training error over the epochs after warm-up {err_mean:.3f}% mean, "
                f"{err_max:.3f}% at most (the share of samples MOON's weight acts on)",
            ]
        lines += ["", "Verdicts:", *(f"- {v}" for v in lv["verdicts"])]
    choice = dense["score_choice"]
    if choice is not None:
        cells = " | ".join(delta_cell(choice["figures"][k]) for k in METRICS)
        lines += [
            "",
            "### dense (once, every level's reference)",
            "",
            "| contrast | setting | " + " | ".join(METRICS) + " |",
            "|---|---|" + "---|" * len(METRICS),
            f"| {DENSE_ARM}: picked - msp | {choice['setting']} | {cells} |",
        ]
    lines += [
        "",
        f"Verdict per level (near-OOD AUROC, Holm over {holm['family']}):",
        *(f"- {lv['verdicts'][0]}" for lv in res["levels"].values() if lv["verdicts"]),
    ]
    env = res["environment"]
    lines += [
        "",
        f"wall time {res['wall_seconds']:.0f} s ({len(res['runs'])} runs, {env['jobs']} "
        f"job(s) x {env['threads_per_job']} thread(s)), torch {env['torch']}",
    ]
    return "\n".join(lines)


# The plot's lines: each sparse arm at its pick, MOON as published, then dense at its pick.
PLOT_ROWS = (*SPARSE_ARMS, PUBLISHED)


def trade_off_figure(res: dict[str, Any]) -> Figure:
    """Near-OOD AUROC, accuracy and ECE against density: one line per arm at its pick (and
    MOON as published, dotted), 95% bands."""
    densities = res["settings"]["densities"]
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(12, 3.8), layout="constrained")
    for ax, (metric, label) in zip(axes, PLOTTED, strict=True):
        for arm in PLOT_ROWS:
            cells = [res["levels"][level_key(d)]["arms"][arm]["summary"][metric] for d in densities]
            mean = [100 * c["mean"] for c in cells]
            style = ":" if arm == PUBLISHED else "-"
            line = ax.plot(densities, mean, marker="o", linestyle=style, label=arm)[0]
            ax.fill_between(
                densities,
                [100 * c["ci_low"] for c in cells],
                [100 * c["ci_high"] for c in cells],
                color=line.get_color(),
                alpha=0.2 if arm != PUBLISHED else 0.1,
            )
        dense = res["dense"]["summary"][metric]
        ax.axhline(100 * dense["mean"], color="black", linestyle="--", label=DENSE_ARM)
        ax.axhspan(100 * dense["ci_low"], 100 * dense["ci_high"], color="black", alpha=0.1)
        ax.set_xscale("log")
        ax.set_xticks(densities, [f"{d:g}" for d in densities])
        ax.minorticks_off()
        ax.set_xlabel("density (share of weights kept)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    n = len(res["settings"]["seeds"])
    rule = res["settings"]["test_time"]["rule"]
    axes[0].legend(fontsize="small")
    fig.suptitle(
        f"{res['settings']['suite']}, {res['settings']['sparse_method']}: mean over {n} seeds "
        f"with 95% intervals, each arm at its test-time pick ({rule}; MOON as published "
        "dotted, dense dashed)",
        fontsize="medium",
    )
    return fig


def save_png(fig: Figure, path: Path) -> None:
    """The figure as a 256-colour PNG at 100 dpi: a quarter of the bytes, fit to commit."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(256).save(path, format="PNG", optimize=True)


def write_atomically(path: Path, write: Any) -> None:
    """Write through a temporary file beside `path`, so a kill leaves nothing half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    write(tmp)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run(args)
    print(report(res))
    if args.json is not None:
        write_atomically(args.json, lambda p: p.write_text(json.dumps(res, indent=2) + "\n"))
    if args.plot is not None:
        fig = trade_off_figure(res)
        write_atomically(args.plot, lambda p: save_png(fig, p))
        plt.close(fig)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
