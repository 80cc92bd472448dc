"""`moonsweep report` on a small real sweep (embedded Ray, MLflow and Optuna on SQLite, tiny
real trainings), checked against the stores, by hand and in headless Chromium."""

from __future__ import annotations

import html
import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from runner import SMALL_SET, moonsweep
from scipy import stats

from engine.config import effective_settings, format_value, validate_config
from sweep import plots
from sweep.gather import TABLE_METRICS, alpha_rows, row_label
from sweep.hypervolume import hypervolume_history, nadir, volume_after
from sweep.render import _cell, alpha_caption, comparison_markdown
from sweep.state import finished_study, load_run_json, load_state
from sweep.stats import t_interval
from sweep.stores import make_storage

pytestmark = pytest.mark.slow

SPACE = (
    SMALL_SET
    + """parameters:
  sparsity.method: {distribution: categorical, choices: [rigl, set]}
  sparsity.density: {distribution: log_uniform, low: 0.05, high: 0.5}
  moon.alpha_mode: {distribution: categorical, choices: [auto, fixed]}
  moon.alpha_final: {distribution: log_uniform, low: 0.1, high: 10, when: {moon.alpha_mode: auto}}
  moon.alpha: {distribution: log_uniform, low: 0.01, high: 10, when: {moon.alpha_mode: fixed}}
objectives:
  - {metric: val/auroc_near, direction: maximize}
  - {metric: val/accuracy, direction: maximize}
  - {metric: val/ece, direction: minimize}
constraints:
  - {metric: val/accuracy, op: ">=", baseline: dense, offset: -0.05}
sampler: {name: random, seed: 3}
seeds: [0, 1]
budget: {trials: 6, max_concurrent: 2}
early_stopping: null
report_every: 3
"""
)
IMAGES = {
    "pareto.png",
    "density.png",
    "alpha.png",
    "reliability.png",
    "roc.png",
    "importances.png",
    "hypervolume.png",
}
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    root = tmp_path_factory.mktemp("report")
    (root / "space.yaml").write_text(SPACE)
    workdir = root / "w"
    run = moonsweep(
        "run", "--space", str(root / "space.yaml"), "--workdir", str(workdir), "--name", "rep"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    proc = moonsweep("report", "rep", "--workdir", str(workdir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((workdir / "rep" / "report" / "report.json").read_text())
    return workdir, summary, proc.stdout


def _client(workdir: Path) -> tuple:
    state, _ = load_state("rep", workdir)
    return state, MlflowClient(state.tracking_uri)


def test_report_files_and_parent_run(reported) -> None:
    workdir, summary, stdout = reported
    folder = workdir / "rep" / "report"
    assert {p.name for p in folder.iterdir()} == IMAGES | {"report.html", "report.json"}
    for name in IMAGES:
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and min(image.size) > 100, name
    state, client = _client(workdir)
    logged = {Path(a.path).name for a in client.list_artifacts(state.parent_run_id, "report")}
    assert logged == IMAGES | {"report.html", "report.json"}
    # Self-contained: every figure is embedded, nothing is fetched from elsewhere.
    text = (folder / "report.html").read_text()
    assert text.count('src="data:image/png;base64,') == len(IMAGES)
    assert "http://" not in text and "https://" not in text
    # A space without levels: no comparison at equal density, and the page says why.
    assert summary["levels"] == [] and "declares no density levels" in text
    assert "| best searched |" in stdout and str(folder / "report.html") in stdout
    # 6 searched and the 4 default arms; a searched trial of this short sweep may finish at
    # chance (collapsed: not a candidate), counted apart.
    states = summary["trial_states"]
    assert sum(states.values()) == 10 and set(states) <= {"done", "collapsed"}
    assert states["done"] >= 4 + 1


def test_arms_are_the_right_runs_and_figures_follow_the_seeds(reported) -> None:
    workdir, summary, _ = reported
    state, client = _client(workdir)
    from sweep.selection import select

    assert summary["arms"]["chosen"] == select(state).chosen["mlflow_run_id"]
    for arm in ("moon_auto", "sparse", "sparse+voting", "dense"):
        run = client.get_run(summary["arms"][arm])
        assert run.data.tags["moonsweep.arm"] == arm
    seeds = {}
    for arm, run_id in summary["arms"].items():
        seeds[arm] = [load_run_json(client, run_id, f"final/metrics-seed{s}.json") for s in (0, 1)]
        recorded = client.get_run(run_id).data.metrics  # the trial's own mean over seeds
        for metric in TABLE_METRICS:
            for part, prefix in (("test", ""), ("val", "val/")):
                values = [m[prefix + metric] for m in seeds[arm]]
                cell = summary["table"][part][arm][metric]
                half = stats.t.ppf(0.975, 1) * np.std(values, ddof=1) / math.sqrt(2)
                assert cell["mean"] == pytest.approx(recorded[prefix + metric], abs=1e-9)
                assert cell["low"] == pytest.approx(np.mean(values) - half, abs=1e-9)
                assert cell["high"] == pytest.approx(np.mean(values) + half, abs=1e-9)
    for arm in ("moon_auto", "sparse", "sparse+voting", "dense"):
        for metric in TABLE_METRICS:
            diffs = [
                c[metric] - b[metric] for c, b in zip(seeds["chosen"], seeds[arm], strict=True)
            ]
            delta = summary["deltas"]["test"][arm][metric]
            assert delta["mean"] == pytest.approx(np.mean(diffs), abs=1e-9)
            assert delta["n"] == 2


def test_chosen_model_reevaluated_from_its_checkpoint(reported) -> None:
    # The reliability diagram and ROC curves come from the checkpoint; their figures must be
    # the ones the trial recorded for that seed.
    workdir, summary, _ = reported
    _, client = _client(workdir)
    recorded = load_run_json(client, summary["arms"]["chosen"], "final/metrics-seed0.json")
    again = summary["chosen_reevaluated"]
    assert again["seed"] == 0
    for part, prefix in (("test", ""), ("val", "val/")):
        assert again["ece"][part] == pytest.approx(recorded[prefix + "ece"], abs=1e-6)
        assert again["accuracy"][part] == pytest.approx(recorded[prefix + "accuracy"], abs=1e-9)
        assert set(again["auroc"][part]) == {"digits_6-9", "photos", "noise"}
        for name, value in again["auroc"][part].items():
            assert value == pytest.approx(recorded[f"{prefix}auroc/{name}"], abs=1e-9)


def _brute_hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Union of the boxes [p, reference] (all minimised), cell by cell on the coordinate grid."""
    axes = [np.unique(np.r_[points[:, d], reference[d]]) for d in range(points.shape[1])]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        low = np.array([a[i] for a, i in zip(axes, cell, strict=True)])
        high = np.array([a[i + 1] for a, i in zip(axes, cell, strict=True)])
        if (points <= low).all(axis=1).any():
            total += float(np.prod(high - low))
    return total


def test_hypervolume_against_brute_force(reported) -> None:
    workdir, summary, _ = reported
    state, _ = _client(workdir)
    study = optuna.load_study(study_name="rep", storage=make_storage(state.storage_url))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    ok = [t for t in complete if all(v <= 0 for v in t.constraints.values())]
    assert 0 < len(ok) < len(complete)  # the nadir must leave the infeasible trials out
    values = np.array([t.values for t in ok])
    sign = np.array([-1.0, -1.0, 1.0])  # maximise, maximise, minimise -> all minimised
    expected_ref = [values[:, 0].min(), values[:, 1].min(), values[:, 2].max()]
    reference = nadir([study])
    assert reference == pytest.approx(expected_ref)
    assert summary["hypervolume_reference"] == pytest.approx(expected_ref)
    numbers, volumes = hypervolume_history(study, reference)
    assert numbers == [t.number for t in complete]
    for trial in complete:
        upto = [
            t.values
            for t in complete
            if t.number <= trial.number and all(v <= 0 for v in t.constraints.values())
        ]
        brute = _brute_hypervolume(np.array(upto) * sign, np.array(reference) * sign) if upto else 0
        assert volume_after(numbers, volumes, trial.number) == pytest.approx(brute, abs=1e-12)
    assert volumes[-1] > 0  # a feasible trial beyond the feasible nadir in every objective


def test_importances_per_objective(reported) -> None:
    workdir, summary, _ = reported
    state, _ = _client(workdir)
    study = optuna.load_study(study_name="rep", storage=make_storage(state.storage_url))
    searched = {name for t in study.trials for name in t.params}
    assert sorted(summary["importances"]) == ["val/accuracy", "val/auroc_near", "val/ece"]
    for values in summary["importances"].values():
        assert set(values) <= searched and "sparsity.density" in values
        assert sum(values.values()) == pytest.approx(1.0)


def test_report_renders_in_chromium(reported) -> None:
    from playwright.sync_api import sync_playwright

    workdir, _, _ = reported
    page_file = workdir / "rep" / "report" / "report.html"
    assert Path(CHROMIUM).exists(), "Chromium missing: run .ci/system-deps.sh (make test does)"
    errors: list[str] = []
    shot = page_file.parent.parent / "screenshot.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(page_file.as_uri(), wait_until="load")
            widths = page.evaluate(
                "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
            )
            headings = page.evaluate(
                "Array.from(document.querySelectorAll('h2')).map(h => h.textContent)"
            )
            page.screenshot(path=str(shot), full_page=True)
            figure_shots = [img.screenshot() for img in page.query_selector_all("img")]
        finally:
            browser.close()
    assert errors == []
    assert {alt for alt, _, _ in widths} == IMAGES
    assert all(done and width > 100 for _, done, width in widths), widths
    assert "Pareto front" in headings and "Hypervolume against trial count" in headings
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.shape[0] > 2000  # the whole page, figures included
    assert pixels.std() > 20  # not a blank page
    import io

    for png in figure_shots:  # each figure as drawn on the page holds a plot, not a blank box
        with Image.open(io.BytesIO(png)) as image:
            drawn = np.asarray(image.convert("L"), dtype=float)
        assert drawn.std() > 10 and (drawn < 128).mean() > 0.005


def test_unknown_sweep_exits_2(reported) -> None:
    workdir, _, _ = reported
    proc = moonsweep("report", "nope", "--workdir", str(workdir))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: no sweep named 'nope' in {workdir}; sweeps there: rep"
    ]


def test_t_interval_by_hand() -> None:
    one = t_interval([0.5])
    assert one.mean == 0.5 and math.isnan(one.low) and one.n == 1
    same = t_interval([0.2, 0.2, 0.2])
    assert (same.low, same.high) == (pytest.approx(0.2), pytest.approx(0.2))
    # n = 3, mean 2, sd 1: half-width t_{0.975,2} * 1 / sqrt(3) = 4.302653 / 1.732051
    three = t_interval([1.0, 2.0, 3.0])
    assert three.high - 2.0 == pytest.approx(4.302653 / math.sqrt(3), abs=1e-6)
    summary = {
        "metrics": ["accuracy"],
        "table": {"test": {"dense": {"accuracy": three.as_dict()}}},
        "deltas": {"test": {}},
    }
    # A figure without bounds (nll) is printed as computed; a bounded one (accuracy, in [0, 100]
    # points) is clipped to its bounds, and the table says so.
    summary["metrics"] = ["nll"]
    summary["table"]["test"]["dense"] = {"nll": three.as_dict()}
    assert comparison_markdown(summary).splitlines()[-1] == "| dense | 200.00 [-48.41, 448.41] |"
    summary["metrics"] = ["accuracy"]
    summary["table"]["test"]["dense"] = {"accuracy": three.as_dict()}
    lines = comparison_markdown(summary).splitlines()
    assert lines[2] == "| dense | 200.00 [0.00, 100.00] |"
    assert "clipped to [0, 100]" in lines[-1]


# -- the chosen model's settings, points, bounds and counts --------------------------------------


def _page(workdir: Path) -> str:
    return (workdir / "rep" / "report" / "report.html").read_text()


def _caption(page: str, image: str) -> str:
    found = re.search(rf'alt="{re.escape(image)}"><figcaption class=note>(.*?)</figcaption>', page)
    assert found, image
    return html.unescape(found.group(1))


def test_chosen_models_settings_table_lists_what_it_was_trained_with(reported) -> None:
    workdir, summary, _ = reported
    state, client = _client(workdir)
    run_id = summary["chosen"]["mlflow_run_id"]
    described = load_run_json(client, run_id, "trial.json")
    configs = [validate_config(c) for c in described["configs"]]
    expected = effective_settings(configs[0])  # this space has no test-time grid
    expected["seed"] = "0,1"
    section = _page(workdir).split("<h2>The chosen model</h2>", 1)[1].split("<h2>", 1)[0]
    table = section.split("<table class='kv settings'>", 1)[1].split("</table>", 1)[0]
    shown = dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td>", table))
    assert shown == {k: html.escape(format_value(v)) for k, v in expected.items()}
    # What a user ships: the score and the voting mode, MOON's alpha settings of its mode.
    assert shown["eval.primary"] == configs[0].eval.primary
    assert shown["voting.mode"] == configs[0].voting.mode
    assert "moon.warmup_epochs" in shown and "voting.epochs" in shown
    auto = configs[0].moon.alpha_mode == "auto"
    assert ("moon.alpha" in shown) != auto and ("moon.alpha_final" in shown) == auto
    assert summary["chosen_settings"] == expected and summary["chosen_picked"] == []
    # The run's MLflow params say the same.
    params = client.get_run(run_id).data.params
    assert {k: v for k, v in params.items() if not k.startswith("searched.")} == {
        k: str(v) for k, v in expected.items()
    }


def test_alpha_caption_counts_the_trials_drawn(reported) -> None:
    workdir, summary, _ = reported
    moon = [r for r in summary["trials"] if r["arm"] == "search" and r["state"] == "done"]
    assert 0 < len(moon) <= 60  # MOON is always on in this space; every one is drawn
    assert _caption(_page(workdir), "alpha.png") == (
        "Alpha logged per epoch (the mean over the trial's seeds)."
    )


def test_alpha_caption_counts_a_cut() -> None:
    rows = [
        {"arm": "search", "optuna": i, "trial": f"t{i}", "mlflow_run_id": str(i),
         "moon.enabled": "True"}
        for i in range(5)
    ] + [{"arm": "moon_auto", "optuna": -1, "trial": "a", "mlflow_run_id": "a",
          "moon.enabled": "True"}]  # fmt: skip
    drawn = {row_label(r): [] for r in alpha_rows(rows, [rows[4]], limit=3)}
    assert len(drawn) == 4  # the arm and 3 searched
    assert " 3 of the 5 searched trials with MOON on are drawn" in alpha_caption(rows, drawn)
    every = {row_label(r): [] for r in alpha_rows(rows, limit=60)}
    assert " of the " not in alpha_caption(rows, every)


def test_importances_say_how_many_trials_they_rest_on(reported) -> None:
    workdir, _, _ = reported
    state, _ = _client(workdir)
    complete = [t for t in finished_study(state).trials if t.state.name == "COMPLETE"]
    caption = _caption(_page(workdir), "importances.png")
    assert f"on the {len(complete)} complete trials" in caption


def test_levels_plot_in_points_with_bounded_bands() -> None:
    def figures(mean: float, low: float, high: float) -> dict:
        return {"mean": mean, "low": low, "high": high, "n": 2}

    levels = [
        {"density": d, "arms": {"moon_auto": {"figures": {
            "auroc_near": figures(0.9, 0.7, 1.1), "accuracy": figures(0.95, 0.9, 1.0),
            "ece": figures(0.02, -0.03, 0.07)}}}}
        for d in (0.05, 0.1)
    ]  # fmt: skip
    fig = plots.levels_tradeoff(levels, scale=plots.POINTS)
    for ax, metric in zip(fig.axes, plots.TRADEOFF_METRICS, strict=True):
        assert ax.get_ylabel() == f"{metric} (points)" and "cut at 0 and 100" in ax.get_title()
        [line] = ax.get_lines()
        mean = levels[0]["arms"]["moon_auto"]["figures"][metric]
        assert list(line.get_ydata()) == pytest.approx([100 * mean["mean"]] * 2)
        [band] = ax.collections
        ys = band.get_paths()[0].vertices[:, 1]
        assert ys.min() == pytest.approx(max(100 * mean["low"], 0.0))
        assert ys.max() == pytest.approx(min(100 * mean["high"], 100.0))
    # A bounded interval is printed within its bounds, a delta's within +-100.
    assert _cell(t_interval([0.98, 1.0])) == "99.00 [86.29, 111.71]"
    assert _cell(t_interval([0.98, 1.0]), bound=True) == "99.00 [86.29, 100.00]"
    assert _cell(t_interval([-0.98, 1.0]), True, True) == "+1.00 [-100.00, +100.00]"
