"""ResNet-18 on 32x32 images at the paper's recipe: training speed, input pipeline, trials/hour.

Three measurements, on one device (`--device cuda` for a GPU at full size; on the CPU the
default sizes are small, yet a ResNet-18 step takes seconds: about half an hour on 2 cores):

1. **Training throughput** (images/s) of the `paper-cifar10` preset's model and recipe,
   dense against RigL at density 0.1 with MOON and weight voting. Each arm is one `Run`
   of 1 + E epochs on synthetic data shaped like CIFAR-10 (the numbers a step costs do not
   depend on the pixels); epoch 1 is not timed (it pays torch.compile and lazy
   initialisation, and is MOON's warm-up), epochs 2..E+1 are: MOON's loss, RigL updates at
   the paper's rate per epoch until 70% of the run, weight-voting snapshots in the last
   20% of epochs (at least one), the per-epoch validation pass. Arms are interleaved over
   repetitions; ratios are within a repetition, median (min-max).
2. **Input pipeline** (images/s for one epoch of augmented batches delivered on the
   device): `engine.pipeline.DeviceLoader` (the whole set as one device tensor, crop+flip
   as one gather per batch) against a torchvision DataLoader (TensorDataset, per-sample
   `transforms.v2.RandomCrop(32, padding=4)` + `RandomHorizontalFlip`, worker processes,
   collation, copy to the device). Only batches are produced; no model runs.
3. **Trials per hour** with 1, 2 and 4 trial processes sharing the device: each process
   trains one full `Run` (the RigL + MOON + voting arm, `--trial-epochs` epochs, then the
   final evaluation). All start together once every process has imported torch and built
   its data; trials/hour = N * 3600 / wall time until the last ends. The same figure is
   projected to a paper-length trial (100 epochs of 45,000 images) by scaling with the
   images trained; that ignores per-trial fixed costs, so it is a ceiling.

Run (from the repository root):
    .venv/bin/python bench/gpu.py                      # CPU, small sizes, ~30 min
    .venv/bin/python bench/gpu.py --parts training pipeline   # the first two only
    .venv/bin/python bench/gpu.py --tiny               # seconds: CNN, a few batches (tests)
    .venv/bin/python bench/gpu.py --device cuda --json bench/out/gpu.json
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/gpu.py` puts bench/ first on sys.path, where bench/engine.py would shadow the
# project's `engine` package; the repository root goes first instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from bench._common import device_name, ratio_summary, rotated, write_json  # noqa: E402
from engine.config import TrainConfig, load_config  # noqa: E402
from engine.data import OODSet, Split, Suite  # noqa: E402
from engine.pipeline import DeviceLoader  # noqa: E402
from engine.train import Run  # noqa: E402

PRESET = "paper-cifar10"
PAPER_EPOCHS, PAPER_TRAIN, PAPER_STEPS_PER_UPDATE = 100, 45_000, 80
FULL_ARM = "rigl+moon+voting"
ARMS: dict[str, list[str]] = {
    "dense": ["sparsity.method=dense", "moon.enabled=false", "voting.mode=off"],
    FULL_ARM: ["sparsity.method=rigl", "sparsity.density=0.1", "moon.enabled=true"],
}
# Full sizes on a GPU, small ones on the CPU (ResNet-18 steps take seconds there).
PARTS = ("training", "pipeline", "trials")
SIZES = {
    "cuda": {"model": "resnet18", "train_size": PAPER_TRAIN, "epochs": 3, "repeats": 2,
             "trial_epochs": 2, "workers": 8, "pipeline_size": PAPER_TRAIN},
    "cpu": {"model": "resnet18", "train_size": 512, "epochs": 1, "repeats": 2,
            "trial_epochs": 2, "workers": 2, "pipeline_size": 10_000},
    "tiny": {"model": "cnn", "train_size": 256, "epochs": 1, "repeats": 1,
             "trial_epochs": 2, "workers": 1, "pipeline_size": 512},
}


def synthetic_suite(n_train: int, n_eval: int = 256, classes: int = 10, seed: int = 0) -> Suite:
    """Normalised-looking random 3x32x32 images: CIFAR-10's shapes, no files needed."""
    g = torch.Generator().manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        return torch.randn(n, 3, 32, 32, generator=g)

    def split(n: int) -> Split:
        return Split(images(n), torch.randint(0, classes, (n,), generator=g))

    ood = [OODSet(f"noise_{grp}", grp, images(n_eval), images(n_eval)) for grp in ("near", "far")]
    return Suite(
        name="synthetic",
        num_classes=classes,
        input_shape=(3, 32, 32),
        class_names=[str(c) for c in range(classes)],
        train=split(n_train),
        val=split(n_eval),
        test=split(n_eval),
        ood=ood,
    )


