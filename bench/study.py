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

Prints, all figures in percent (x100) of the test-split metrics (primary score msp), per level:
  1. per arm: mean +- std over seeds of accuracy, auroc_near, auroc_far, ece, fpr95_near;
  2. paired per-seed deltas (moon_auto - sparse, sparse+voting - sparse,
     moon_auto - sparse+voting, each sparse arm - dense): mean, 95% interval
     mean +- t_{0.975,n-1} * sd / sqrt(n), Wilcoxon signed-rank p; * where the interval
     excludes 0;
  3. MOON's activity: median alpha_0 and the training error after warm-up (the share of
     samples MOON's weight acts on).
Progress goes to stderr, one line per finished run. `--json` also writes every run's config
and full metric dict, so any figure can be re-derived; `--plot` writes the trade-off plot
(near-OOD AUROC, accuracy, ECE against density, 95% interval bands).

Run (from the repository root; about 3 s per run on one core, 13 runs per seed for 4 levels):
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
from engine.train import train  # noqa: E402

PRESET = "default"
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


def run_task(task: Task) -> dict[str, Any]:
    """Train one arm at one level for one seed; its record for the JSON (picklable)."""
    arm, density, seed, common = task
    cfg = build_config(arm, density, common, seed)
    started = time.perf_counter()
    result = train(cfg)
    hist = result.history
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
        "metrics": result.metrics,
    }


