"""The `moonsweep` command line.

    moonsweep train                          # preset `default` on the bundled digits suite
    moonsweep train --config my.yaml --set sparsity.density=0.05 --set seed=3 --out runs/a
    moonsweep presets                        # the named presets
    moonsweep list models                    # what can be named: models, suites, scores, ...
    moonsweep ui NAME                        # MLflow's UI (and optuna-dashboard) for a sweep
    moonsweep compare A B                    # two sweeps side by side, per density level

User mistakes print one `error: ...` line and exit with code 2, before anything is written.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import click
import typer
import yaml
from typer.core import TyperGroup

from engine import faults
from engine.checkpoint import save_checkpoint, save_json
from engine.config import ConfigError, TrainConfig, load_config, preset_names
from sweep import ui
from sweep.crash import crash_home, write_crash_report
from sweep.levels import compare_levels, level_comparison, levels_markdown
from sweep.marks import mark_chosen, mark_experiment
from sweep.naming import experiment_url
from sweep.spaces import KEY_METRICS, SEARCH_ARM
from sweep.state import TrialRow, default_workdir, load_state, trial_rows
from sweep.status import ALL_ROWS, format_table, hidden_note, leaders, rows_to_show
from sweep.stores import environment_defaults, is_server, mask_url, quiet_libraries

# How commands end on purpose (an exit code, a usage error): not crashes.
_EXITS = (typer.Exit, typer.Abort, click.exceptions.ClickException, click.exceptions.Exit)
_EXITS += (click.exceptions.Abort,)
# Typer 0.2x parses with its own copy of click: its usage errors (`--trials 0`) derive from
# `typer.TyperException`, not from the click package's ClickException.
_EXITS += (typer.TyperException,)


class _Commands(TyperGroup):
    """Every command's errors in one place: a user mistake (`ConfigError`) is one `error:`
    line and exit 2; anything unexpected is one line naming the crash report, and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        environment_defaults()  # before any command imports Ray (it reads some on import)
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            fail(str(exc))
        except _EXITS:
            raise
        except BrokenPipeError:
            # The reader left (`moonsweep status NAME | head`): nothing to report. Later
            # writes, the interpreter's last flush included, go nowhere (Python's docs on
            # SIGPIPE).
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(1) from None
        except Exception as exc:  # noqa: BLE001  (the one place that turns a crash into a line)
            report = write_crash_report(exc, sys.argv)
            typer.echo(
                f"error: internal error ({type(exc).__name__}: {_first_line(exc)}); "
                f"the full traceback is in {report}",
                err=True,
            )
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Commands,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Sweeps of sparse training with MOON: train, search, select.",
)


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _crash_reports_to(workdir: str | None, name: str | None = None) -> None:
    crash_home(workdir, name)
    faults.fire("cli", 0)  # test-only: an internal error, once the report's place is known


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


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
    # Lazy, like the imports of the other commands: torchmetrics, Ray, MLflow's model code
    # and matplotlib take seconds, which `moonsweep --help` and `status` should not wait.
    from engine.train import TrainingDiverged  # lazy: torch's training stack (seconds)
    from engine.train import train as run_training

    cfg = load_config(config, set_ or [])
    out = out or _default_out()
    if (out / "checkpoint.pt").exists():
        fail(f"--out {out} already holds a run (checkpoint.pt); choose another directory")
    try:
        result = run_training(cfg, on_epoch=lambda rec: typer.echo(_epoch_line(cfg, rec), err=True))
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
    set_: Annotated[
        list[str] | None,
        Opt(
            "--set",
            "-s",
            help="Fix one training setting for every trial and baseline, on top of the "
            "space's `set`: dotted.key=value, e.g. --set model.width=64 (repeatable; not a "
            "searched setting, one a baseline sets, or epochs: use --epochs)",
        ),
    ] = None,
    max_concurrent: Annotated[int | None, Opt(min=1, help="Trials at once")] = None,
    address: Annotated[
        str | None,
        Opt(help="Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT (or $RAY_ADDRESS)"),
    ] = None,
    tracking_uri: Annotated[
        str | None, Opt(help="MLflow tracking URI, e.g. http://HOST:5000 ($MLFLOW_TRACKING_URI)")
    ] = None,
    storage: Annotated[
        str | None, Opt(help="Optuna storage, e.g. postgresql://... ($MOONSWEEP_STORAGE)")
    ] = None,
    results: Annotated[
        str | None,
        Opt(help="Ray's results on a cluster: shared path or s3://... ($MOONSWEEP_RESULTS)"),
    ] = None,
    cpus_per_trial: Annotated[float | None, Opt(help="CPUs per trial (space's default)")] = None,
    gpus_per_trial: Annotated[
        float | None, Opt(help="GPU fraction per trial, e.g. 0.25 (space's default)")
    ] = None,
) -> None:
    """Run a sweep: baselines, then Optuna's trials on Ray; tracked in MLflow.

    A quick look at the default space: moonsweep run --trials 4 --epochs 5 --set model.width=64
    """
    _crash_reports_to(workdir, name)
    from sweep.orchestrator import SweepOptions, start_sweep  # lazy: loads Ray (seconds)

    opts = SweepOptions(
        space=space,
        name=name,
        workdir=workdir,
        trials=trials,
        epochs=epochs,
        settings=set_ or [],
        max_concurrent=max_concurrent,
        address=address,
        tracking_uri=tracking_uri,
        storage=storage,
        results=results,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
    )
    summary = start_sweep(opts)
    _print_summary(summary, workdir)