def arm_config(args: argparse.Namespace, arm: str, epochs: int, seed: int = 0) -> TrainConfig:
    """The preset with the arm's settings, sized so short runs keep the paper's proportions."""
    steps = -(-args.train_size // args.batch_size)
    interval = max(1, round(PAPER_STEPS_PER_UPDATE * steps / (PAPER_TRAIN / 128)))
    overrides = [
        f"model.name={args.model}",
        f"model.width={64 if args.model == 'resnet18' else 32}",
        f"epochs={epochs}",
        f"batch_size={args.batch_size}",
        f"device={args.device}",
        f"seed={seed}",
        "moon.warmup_epochs=1",
        f"voting.epochs={max(1, round(0.2 * epochs))}",
        f"sparsity.update_interval={interval}",
        "data.augment=crop_flip",
        f"runtime.channels_last={str(args.channels_last).lower()}",
        f"runtime.autocast={'bf16' if args.bf16 else 'none'}",
        f"runtime.compile={str(args.compile).lower()}",
        "eval.scores=[msp]",
        "eval.primary=msp",
        *ARMS[arm],
    ]
    return load_config(PRESET, overrides)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_training(args: argparse.Namespace, suite: Suite) -> dict[str, Any]:
    """Images/s of the timed epochs per arm, interleaved over repetitions."""
    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for rep in range(args.repeats):
        for arm in rotated(list(ARMS), rep):
            run = Run(arm_config(args, arm, 1 + args.epochs, seed=rep), suite)
            while not run.done:
                run.train_epoch()  # each epoch ends with a host read: timings are synced
            secs = sum(h["seconds"] for h in run.history[1:])
            seconds[arm].append(secs)
            print(f"  training rep {rep + 1}/{args.repeats} {arm:<17} {secs:8.2f} s",
                  file=sys.stderr)
    summary = ratio_summary(seconds, "dense")
    images = args.epochs * args.train_size
    for m in summary.values():
        m["images_per_s"] = images / m["seconds_median"]
        m["paper_run_minutes"] = PAPER_EPOCHS * PAPER_TRAIN / m["images_per_s"] / 60
    return {"seconds": seconds, "summary": summary}


def loader_images_per_s(batches: Any, device: torch.device, n: int) -> float:
    sync(device)
    start = time.perf_counter()
    last = None
    for xb, _ in batches:
        last = xb
    if last is not None:
        float(last[0, 0, 0, 0])  # the last batch is on the device and done
    sync(device)
    return n / (time.perf_counter() - start)


def measure_pipelines(args: argparse.Namespace) -> dict[str, float]:
    """One epoch of crop+flip batches on the device: DeviceLoader vs torchvision DataLoader."""
    device = torch.device(args.device)
    train = synthetic_suite(args.pipeline_size, n_eval=2).train
    x, y = train.x, train.y
    x_dev, y_dev = x.to(device), y.to(device)
    g = torch.Generator().manual_seed(0)
    ours = DeviceLoader(x_dev, y_dev, args.batch_size, g, augment="crop_flip")
    transform = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])

    class Augmented(TensorDataset):
        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            xi, yi = super().__getitem__(i)
            return transform(xi), yi

    reference = DataLoader(
        Augmented(x, y),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(0),
    )

    def on_device(loader: DataLoader) -> Any:
        for xb, yb in loader:
            yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)

    n = len(y)
    loader_images_per_s(ours.epoch(), device, n)  # warm-up: first calls, worker start
    loader_images_per_s(on_device(reference), device, n)
    out = {"device_loader": 0.0, "torchvision_dataloader": 0.0}
    for _ in range(max(2, args.repeats)):  # best of a few: the least disturbed pass
        ours_now = loader_images_per_s(ours.epoch(), device, n)
        out["device_loader"] = max(out["device_loader"], ours_now)
        out["torchvision_dataloader"] = max(
            out["torchvision_dataloader"], loader_images_per_s(on_device(reference), device, n)
        )
    out["speedup"] = out["device_loader"] / out["torchvision_dataloader"]
    return out


def trial_worker(spec: str) -> None:
    """One trial process: build everything, say ready, wait for go, train, report seconds."""
    opts = argparse.Namespace(**json.loads(spec))
    torch.set_num_threads(opts.threads)
    suite = synthetic_suite(opts.train_size)
    cfg = arm_config(opts, FULL_ARM, opts.trial_epochs)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    run = Run(cfg, suite)
    while not run.done:
        run.train_epoch()
    run.finish()
    print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