def paired(a: list[float], b: list[float]) -> dict[str, float | None]:
    """Mean paired delta a - b, its 95% t-interval and the Wilcoxon signed-rank p-value."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = statistics.fmean(d)
    sd = statistics.stdev(d) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n) if n > 1 else math.nan
    try:
        p: float | None = float(stats.wilcoxon(d).pvalue)
    except ValueError:  # all deltas zero, or too few seeds
        p = None
    return {
        "mean": mean,
        "sd": sd,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "wilcoxon_p": p,
        "n_positive": sum(x > 0 for x in d),
        "n": n,
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
            build_config(arm, args.densities[0], args.common, 0)
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


def summarize(runs: list[dict[str, Any]], densities: list[float]) -> dict[str, Any]:
    def values(arm: str, density: float | None) -> dict[str, list[float]]:
        chosen = [r for r in runs if r["arm"] == arm and r["density"] == density]
        chosen.sort(key=lambda r: r["seed"])  # pair by seed
        return {k: [r["metrics"][k] for r in chosen] for k in METRICS}

    dense = values(DENSE_ARM, None)
    levels = {}
    for d in densities:
        vals = {arm: values(arm, d) for arm in SPARSE_ARMS}
        vals[DENSE_ARM] = dense
        moon = [r for r in runs if r["arm"] == "moon_auto" and r["density"] == d]
        alpha0 = [r["alpha0"] for r in moon if r["alpha0"] is not None]
        err = [e for r in moon if (e := r["train_error_moon_epochs"]) is not None]
        levels[level_key(d)] = {
            "density": d,
            "achieved_density": statistics.fmean(
                r["achieved_density"] for r in runs if r["density"] == d
            ),
            "summary": {arm: {k: spread(v) for k, v in vals[arm].items()} for arm in SPARSE_ARMS},
            "deltas": {
                f"{a} - {b}": {k: paired(vals[a][k], vals[b][k]) for k in METRICS}
                for a, b in COMPARISONS
            },
            "moon_activity": {
                "alpha0_median": statistics.median(alpha0) if alpha0 else None,
                "train_error_moon_epochs_mean": statistics.fmean(err) if err else None,
                "train_error_moon_epochs_max": max(err) if err else None,
            },
        }
    return {
        "dense": {k: spread(v) for k, v in dense.items()},
        "levels": levels,
    }


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
            + f"  ({rec['seconds']:.1f} s)",
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


def shown(d: dict[str, Any]) -> bool:
    """A difference is shown only when its 95% interval excludes zero."""
    return d["ci_low"] > 0 or d["ci_high"] < 0


def delta_cell(d: dict[str, Any]) -> str:
    p = "n/a" if d["wilcoxon_p"] is None else f"{d['wilcoxon_p']:.3f}"
    return (
        f"{100 * d['mean']:+.2f}{'*' if shown(d) else ''} "
        f"[{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}] p {p}"
    )


def report(res: dict[str, Any]) -> str:
    s = res["settings"]
    n = len(s["seeds"])
    header = "| {} | " + " | ".join(METRICS) + " |"
    rule = "|---|" + "---:|" * len(METRICS)
    lines = [
        f"suite {s['suite']} (split_seed {s['split_seed']}), {s['epochs']} epochs (warm-up "
        f"{s['warmup_epochs']}), {s['sparse_method']} at densities "
        f"{', '.join(f'{d:g}' for d in s['densities'])}, voting {s['voting']['mode']} "
        f"(last {s['voting']['epochs']} epochs) in moon_auto and sparse+voting only, score "
        f"{s['primary_score']}, seeds 0..{n - 1} paired; overrides: "
        f"{' '.join(s['overrides']) or 'none'}",
        "",
        "All figures in percent (x100), test split. Arms: mean +- std over seeds. Deltas: "
        f"paired over {n} seeds, in points: mean [95% t-interval] and Wilcoxon p; * = the "
        "interval excludes 0. Higher is better for accuracy and AUROC, lower for ece and "
        "fpr95.",
    ]
    dense = res["dense"]
    for key, lv in res["levels"].items():
        lines += [
            "",
            f"### density {key} (achieved {lv['achieved_density']:.4f})",
            "",
            header.format("arm"),
            rule,
        ]
        for arm, m in [*lv["summary"].items(), (DENSE_ARM, dense)]:
            cells = [f"{_pct(m[k]['mean'])} +- {_pct(m[k]['std'])}" for k in METRICS]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines += ["", header.format("paired delta"), "|---|" + "---|" * len(METRICS)]
        for name, per_metric in lv["deltas"].items():
            lines.append(
                f"| {name} | " + " | ".join(delta_cell(per_metric[k]) for k in METRICS) + " |"
            )
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
    env = res["environment"]
    lines += [
        "",
        f"wall time {res['wall_seconds']:.0f} s ({len(res['runs'])} runs, {env['jobs']} "
        f"job(s) x {env['threads_per_job']} thread(s)), torch {env['torch']}",
    ]
    return "\n".join(lines)


def trade_off_figure(res: dict[str, Any]) -> Figure:
    """Near-OOD AUROC, accuracy and ECE against density: one line per arm, 95% bands."""
    densities = res["settings"]["densities"]
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(12, 3.8), layout="constrained")
    for ax, (metric, label) in zip(axes, PLOTTED, strict=True):
        for arm in SPARSE_ARMS:
            cells = [res["levels"][level_key(d)]["summary"][arm][metric] for d in densities]
            mean = [100 * c["mean"] for c in cells]
            line = ax.plot(densities, mean, marker="o", label=arm)[0]
            ax.fill_between(
                densities,
                [100 * c["ci_low"] for c in cells],
                [100 * c["ci_high"] for c in cells],
                color=line.get_color(),
                alpha=0.2,
            )
        dense = res["dense"][metric]
        ax.axhline(100 * dense["mean"], color="black", linestyle="--", label=DENSE_ARM)
        ax.axhspan(100 * dense["ci_low"], 100 * dense["ci_high"], color="black", alpha=0.1)
        ax.set_xscale("log")
        ax.set_xticks(densities, [f"{d:g}" for d in densities])
        ax.minorticks_off()
        ax.set_xlabel("density (share of weights kept)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    n = len(res["settings"]["seeds"])
    axes[0].legend(fontsize="small")
    fig.suptitle(
        f"{res['settings']['suite']}, {res['settings']['sparse_method']}: mean over {n} seeds "
        "with 95% intervals (dense: dashed)",
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
