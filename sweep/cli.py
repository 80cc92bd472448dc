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


Opt = typer.Option


@app.command()
def run(
    space: Annotated[str, Opt(help="Search space name or YAML file")] = "default",
    name: Annotated[str | None, Opt(help="Sweep name (default: sweep-<time>)")] = None,
    workdir: Annotated[
        str | None, Opt(help="Work directory (default $MOONSWEEP_WORKDIR or ./moonsweep-runs)")
    ] = None,
    trials: Annotated[int | None, Opt(min=1, help="Searched trials (baselines extra)")] = None,
    epochs: Annotated[int | None, Opt(min=1, help="Epochs per trial")] = None,
    max_concurrent: Annotated[int | None, Opt(min=1, help="Trials at once")] = None,
    address: Annotated[str | None, Opt(help="Ray cluster to join (default: embedded)")] = None,
    tracking_uri: Annotated[str | None, Opt(help="MLflow tracking URI")] = None,
    storage: Annotated[str | None, Opt(help="Optuna storage URL")] = None,
    cpus_per_trial: Annotated[float | None, Opt(help="CPUs per trial (space's default)")] = None,
    gpus_per_trial: Annotated[
        float | None, Opt(help="GPU fraction per trial, e.g. 0.25 (space's default)")
    ] = None,
) -> None:
    """Run a sweep: baselines, then Optuna's trials on Ray; tracked in MLflow."""
    from sweep.orchestrator import SweepOptions, start_sweep

    opts = SweepOptions(
        space=space,
        name=name,
        workdir=workdir,
        trials=trials,
        epochs=epochs,
        max_concurrent=max_concurrent,
        address=address,
        tracking_uri=tracking_uri,
        storage=storage,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
    )
    try:
        summary = start_sweep(opts)
    except ConfigError as exc:
        fail(str(exc))
    _print_summary(summary, workdir)


@app.command()
def resume(
    name: Annotated[str, typer.Argument(help="The sweep to continue")],
    workdir: Annotated[str | None, Opt(help="Work directory")] = None,
) -> None:
    """Continue an interrupted sweep: same searcher, study and MLflow runs."""
    from sweep.orchestrator import resume_sweep

    try:
        summary = resume_sweep(name, workdir)
    except ConfigError as exc:
        fail(str(exc))
    _print_summary(summary, workdir)


@app.command()
def status(
    name: Annotated[str, typer.Argument(help="The sweep")],
    workdir: Annotated[str | None, Opt(help="Work directory")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """A table of the sweep's trials: state, arm, key params and metrics, linked ids."""
    from sweep.orchestrator import load_state, quiet_libraries
    from sweep.status import KEY_METRICS, format_table, trial_rows

    quiet_libraries()
    try:
        state, folder = load_state(name, workdir)
    except ConfigError as exc:
        fail(str(exc))
    rows = trial_rows(state)
    if as_json:
        typer.echo(json.dumps({"name": name, "status": state.status, "trials": rows}, indent=2))
        return
    typer.echo(f"sweep {name}: {state.status}, {len(rows)} trials, folder {folder}")
    # Short headers for the params; the requested density is not the achieved `density`.
    params = {
        "sparsity.method": "method",
        "sparsity.density": "target_density",
        "moon.alpha_mode": "alpha_mode",
        "moon.alpha_final": "alpha_final",
        "moon.alpha": "alpha",
    }
    short = [{**r, **{name: r[key] for key, name in params.items()}} for r in rows]
    columns = ["trial", "arm", "state", "optuna", *params.values(), *KEY_METRICS, "mlflow_run_id"]
    typer.echo(format_table(short, columns))


@app.command()
def replay(
    name: Annotated[str, typer.Argument(help="The sweep")],
    trial: Annotated[str, typer.Argument(help="Ray trial id, MLflow run id or Optuna number")],
    workdir: Annotated[str | None, Opt(help="Work directory")] = None,
) -> None:
    """Re-train one trial with the engine alone (no Ray) and compare with the record."""
    from sweep.orchestrator import load_state, quiet_libraries
    from sweep.replay import replay as replay_trial

    quiet_libraries()
    try:
        state, _ = load_state(name, workdir)
        row, recorded, replayed = replay_trial(state, trial)
    except ConfigError as exc:
        fail(str(exc))
    shared = sorted(set(recorded) & set(replayed))
    worst = max((abs(recorded[k] - replayed[k]) for k in shared), default=0.0)
    typer.echo(
        f"replayed trial {row['trial']} ({row['arm']}): {len(shared)} metrics compared, "
        f"largest difference {worst:.3g}",
        err=True,
    )
    typer.echo(json.dumps(replayed, sort_keys=True))


def _print_summary(summary: dict, workdir: str | None) -> None:
    from sweep.orchestrator import load_state
    from sweep.status import format_table, leaders, trial_rows
    from sweep.tracking import mask_url

    name = summary["name"]
    state, folder = load_state(name, workdir)
    if summary["status"] != "finished":
        typer.echo(f"sweep {name} interrupted; continue with: moonsweep resume {name}", err=True)
        raise typer.Exit(130)
    rows = trial_rows(state)
    objectives = [o["metric"] for o in state.space["objectives"]]
    typer.echo(f"\nsweep {name} finished: {len(rows)} trials")
    typer.echo(f"  folder  {folder}")
    typer.echo(f"  mlflow  {mask_url(state.tracking_uri)}  (experiment moonsweep-{name})")
    typer.echo(f"  optuna  {mask_url(state.storage_url)}  (study {name})")
    if state.tracking_uri.startswith("sqlite"):
        typer.echo(f"  browse  mlflow ui --backend-store-uri {state.tracking_uri} --host 127.0.0.1")
    typer.echo("\nbaselines:")
    base = [r for r in rows if r["arm"] != "search"]
    typer.echo(format_table(base, ["arm", "state", *objectives, "density", "mlflow_run_id"]))
    lead = leaders(state)
    typer.echo("\nleading trials (Pareto front over the objectives, constraints met):")
    if lead:
        params = ["sparsity.method", "sparsity.density", "moon.alpha_mode", "voting.mode"]
        typer.echo(format_table(lead, ["optuna", "trial", *objectives, *params]))
    else:
        typer.echo("  none finished")


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