def measure_trials(args: argparse.Namespace) -> dict[str, Any]:
    """Trials per hour with N trial processes on the device at once, for each N."""
    out: dict[str, Any] = {}
    cores = os.cpu_count() or 1
    for n in args.concurrency:
        spec = vars(args) | {"threads": max(1, cores // n) if args.device == "cpu" else 1}
        spec = {k: v for k, v in spec.items() if k not in ("json",)}
        env = os.environ | {"OMP_NUM_THREADS": str(spec["threads"])}
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--trial-worker", json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            )
            for _ in range(n)
        ]
        try:
            for p in procs:
                if p.stdout.readline().strip() != "ready":
                    raise RuntimeError("a trial process failed before it was ready")
            start = time.perf_counter()
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            per_trial = [json.loads(p.stdout.readline())["seconds"] for p in procs]
            wall = time.perf_counter() - start
        finally:
            for p in procs:
                p.wait(timeout=600)
        scale = PAPER_EPOCHS * PAPER_TRAIN / (args.trial_epochs * args.train_size)
        out[str(n)] = {
            "wall_s": wall,
            "trial_s": per_trial,
            "trials_per_hour": n * 3600 / wall,
            "paper_trials_per_hour": n * 3600 / wall / scale,
        }
        print(f"  {n} concurrent trial(s): {wall:.1f} s", file=sys.stderr)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--tiny", action="store_true", help="a CNN and a few batches, seconds")
    ap.add_argument("--model", choices=("resnet18", "cnn"), default=None)
    ap.add_argument("--train-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=None, help="timed epochs per arm")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--trial-epochs", type=int, default=None)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--workers", type=int, default=None, help="DataLoader worker processes")
    ap.add_argument("--pipeline-size", type=int, default=None, help="images per pipeline epoch")
    on_gpu = "default: on with --device cuda"
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help=on_gpu)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help=on_gpu)
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                    help=on_gpu)
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                    help="which measurements to run (default: all)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--trial-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = SIZES["tiny" if args.tiny else args.device]
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.trial_epochs < 2:
        ap.error("--trial-epochs: at least 2 (MOON's warm-up epoch, then one with its loss)")
    gpu = args.device == "cuda"
    for key in ("compile", "bf16", "channels_last"):
        if getattr(args, key) is None:
            setattr(args, key, gpu)
    if gpu and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    return args


def report(res: dict[str, Any]) -> str:
    s = res["settings"]
    lines = [
        f"{s['model']} on synthetic 3x32x32 data, {s['train_size']} train images, batch "
        f"{s['batch_size']}, {s['epochs']} timed epoch(s), {s['repeats']} repetition(s); "
        f"crop+flip, channels_last {s['channels_last']}, bf16 {s['bf16']}, "
        f"compile {s['compile']}",
        f"device: {res['device']}, torch {res['torch']}",
    ]
    if "training" in res:
        lines += [
            "",
            "| arm | images/s | time ratio vs dense (range) | projected paper run (min) |",
            "|---|---:|---|---:|",
        ]
    for arm, m in res.get("training", {"summary": {}})["summary"].items():
        lines.append(
            f"| {arm} | {m['images_per_s']:,.0f} | {m['ratio_median']:.2f}x "
            f"({m['ratio_min']:.2f}-{m['ratio_max']:.2f}) | {m['paper_run_minutes']:,.1f} |"
        )
    if "pipeline" in res:
        p = res["pipeline"]
        lines += [
            "",
            f"| input pipeline (crop+flip, an epoch of {s['pipeline_size']:,} images) | images/s |",
            "|---|---:|",
            f"| engine.pipeline.DeviceLoader | {p['device_loader']:,.0f} |",
            f"| torchvision DataLoader, {s['workers']} worker(s) "
            f"| {p['torchvision_dataloader']:,.0f} |",
            f"| ratio | {p['speedup']:.1f}x |",
        ]
    if "trials" in res:
        lines += [
            "",
            f"| concurrent trials ({s['trial_epochs']} epoch(s) each) | wall s | trials/h | "
            "paper-length trials/h (ceiling) |",
            "|---:|---:|---:|---:|",
        ]
    for n, t in res.get("trials", {}).items():
        lines.append(
            f"| {n} | {t['wall_s']:.1f} | {t['trials_per_hour']:,.1f} | "
            f"{t['paper_trials_per_hour']:.3g} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.trial_worker is not None:
        trial_worker(args.trial_worker)
        return 0
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "trial_worker")}
    res: dict[str, Any] = {
        "settings": settings,
        "device": device_name(torch.device(args.device)),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if "training" in args.parts:
        print("training throughput ...", file=sys.stderr)
        res["training"] = measure_training(args, synthetic_suite(args.train_size))
    if "pipeline" in args.parts:
        print("input pipelines ...", file=sys.stderr)
        res["pipeline"] = measure_pipelines(args)
    if "trials" in args.parts:
        print("concurrent trials ...", file=sys.stderr)
        res["trials"] = measure_trials(args)
    print(report(res))
    if args.json is not None:
        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