@app.command()
def resume(
    name: Annotated[str, typer.Argument(help="The sweep to continue")],
    workdir: Annotated[str | None, Opt(help="Work directory")] = None,
) -> None:
    """Continue an interrupted sweep: same searcher, study and MLflow runs."""
    _crash_reports_to(workdir, name)
    from sweep.orchestrator import resume_sweep  # lazy: loads Ray (seconds)

    summary = resume_sweep(name, workdir)
    _print_summary(summary, workdir)


@app.command()
def status(
    name: Annotated[str, typer.Argument(help="The sweep")],
    workdir: Annotated[str | None, Opt(help="Work directory")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print JSON instead of a table")] = False,
    every: Annotated[
        bool, Opt("--all", help=f"Every trial's row (past {ALL_ROWS}: arms, front, running)")
    ] = False,
) -> None:
    """A table of the sweep's trials: state, arm, key params and metrics, linked ids."""
    _crash_reports_to(workdir, name)
    quiet_libraries()
    state, folder = load_state(name, workdir)
    full = trial_rows(state, all_metrics=True)  # one read of the store for both tables
    rows = [{k: r[k] for k in TrialRow.__annotations__} for r in full]
    levels = compare_levels(state, full)
    if as_json:
        out = {
            "name": name,
            "status": state.current_status(),
            "trials": rows,
            "levels": [lv.as_dict() for lv in levels],
        }
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(f"sweep {name}: {state.current_status()}, {len(rows)} trials, folder {folder}")
    # Short headers for the params; the requested density is not the achieved `density`.
    params = {
        "sparsity.method": "method",
        "sparsity.density": "target_density",
        "moon.alpha_mode": "alpha_mode",
        "moon.alpha_final": "alpha_final",
        "moon.alpha": "alpha",
    }
    shown, rest = rows_to_show(rows, {r["trial"] for r in leaders(state)}, every)
    short = [{**r, **{name: r[key] for key, name in params.items()}} for r in shown]
    columns = ["trial", "arm", "level", "state", "optuna", *params.values(), *KEY_METRICS]
    columns += ["host", "node", "mlflow_run_id"]
    typer.echo(format_table(short, columns))
    if rest:
        typer.echo(f"(baselines, the Pareto front, running trials; {hidden_note(rest)}: --all)")
    _echo_levels(levels)


def _echo_levels(levels: list) -> None:
    """The per-level answer (`sweep.levels`), if the space has levels."""
    if levels:
        typer.echo("\nat equal density: the best searched trial against the arms trained there")
        typer.echo(levels_markdown(levels))


@app.command()
def replay(
    name: Annotated[str, typer.Argument(help="The sweep")],
    trial: Annotated[str, typer.Argument(help="Ray trial id, MLflow run id or Optuna number")],
    workdir: Annotated[str | None, Opt(help="Work directory")] = None,
) -> None:
    """Re-train one trial with the engine alone (no Ray) and compare with the record."""
    _crash_reports_to(workdir, name)
    from sweep.replay import replay as replay_trial  # lazy: the engine's training (seconds)

    quiet_libraries()
    state, _ = load_state(name, workdir)
    row, recorded, replayed = replay_trial(state, trial)
    if "test_time_pick" in replayed:
        typer.echo(
            f"test-time pick: {replayed.pop('test_time_pick')} "
            f"(recorded: {recorded.pop('test_time_pick')})",
            err=True,
        )
    shared = sorted(set(recorded) & set(replayed))
    worst = max((abs(recorded[k] - replayed[k]) for k in shared), default=0.0)
    typer.echo(
        f"replayed trial {row['trial']} ({row['arm']}): {len(shared)} metrics compared, "
        f"largest difference {worst:.3g}",
        err=True,
    )
    typer.echo(json.dumps(replayed, sort_keys=True))


LEADERS_SHOWN = 15  # a sweep of thousands can have hundreds of trials on its front


def _print_summary(summary: dict, workdir: str | None) -> None:
    name = summary["name"]
    state, folder = load_state(name, workdir)
    if summary["status"] != "finished":
        typer.echo(f"sweep {name} interrupted; continue with: moonsweep resume {name}", err=True)
        raise typer.Exit(130)
    if summary.get("already_finished"):
        typer.echo(f"sweep {name} is already finished: nothing to resume", err=True)
    rows = trial_rows(state, all_metrics=True)
    objectives = [o["metric"] for o in state.space["objectives"] if o["metric"] != "density"]
    typer.echo(f"\nsweep {name} finished: {len(rows)} trials")
    for line in state.adjusted:
        typer.echo(f"  note    {line}")
    if state.settings:
        typer.echo(f"  set     {' '.join(state.settings)}")
    typer.echo(f"  folder  {folder}")
    typer.echo(f"  mlflow  {mask_url(state.tracking_uri)}  (experiment moonsweep-{name})")
    typer.echo(f"  optuna  {mask_url(state.storage_url)}  (study {name})")
    if state.tracking_uri.startswith("sqlite"):
        typer.echo(f"  browse  mlflow ui --backend-store-uri {state.tracking_uri} --host 127.0.0.1")
        # MLflow 3.17 opens an experiment on GenAI's overview unless the link says otherwise.
        typer.echo(f"  open    {experiment_url('http://127.0.0.1:5000', state.experiment_id)}")
    typer.echo("\nbaselines:")
    base = [r for r in rows if r["arm"] != SEARCH_ARM]
    typer.echo(
        format_table(base, ["arm", "level", "state", *objectives, "density", "mlflow_run_id"])
    )
    lead = leaders(state)
    typer.echo("\nleading trials (Pareto front over the objectives, constraints met):")
    if lead:
        shown = ["sparsity.method", "sparsity.density", "moon.alpha_mode", "voting.mode"]
        # The searched ones; the level is the `density` objective's column already.
        params = [p for p in shown if p in state.space["parameters"] and p != "sparsity.density"]
        columns = ["optuna", "trial", *objectives, "density", *params]
        typer.echo(format_table(lead[:LEADERS_SHOWN], columns))
        if len(lead) > LEADERS_SHOWN:
            more = len(lead) - LEADERS_SHOWN
            typer.echo(f"... and {more} more on the front; all of them: moonsweep status {name}")
    else:
        typer.echo("  none finished")
    _echo_levels(compare_levels(state, rows))


@app.command()
def select(
    name: Annotated[str, typer.Argument(help="The sweep")],
    constraint: Annotated[
        list[str] | None,
        Opt("--constraint", "-c", help="METRIC OP VALUE, e.g. accuracy>=0.95 (repeatable)"),
    ] = None,
    prefer: Annotated[
        str | None, Opt(help="Metric that decides among the candidates (default: 1st objective)")
    ] = None,
    space_constraints: Annotated[
        bool,
        Opt(
            "--space-constraints/--no-space-constraints",
            help="Apply the space's own constraints too (e.g. accuracy within 1 point of dense)",
        ),
    ] = True,
    confirm_seeds: Annotated[
        int, Opt(min=0, help="Re-train top candidates and baselines on N new, shared seeds")
    ] = 0,
    confirm_top: Annotated[int, Opt(min=1, help="How many candidates to confirm")] = 3,
    density_budget: Annotated[
        float | None,
        Opt(help="Largest density the model may have, e.g. 0.05 (its level, with levels)"),
    ] = None,
    register: Annotated[
        str | None, Opt(help="Register the choice in MLflow under this name, alias champion")
    ] = None,
    workdir: Annotated[str | None, Opt(help="Work directory")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the selection as JSON")] = False,
) -> None:
    """Choose a model: Pareto front, constraints, preferred metric (validation figures only)."""
    _crash_reports_to(workdir, name)
    from sweep.champion import register as register_model  # lazy: MLflow's model code
    from sweep.records import run_settings
    from sweep.selection import select as choose  # lazy: the engine's training (seconds)
    from sweep.selection import settings_lines

    quiet_libraries()
    state, _ = load_state(name, workdir)
    constraints = list(constraint or [])
    if density_budget is not None and not 0 < density_budget <= 1:
        raise ConfigError(f"--density-budget {density_budget:g}: give a density in (0, 1]")
    rows = trial_rows(state, all_metrics=True)  # one read of the store for all of it
    selection = choose(
        state,
        constraints,
        prefer,
        confirm_seeds,
        confirm_top=confirm_top,
        on_progress=lambda line: typer.echo(line, err=True),
        sweep_constraints_too=space_constraints,
        density_budget=density_budget,
        rows=rows,
    )
    version = None
    if register:
        version = register_model(state, selection, register)
    chosen = selection.chosen
    mark_chosen(state, chosen["mlflow_run_id"])  # the MLflow UI's `moonsweep.chosen` tag
    level = None
    if chosen.get("level") is not None:  # paired deltas against the arms of its own level
        level = level_comparison(state, rows, chosen["level"], chosen)
    recorded = run_settings(state, chosen["mlflow_run_id"])  # what it was trained with
    if as_json:
        out = {
            "chosen": chosen,
            "settings": recorded.settings,
            "settings_picked": recorded.picked,
            "reasons": selection.reasons,
            "candidates": [r["mlflow_run_id"] for r in selection.candidates],
            "pareto": [r["mlflow_run_id"] for r in selection.pareto],
            "feasible": [r["mlflow_run_id"] for r in selection.feasible],
            "confirm_seeds": selection.confirm_seeds,
            "registered": None if version is None else f"{register}/{version.version}",
            "level": None if level is None else level.as_dict(),
        }
        typer.echo(json.dumps(out, indent=2, default=str))
        return
    metrics = list(dict.fromkeys([selection.prefer, *(m for m, _ in selection.objectives)]))
    columns = ["trial", "arm", "optuna", *metrics, "density", "mlflow_run_id"]
    typer.echo(f"candidates (feasible Pareto front, best {selection.prefer} first):")
    typer.echo(format_table(selection.candidates, columns))
    typer.echo("baselines:")
    typer.echo(format_table(selection.baselines, columns))
    typer.echo("\n".join(["", *selection.reasons]))
    test = ["accuracy", "auroc_near", "auroc_far", "fpr95_near", "ece"]
    shown = "  ".join(f"{m} {chosen[m]:.4g}" for m in test if chosen.get(m) is not None)
    typer.echo(f"test figures of the chosen trial (not used to choose): {shown}")
    typer.echo("\n".join(settings_lines(recorded)))
    typer.echo(f"chosen: {chosen['trial']}  runs:/{chosen['mlflow_run_id']}")
    if level is not None:
        typer.echo("\nthe chosen trial (searched) against the arms trained at its density:")
        typer.echo(levels_markdown([level]))
    if version is not None:
        typer.echo(
            f"registered: {register} version {version.version}, alias champion "
            f"(moonsweep predict {register}@champion)"
        )


@app.command()
def confirm(
    name: Annotated[str, typer.Argument(help="The sweep")],
    seeds: Annotated[int, Opt(help="How many fresh seeds, after the space's (shared by all)")],
    workdir: Annotated[str | None, Opt(help="Work directory")] = None,
) -> None:
    """Re-train each level's best searched trial and its arms on N fresh seeds, for the
    per-level table (`status`, `report`) to show confirmed figures; run again to resume."""
    _crash_reports_to(workdir, name)
    from sweep.confirm import confirm as confirm_levels  # lazy: the engine's training
    from sweep.confirm import summary_lines

    quiet_libraries()
    state, _ = load_state(name, workdir)
    done = confirm_levels(state, seeds, on_progress=lambda line: typer.echo(line, err=True))
    typer.echo("\n".join(summary_lines(done, name)))


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="NAME@ALIAS, NAME/VERSION or an MLflow URI")],
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(help=".npy/.pt tensors of [0,1] images, image files or folders"),
    ] = None,
    workdir: Annotated[str | None, Opt(help="Work directory (its mlflow.db)")] = None,
    tracking_uri: Annotated[str | None, Opt(help="MLflow tracking URI")] = None,
) -> None:
    """Class, confidence, OOD score and in/out flag per input, one JSON line each.

    Without INPUT: the test images of the model's own data suite (ID and every OOD set)."""
    _crash_reports_to(workdir)
    from engine.predict import load_inputs  # lazy: torchmetrics (seconds)
    from sweep.champion import load_predictor  # lazy: MLflow's model code (seconds)

    quiet_libraries()
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:
        db = (Path(workdir) if workdir else default_workdir()).resolve() / "mlflow.db"
        if not db.exists():
            fail(f"no MLflow store at {db}; give --workdir or --tracking-uri")
        uri = f"sqlite:///{db}"
    predictor = load_predictor(model, uri)
    if inputs:
        names, images = load_inputs(list(inputs), predictor.input_shape)
        sets = {"inputs": (names, images)}
    else:
        bundled = predictor.bundled_inputs()
        sets = {k: ([f"{k}[{i}]" for i in range(len(v))], v) for k, v in bundled.items()}
    for set_name, (names, images) in sets.items():
        rows = predictor.predict(images)
        for input_name, row in zip(names, rows, strict=True):
            typer.echo(json.dumps({"input": input_name, **row.as_dict()}))
        flagged = sum(not r.in_distribution for r in rows)
        typer.echo(
            f"{set_name}: {flagged} of {len(rows)} flagged out-of-distribution "
            f"({predictor.score} < {predictor.threshold:.4g}, 95% TPR on validation ID)",
            err=True,
        )


