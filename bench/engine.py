"""Training throughput of dense, RigL and RigL+MOON+voting on the same model and data.

A fourth arm runs RigL+MOON+voting with `runtime.fused_optimizer=false` (PyTorch's
per-tensor SGD), so the fused kernel's gain is measured side by side too.

Prints a markdown table (arm | samples/s | ms/epoch | time ratio vs dense (min-max)), the
torch version, thread count and CPU model, and whether the project's target holds: the full
MOON sparse run (RigL + MOON + weight voting) costs at most 1.15x the dense run's time.

What is timed: the training loop only, i.e. the sum over epochs of `history[i]["seconds"]`
from `engine.train.train`. That covers every optimisation step (forward, loss, backward,
mask upkeep, RigL updates, voting snapshots) plus the small per-epoch validation-accuracy
pass the loop logs; it excludes data loading, model construction, the voting finalisation
and the final evaluation. Samples/s = epochs * train-set size / seconds.

The arms run interleaved: each repetition runs every arm once, in an order rotated per
repetition, so machine noise falls on all arms alike. Ratios are taken within a repetition
(arm time / dense time of that repetition) and reported as median (min-max).

Run (from the repository root):
    .venv/bin/python bench/engine.py                      # mlp, 30 epochs, 5 repetitions
    .venv/bin/python bench/engine.py --quick              # 2 repetitions of 5 epochs
    .venv/bin/python bench/engine.py --model cnn --json bench/out/engine_cnn.json
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running `python bench/engine.py` puts bench/ first on sys.path, where this very file would
# shadow the project's `engine` package; drop that entry before importing it.
# The repository root goes first instead, for `engine` and `bench._common`.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import platform  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from bench._common import cpu_model, ratio_summary, rotated, write_json  # noqa: E402
from engine.config import TrainConfig, apply_overrides, load_config, resolve_source  # noqa: E402
from engine.train import train  # noqa: E402

TARGET_RATIO = 1.15
PRESET = "default"
FULL_ARM = "rigl+moon+voting"

# Arm-specific settings on top of the default preset (RigL 0.1, MOON auto, weight voting).
ARMS: dict[str, list[str]] = {
    "dense": ["sparsity.method=dense", "moon.enabled=false", "voting.mode=off"],
    "rigl": [
        "sparsity.method=rigl",
        "sparsity.density=0.1",
        "moon.enabled=false",
        "voting.mode=off",
    ],
    FULL_ARM: [
        "sparsity.method=rigl",
        "sparsity.density=0.1",
        "moon.enabled=true",
        "moon.alpha_mode=auto",
        "voting.mode=weights",
    ],
}
# The full arm with PyTorch's per-tensor SGD instead of the fused kernel (the default).
UNFUSED_ARM = f"{FULL_ARM}, unfused SGD"
ARMS[UNFUSED_ARM] = [*ARMS[FULL_ARM], "runtime.fused_optimizer=false"]


def fit_schedule(overrides: list[str]) -> list[str]:
    """Extra overrides so short runs stay valid: the preset's 5 warm-up and 8 voting epochs
    do not fit in e.g. 5 epochs, so both shrink (keeping their share of the run)."""
    data = apply_overrides(resolve_source(PRESET), list(overrides))
    epochs = int(data.get("epochs", 100))
    moon = data.get("moon", {})
    voting = data.get("voting", {})
    extra = []
    warmup = int(moon.get("warmup_epochs", 5))
    if moon.get("enabled", True) and warmup >= epochs:
        extra.append(f"moon.warmup_epochs={max(1, min(epochs - 1, epochs // 8))}")
    vote = int(voting.get("epochs", 20))
    if voting.get("mode", "weights") != "off" and vote > epochs:
        extra.append(f"voting.epochs={max(1, epochs // 5)}")
    return extra


def build_config(arm: str, common: list[str], seed: int) -> TrainConfig:
    overrides = [*common, *ARMS[arm], f"seed={seed}"]
    return load_config(PRESET, overrides + fit_schedule(overrides))


def train_seconds(cfg: TrainConfig) -> tuple[float, int]:
    """Seconds spent in the training loop (sum of per-epoch times) and the train-set size."""
    result = train(cfg)
    return sum(h["seconds"] for h in result.history), len(result.suite.train.y)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    ap.add_argument("--width", type=int, default=None, help="default: mlp 256 (preset), cnn 32")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (less noise)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--quick", action="store_true", help="2 repetitions of 5 epochs (for tests)")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.epochs = 2, 5
    if args.width is None:
        args.width = 256 if args.model == "mlp" else 32
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    common = [
        f"model.name={args.model}",
        f"model.width={args.width}",
        f"epochs={args.epochs}",
        f"batch_size={args.batch_size}",
        "device=cpu",
        # Evaluation is not timed; one score keeps the bench's wall time down.
        "eval.scores=[msp]",
        "eval.primary=msp",
        *args.overrides,
    ]
    arms = list(ARMS)
    # Untimed warm-up of every arm: first calls pay for lazy initialisation in torch.
    for arm in arms:
        train(
            build_config(arm, [*common, "epochs=2", "voting.epochs=1", "moon.warmup_epochs=1"], 0)
        )

    seconds: dict[str, list[float]] = {arm: [] for arm in arms}
    n_train = 0
    for rep in range(args.repeats):
        for arm in rotated(arms, rep):
            secs, n_train = train_seconds(build_config(arm, common, seed=rep))
            seconds[arm].append(secs)
            print(f"rep {rep + 1}/{args.repeats}  {arm:<17} {secs:7.3f} s", file=sys.stderr)

    summary = ratio_summary(seconds, "dense")
    for m in summary.values():
        m["samples_per_s"] = args.epochs * n_train / m["seconds_median"]
        m["ms_per_epoch"] = 1000 * m["seconds_median"] / args.epochs
    return {
        "settings": {
            "model": args.model,
            "width": args.width,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "overrides": args.overrides,
            "train_size": n_train,
        },
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
        },
        "seconds": seconds,
        "summary": summary,
        "target_ratio": TARGET_RATIO,
        "target_met": summary[FULL_ARM]["ratio_median"] <= TARGET_RATIO,
    }


def report(res: dict[str, Any]) -> str:
    s, env = res["settings"], res["environment"]
    lines = [
        f"model {s['model']} width {s['width']}, {s['epochs']} epochs, batch {s['batch_size']}, "
        f"{s['train_size']} train samples, {s['repeats']} interleaved repetitions",
        f"torch {env['torch']}, {env['threads']} thread(s), CPU: {env['cpu']}",
        "",
        "| arm | samples/s | ms/epoch | time ratio vs dense (range) |",
        "|---|---:|---:|---|",
    ]
    for arm, m in res["summary"].items():
        lines.append(
            f"| {arm} | {m['samples_per_s']:,.0f} | {m['ms_per_epoch']:.1f} | "
            f"{m['ratio_median']:.2f}x ({m['ratio_min']:.2f}-{m['ratio_max']:.2f}) |"
        )
    full = res["summary"][FULL_ARM]["ratio_median"]
    verdict = "met" if res["target_met"] else "NOT met"
    lines += ["", f"target: {FULL_ARM} <= {TARGET_RATIO:.2f}x dense -> {full:.2f}x, {verdict}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run(args)
    print(report(res))
    if args.json is not None:
        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
