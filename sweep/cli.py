"""The `moonsweep` command line.

    moonsweep train                          # preset `default` on the bundled digits suite
    moonsweep train --config my.yaml --set sparsity.density=0.05 --set seed=3 --out runs/a
    moonsweep presets                        # the named presets

User mistakes print one `error: ...` line and exit with code 2, before anything is written.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml

from engine.checkpoint import save_checkpoint, save_json
from engine.config import ConfigError, TrainConfig, load_config, preset_names

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Sweeps of sparse training with MOON: train, search, select.",
)


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _default_out() -> Path:
    return Path("moonsweep-runs") / "train" / time.strftime("%Y%m%d-%H%M%S")


def _epoch_line(cfg: TrainConfig, rec: dict[str, float]) -> str:
    return (
        f"epoch {int(rec['epoch']):>3}/{cfg.epochs}  loss {rec['loss']:.4f}  "
        f"train_acc {rec['train_accuracy']:.3f}  val_acc {rec['val_accuracy']:.3f}  "
        f"alpha {rec['alpha']:.4g}  lr {rec['lr']:.4g}  density {rec['density']:.3f}  "
        f"{rec['seconds']:.2f}s"
    )


@app.command()
def train(
    config: Annotated[
        str | None,
        typer.Option("--config", "-c", help="YAML file or preset name (default: default)"),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override one setting: dotted.key=value (repeatable)"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default: moonsweep-runs/train/<time>)")
    ] = None,
) -> None:
    """Train and evaluate one configuration; print the final metrics as JSON on stdout."""
    from engine.train import TrainingDiverged
    from engine.train import train as run_training

    try:
        cfg = load_config(config, set_ or [])
    except ConfigError as exc:
        fail(str(exc))
    out = out or _default_out()
    if (out / "checkpoint.pt").exists():
        fail(f"--out {out} already holds a run (checkpoint.pt); choose another directory")
    try:
        result = run_training(cfg, on_epoch=lambda rec: typer.echo(_epoch_line(cfg, rec), err=True))
    except ConfigError as exc:  # data problems found while loading (paths, folders)
        fail(str(exc))
    except TrainingDiverged as exc:
        fail(f"training diverged: {exc}; lower optim.lr or check the data")
    save_checkpoint(out / "checkpoint.pt", result.checkpoint())
    save_json(out / "metrics.json", result.metrics)
    save_json(out / "history.json", result.history)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    typer.echo(f"wrote {out}/checkpoint.pt and metrics.json", err=True)
    typer.echo(json.dumps(result.metrics, sort_keys=True))


@app.command()
def presets() -> None:
    """List the named training presets."""
    for name in preset_names():
        typer.echo(name)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
