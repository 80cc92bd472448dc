"""Paired-seed study: RigL+MOON vs RigL vs dense on the bundled suite (default preset).

Three arms, identical except for MOON and sparsity (weight voting as in the preset for all):
    rigl+moon  RigL density 0.1, MOON with auto-tuned alpha (the preset as is)
    rigl       the same with moon.enabled=false
    dense      sparsity.method=dense, moon.enabled=false
Each arm is trained with seeds 0..N-1 (`seed=<s>`); the data split stays fixed
(data.split_seed), so every arm sees the same seeds and the same splits.

Prints two markdown tables, all figures in percent (x100) of the test-split metrics
(primary score msp):
  1. per arm: mean +- std over seeds of accuracy, auroc_near, auroc_far, ece, fpr95_near;
  2. paired deltas per seed (rigl+moon - rigl, rigl+moon - dense, rigl - dense): mean, 95%
     interval mean +- t_{0.975,n-1} * sd / sqrt(n), and the Wilcoxon signed-rank p-value.
Progress goes to stderr, one line per finished run. `--json` also writes every run's full
metric dict, so any figure can be re-derived.

Run (from the repository root; about 3 s per run on one core, 30 runs by default):
    .venv/bin/python bench/study.py --seeds 10 --json bench/out/study.json
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running `python bench/study.py` puts bench/ first on sys.path, where bench/engine.py would
# shadow the project's `engine` package; drop that entry before importing it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from scipy import stats  # noqa: E402

from engine.config import TrainConfig, apply_overrides, load_config, resolve_source  # noqa: E402
from engine.train import train  # noqa: E402

PRESET = "default"
METRICS = ("accuracy", "auroc_near", "auroc_far", "ece", "fpr95_near")
# Only MOON and sparsity differ between arms; voting stays the preset's (weights) for all.
ARMS: dict[str, list[str]] = {
    "rigl+moon": [],
    "rigl": ["moon.enabled=false"],
    "dense": ["sparsity.method=dense", "moon.enabled=false"],
}
COMPARISONS = (("rigl+moon", "rigl"), ("rigl+moon", "dense"), ("rigl", "dense"))


def fit_schedule(overrides: list[str]) -> list[str]:
    """Extra overrides so an `--epochs` shorter than the preset's warm-up (5) or voting (8)
    epochs stays valid; both shrink, keeping their share of the run."""
    data = apply_overrides(resolve_source(PRESET), list(overrides))
    epochs = int(data.get("epochs", 100))
    moon = data.get("moon", {})
    voting = data.get("voting", {})
    extra = []
    if moon.get("enabled", True) and int(moon.get("warmup_epochs", 5)) >= epochs:
        extra.append(f"moon.warmup_epochs={max(1, min(epochs - 1, epochs // 8))}")
    if voting.get("mode", "weights") != "off" and int(voting.get("epochs", 20)) > epochs:
        extra.append(f"voting.epochs={max(1, epochs // 5)}")
    return extra


def build_config(arm: str, common: list[str], seed: int) -> TrainConfig:
    # The schedule fix is computed once on the common overrides, so it is the same for all arms.
    overrides = [*common, *fit_schedule(common), *ARMS[arm], f"seed={seed}"]
    return load_config(PRESET, overrides)


def run_one(cfg: TrainConfig) -> dict[str, Any]:
    started = time.perf_counter()
    result = train(cfg)
    hist = result.history
    warm = cfg.moon.warmup_epochs
    active = hist[warm:] if cfg.moon.enabled else []
    # MOON up-weights only misclassified samples, so the training error over the epochs after
    # warm-up (running, per batch) is the share of samples its loss acts on; alpha_0 its scale.
    return {
        "seconds": time.perf_counter() - started,
        "alpha0": active[0]["alpha"] if active else None,
        "train_error_moon_epochs": (
            statistics.fmean(1.0 - h["train_accuracy"] for h in active) if active else None
        ),
        "final_train_accuracy": hist[-1]["train_accuracy"],
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (at least 2)")
    ap.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", type=Path, default=None, help="also write summary and raw runs")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    if args.seeds < 2:
        ap.error("--seeds must be at least 2 for an interval")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    common = [*args.overrides]
    if args.epochs is not None:
        common.append(f"epochs={args.epochs}")
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    # Seeds outermost: a slow spell of the machine hits the arms of a seed alike.
    for seed in range(args.seeds):
        for arm in ARMS:
            cfg = build_config(arm, common, seed)
            rec = {"arm": arm, "seed": seed, **run_one(cfg)}
            runs.append(rec)
            m = rec["metrics"]
            print(
                f"seed {seed:2d}  {arm:<9}  "
                + "  ".join(f"{k} {m[k]:.4f}" for k in METRICS)
                + f"  ({rec['seconds']:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    cfg0 = build_config("rigl+moon", common, 0)

    values = {
        arm: {k: [r["metrics"][k] for r in runs if r["arm"] == arm] for k in METRICS}
        for arm in ARMS
    }
    summary = {
        arm: {
            k: {"mean": statistics.fmean(v), "std": statistics.stdev(v)}
            for k, v in values[arm].items()
        }
        for arm in ARMS
    }
    deltas = {
        f"{a} - {b}": {k: paired(values[a][k], values[b][k]) for k in METRICS}
        for a, b in COMPARISONS
    }
    alpha0 = [r["alpha0"] for r in runs if r["alpha0"] is not None]
    err = [r["train_error_moon_epochs"] for r in runs if r["train_error_moon_epochs"] is not None]
    return {
        "settings": {
            "preset": PRESET,
            "seeds": list(range(args.seeds)),
            "overrides": common,
            "arms": ARMS,
            "suite": cfg0.data.suite,
            "split_seed": cfg0.data.split_seed,
            "epochs": cfg0.epochs,
            "voting": cfg0.voting.model_dump(),
            "primary_score": cfg0.eval.primary,
        },
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads()},
        "wall_seconds": time.perf_counter() - started,
        "moon_activity": {
            "alpha0_median": statistics.median(alpha0) if alpha0 else None,
            "train_error_moon_epochs_mean": statistics.fmean(err) if err else None,
        },
        "summary": summary,
        "deltas": deltas,
        "runs": runs,
    }


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def report(res: dict[str, Any]) -> str:
    s = res["settings"]
    n = len(s["seeds"])
    lines = [
        f"suite {s['suite']} (split_seed {s['split_seed']}), {s['epochs']} epochs, voting "
        f"{s['voting']['mode']} (last {s['voting']['epochs']} epochs) in every arm, "
        f"score {s['primary_score']}, seeds 0..{n - 1} paired; overrides: "
        f"{' '.join(s['overrides']) or 'none'}",
        "",
        "All figures in percent (x100), test split, mean +- std over seeds.",
        "",
        "| arm | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for arm, m in res["summary"].items():
        cells = [f"{_pct(m[k]['mean'])} +- {_pct(m[k]['std'])}" for k in METRICS]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Paired deltas over {n} seeds, in points: mean [95% t-interval], Wilcoxon p, "
        "seeds with delta > 0. * = interval excludes 0. (Higher is better for accuracy and "
        "AUROC, lower for ece and fpr95.)",
        "",
        "| comparison | metric | mean delta | 95% interval | Wilcoxon p | delta > 0 |",
        "|---|---|---:|---|---:|---:|",
    ]
    for name, per_metric in res["deltas"].items():
        for k, d in per_metric.items():
            sig = "*" if d["ci_low"] > 0 or d["ci_high"] < 0 else ""
            p = "n/a" if d["wilcoxon_p"] is None else f"{d['wilcoxon_p']:.3f}"
            lines.append(
                f"| {name} | {k} | {100 * d['mean']:+.2f}{sig} | "
                f"[{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}] | {p} | "
                f"{d['n_positive']}/{d['n']} |"
            )
    act = res["moon_activity"]
    if act["alpha0_median"] is not None:
        err = 100 * act["train_error_moon_epochs_mean"]
        lines += [
            "",
            f"MOON activity (rigl+moon): median alpha_0 {act['alpha0_median']:.4g}, mean "
            f"training error over the epochs after warm-up {err:.3f}% (the share of samples "
            "the MOON weight acts on)",
        ]
    lines.append(f"wall time {res['wall_seconds']:.0f} s, torch {res['environment']['torch']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run(args)
    print(report(res))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
