"""bench/study.py at equal density: real tiny trainings, deltas re-derived by hand from the runs.

Two seeds, two density levels, three epochs of a narrow MLP: 14 real trainings in seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from bench import study

LEVELS = (0.05, 0.1)
ARGS = ["--seeds", "2", "--epochs", "3", "--set", "model.width=32"]
# What each arm must be, read back from its recorded config.
EXPECTED = {
    "moon_auto": {"method": "rigl", "moon": True, "voting": "weights"},
    "sparse": {"method": "rigl", "moon": False, "voting": "off"},
    "sparse+voting": {"method": "rigl", "moon": False, "voting": "weights"},
    "dense": {"method": "dense", "moon": False, "voting": "off"},
}


def run_main(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert study.main(argv) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    tmp = tmp_path_factory.mktemp("study")
    levels = ",".join(map(str, LEVELS))
    argv = [*ARGS, "--densities", levels, "--json", str(tmp / "s.json")]
    printed = run_main([*argv, "--plot", str(tmp / "s.png")])
    return json.loads((tmp / "s.json").read_text()), printed, tmp / "s.png"


def metric_by_seed(res: dict[str, Any], arm: str, density: float | None, key: str) -> list[float]:
    runs = [r for r in res["runs"] if r["arm"] == arm and r["density"] == density]
    assert sorted(r["seed"] for r in runs) == [0, 1]
    return [r["metrics"][key] for r in sorted(runs, key=lambda r: r["seed"])]


def test_deltas_are_the_per_seed_differences_of_the_runs(done) -> None:
    res, printed, _ = done
    assert len(res["runs"]) == 2 * (1 + 3 * len(LEVELS))
    sections = printed.split("### density ")[1:]
    assert [s.split(" ")[0] for s in sections] == [f"{d:g}" for d in LEVELS]
    t = stats.t.ppf(0.975, 1)
    for density, section in zip(LEVELS, sections, strict=True):
        level = res["levels"][f"{density:g}"]
        rows = {
            line.split(" | ")[0].strip("| "): line.strip("|").split(" | ")[1:]
            for line in section.splitlines()
            if line.startswith("| ") and " - " in line
        }
        for a, b in study.COMPARISONS:
            name = f"{a} - {b}"
            for col, key in enumerate(study.METRICS):
                xa = metric_by_seed(res, a, None if a == "dense" else density, key)
                xb = metric_by_seed(res, b, None if b == "dense" else density, key)
                d = [xa[0] - xb[0], xa[1] - xb[1]]
                mean, sd = (d[0] + d[1]) / 2, abs(d[0] - d[1]) / math.sqrt(2)
                got = level["deltas"][name][key]
                assert got["mean"] == pytest.approx(mean, abs=1e-12)
                assert got["ci_low"] == pytest.approx(mean - t * sd / math.sqrt(2), abs=1e-12)
                assert got["ci_high"] == pytest.approx(mean + t * sd / math.sqrt(2), abs=1e-12)
                if any(d):
                    assert got["wilcoxon_p"] == pytest.approx(stats.wilcoxon(d).pvalue)
                cell = rows[name][col].strip()
                assert cell.startswith(f"{100 * mean:+.2f}"), (name, key, cell)
                low, high = got["ci_low"], got["ci_high"]
                assert cell.split(" [")[0].endswith("*") == (low > 0 or high < 0)
                assert f"[{100 * low:+.2f}, {100 * high:+.2f}]" in cell
    # The arms really differ (a wiring slip that trained one arm twice would show here).
    moon = metric_by_seed(res, "moon_auto", 0.05, "auroc_near")
    assert moon != metric_by_seed(res, "sparse", 0.05, "auroc_near")


def test_each_run_is_trained_at_its_level_with_its_arms_settings(done) -> None:
    res, _, _ = done
    differing = {("sparsity", "density"), ("sparsity", "method"), ("moon", "enabled")}
    differing |= {("voting", "mode"), ("eval", "scores"), ("seed",)}

    def common_part(cfg: dict[str, Any]) -> dict[str, Any]:
        flat = {(k,): v for k, v in cfg.items() if not isinstance(v, dict)}
        for section, sub in cfg.items():
            if isinstance(sub, dict):
                flat |= {(section, k): v for k, v in sub.items()}
        return {k: v for k, v in flat.items() if k not in differing}

    first = common_part(res["runs"][0]["config"])
    for run in res["runs"]:
        cfg, want = run["config"], EXPECTED[run["arm"]]
        assert cfg["seed"] == run["seed"]
        assert cfg["sparsity"]["method"] == want["method"]
        assert cfg["moon"]["enabled"] is want["moon"]
        assert cfg["voting"]["mode"] == want["voting"]
        if run["arm"] == "dense":
            assert run["density"] is None and run["achieved_density"] == 1.0
        else:
            assert cfg["sparsity"]["density"] == run["density"]  # exactly the level's
            assert abs(run["achieved_density"] - run["density"]) < 0.01
        # Split, epochs, optimizer, model, schedule: the same in every run.
        assert common_part(cfg) == first
    assert first[("data", "split_seed")] == 0 and first[("model", "width")] == 32


def test_moon_activity_is_read_from_the_moon_runs_of_its_level(done) -> None:
    res, printed, _ = done
    for density in LEVELS:
        moon = [r for r in res["runs"] if r["arm"] == "moon_auto" and r["density"] == density]
        act = res["levels"][f"{density:g}"]["moon_activity"]
        assert act["alpha0_median"] == statistics.median(r["alpha0"] for r in moon)
        assert all(r["alpha0"] > 0 for r in moon)
        err = [r["train_error_moon_epochs"] for r in moon]
        assert act["train_error_moon_epochs_mean"] == pytest.approx(statistics.fmean(err))
    assert printed.count("MOON activity (moon_auto)") == len(LEVELS)


def test_trade_off_plot_has_one_line_per_arm(done) -> None:
    res, _, png = done
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = study.trade_off_figure(res)
    for ax in fig.axes:
        labels = [line.get_label() for line in ax.get_lines()]
        assert labels == [*study.SPARSE_ARMS, "dense"]
        assert ax.get_xscale() == "log"
        assert list(ax.get_lines()[0].get_xdata()) == list(LEVELS)


def test_two_jobs_give_the_same_runs_as_one(done, tmp_path: Path) -> None:
    res, _, _ = done
    out = tmp_path / "j2.json"
    run_main([*ARGS, "--densities", "0.05", "--jobs", "2", "--json", str(out)])
    two = json.loads(out.read_text())["runs"]
    one = [r for r in res["runs"] if r["density"] in (None, 0.05)]
    assert [(r["arm"], r["seed"]) for r in two] == [(r["arm"], r["seed"]) for r in one]
    for a, b in zip(one, two, strict=True):
        assert a["metrics"] == b["metrics"] and a["config"] == b["config"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--densities", "0,0.5"], "0 < density < 1"),
        (["--densities", "0.1,abc"], "'abc' is not a number"),
        (["--densities", "0.1,0.1"], "listed twice"),
        (["--densities", "0.1", "--set", "sparsity.density=0.2"], "one of them"),
        (["--set", "sparsity.method=dense"], "sparse method"),
        (["--set", "model.widht=3"], "unknown setting"),
        (["--plot", "x.svg"], ".png"),
    ],
)
def test_bad_input_is_one_message_and_exit_2(argv, says, capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        study.main([*argv, "--json", str(tmp_path / "never.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "never.json").exists()