@app.command()
def report(
    name: Annotated[str, typer.Argument(help="The sweep")],
    workdir: Annotated[str | None, Opt(help="Work directory")] = None,
    mlflow_log: Annotated[
        bool, Opt("--mlflow/--no-mlflow", help="Also log the report to the parent MLflow run")
    ] = True,
) -> None:
    """An HTML report (plus PNGs) in the sweep's folder: Pareto front, arms compared over
    seeds, alpha schedules, the chosen model's calibration and ROC, importances, hypervolume."""
    _crash_reports_to(workdir, name)
    from sweep.render import comparison_markdown  # lazy: matplotlib (seconds)
    from sweep.report import build_report  # lazy: matplotlib, the engine's evaluation

    quiet_libraries()
    state, folder = load_state(name, workdir)
    built = build_report(
        state,
        folder,
        log_to_mlflow=mlflow_log,
        on_progress=lambda line: typer.echo(f"[report] {line}", err=True),
    )
    typer.echo(comparison_markdown(built.summary))
    typer.echo(f"\nwrote {built.html} and {len(built.images)} PNGs beside it")
    if built.logged_to:
        typer.echo(f"logged to MLflow run {built.logged_to} under report/")


@app.command()
def compare(
    sweeps: Annotated[
        list[str] | None,
        typer.Argument(help="Two or more sweeps: names in --workdir, or sweep folders"),
    ] = None,
    workdir: Annotated[str | None, Opt(help="Work directory")] = None,
    out: Annotated[
        Path | None,
        Opt(help="Folder for compare.html and its PNG (default: <workdir>/compare/A-vs-B)"),
    ] = None,
    mlflow_log: Annotated[
        bool,
        Opt(
            "--mlflow/--no-mlflow", help="Also log it as a run of the moonsweep-compare experiment"
        ),
    ] = True,
    tracking_uri: Annotated[
        str | None, Opt(help="MLflow store for that run (default: the first sweep's)")
    ] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the comparison as JSON")] = False,
) -> None:
    """Sweeps side by side: per density level each sweep's arms and paired deltas against the
    first sweep, hypervolumes under one reference point, all trade-off curves on one plot."""
    _crash_reports_to(workdir)
    from sweep.compare import (  # lazy: matplotlib (seconds)
        as_json as comparison_json,
    )
    from sweep.compare import (
        compare_sweeps,
        comparison_markdown,
        default_out,
        describe_written,
        log_comparison,
        write_comparison,
    )

    quiet_libraries()
    comparison = compare_sweeps(sweeps or [], workdir)
    written = write_comparison(comparison, out or default_out(comparison))
    if mlflow_log:
        log_comparison(comparison, written, tracking_uri)
    if as_json:
        typer.echo(comparison_json(comparison))
        return
    typer.echo(comparison_markdown(comparison))
    typer.echo("\n" + describe_written(written))


@app.command()
def presets() -> None:
    """List the named training presets."""
    for name in preset_names():
        typer.echo(name)


@app.command("list")
def list_(
    kind: Annotated[
        str | None,
        typer.Argument(help="models, suites, sparse-methods, scores, spaces or presets"),
    ] = None,
) -> None:
    """List what can be named in a config or a space: models, suites, sparse methods, OOD
    scores, search spaces, presets (read from their registries); all kinds by default."""
    from sweep import catalog  # lazy: the registries load torchvision and scikit-learn

    if kind is None:
        for name, entries in catalog.everything().items():
            typer.echo(f"{name}: {', '.join(entries)}")
        return
    for entry in catalog.names(kind):
        typer.echo(entry)


@app.command("ui")
def ui_(
    name: Annotated[str, typer.Argument(help="The sweep")],
    workdir: Annotated[str | None, Opt(help="Work directory")] = None,
    port: Annotated[int, Opt(min=1, max=65535, help="MLflow UI port")] = ui.MLFLOW_PORT,
    dashboard_port: Annotated[
        int, Opt(min=1, max=65535, help="optuna-dashboard port (when installed)")
    ] = ui.DASHBOARD_PORT,
) -> None:
    """Browse a sweep: MLflow's UI for its runs (and optuna-dashboard for its study, when
    installed: the optional extra `dashboard`) on 127.0.0.1, until Ctrl-C."""
    _crash_reports_to(workdir, name)
    state, folder = load_state(name, workdir)
    if not is_server(state.tracking_uri):  # a sweep from before the kind tag opens on its runs
        mark_experiment(state)
    ui.serve(state, folder, port, dashboard_port, echo=typer.echo)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
