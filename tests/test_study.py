"""bench/study.py at equal density: real tiny trainings, deltas re-derived by hand from the runs.

Two seeds, two density levels, three epochs of a narrow MLP: 14 real trainings in seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from bench import study
from sweep.contrasts import candidates, split_name

LEVELS = (0.05, 0.1)
ARGS = ["--seeds", "2", "--epochs", "3", "--set", "model.width=32"]
# What each arm must be, read back from its recorded config.
EXPECTED = {
    "moon_auto": {"method": "rigl", "moon": True, "voting": "weights"},
    "sparse": {"method": "rigl", "moon": False, "voting": "off"},
    "sparse+voting": {"method": "rigl", "moon": False, "voting": "weights"},
    "dense": {"method": "dense", "moon": False, "voting": "off"},
}
EXPECTED_VARIANT = {"moon_auto": "weights/msp", "sparse": "msp", "sparse+voting": "weights/msp"}
EXPECTED_VARIANT["dense"] = "msp"


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


def by_seed(res: dict[str, Any], arm: str, density: float | None) -> dict[int, dict[str, Any]]:
    runs = [r for r in res["runs"] if r["arm"] == arm and r["density"] == density]
    assert sorted(r["seed"] for r in runs) == [0, 1]
    return {r["seed"]: r["variants"] for r in runs}


def val_mean(variants: dict[int, dict[str, Any]], name: str) -> float:
    return statistics.fmean(variants[s][name]["val/auroc_near"] for s in sorted(variants))


def all_contrasts(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = [c for lv in res["levels"].values() for c in lv["contrasts"].values()]
    return [*out, res["dense"]["score_choice"]]


def check_figures(got: dict[str, Any], d: list[float]) -> None:
    """A contrast's figures are the paired test of the per-seed differences `d`."""
    assert got["mean"] == pytest.approx(statistics.fmean(d), abs=1e-12)
    assert got["n"] == len(d)
    if len(set(d)) == 1:  # no spread: no interval, no p, never a star
        assert got["low"] is None and got["p_t"] is None and got["p_holm"] is None
        assert not got["shown"]
        return
    low, high = stats.t.interval(0.95, len(d) - 1, loc=statistics.fmean(d), scale=stats.sem(d))
    assert (got["low"], got["high"]) == (pytest.approx(low), pytest.approx(high))
    assert got["p_t"] == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)


def test_each_contrast_compares_its_two_sides_at_one_shared_setting(done) -> None:
    res, printed, _ = done
    assert len(res["runs"]) == 2 * (1 + 3 * len(LEVELS))
    sections = printed.split("### density ")[1:]
    assert [s.split(" ")[0] for s in sections[: len(LEVELS)]] == [f"{d:g}" for d in LEVELS]
    for density, section in zip(LEVELS, sections, strict=True):
        level = res["levels"][f"{density:g}"]
        rows = {
            line.split(" | ")[0].strip("| "): line.strip("|").split(" | ")[2:]
            for line in section.splitlines()
            if line.startswith("| ") and " - " in line
        }
        for a, b in study.COMPARISONS:
            va = by_seed(res, a, None if a == "dense" else density)
            vb = by_seed(res, b, None if b == "dense" else density)
            c = level["contrasts"][f"{a} - {b}"]
            mine, theirs = c["variants"]
            (mode_a, score_a), (mode_b, score_b) = split_name(mine), split_name(theirs)
            assert score_a == score_b  # the same score (and DICE percentile) on both sides
            if mode_a and mode_b:
                assert mode_a == mode_b and c["kind"] == "same setting"
            else:
                assert c["kind"] == ("same setting" if mode_a == mode_b else "voting on one side")
            # Picked jointly on validation: no shared setting has a better mean of the means.
            best = max(
                (val_mean(va, m.mine) + val_mean(vb, m.theirs)) / 2
                for m in candidates(list(va[0]), list(vb[0]))
            )
            assert (val_mean(va, mine) + val_mean(vb, theirs)) / 2 == pytest.approx(best)
            for col, key in enumerate(study.METRICS):
                d = [va[s][mine][key] - vb[s][theirs][key] for s in (0, 1)]
                check_figures(c["figures"][key], d)
                cell = rows[f"{a} - {b}"][col].strip()
                assert cell.startswith(f"{100 * statistics.fmean(d):+.2f}"), (a, b, key, cell)
                assert cell.split(" ")[0].endswith("*") == c["figures"][key]["shown"]
        # The published contrast: MOON at its own msp (voting weights) against sparse's msp.
        pub = level["contrasts"]["moon_auto (published) - sparse (published)"]
        assert pub["variants"] == ["weights/msp", "msp"]
        assert level["arms"]["moon_auto (published)"]["variant"] == "weights/msp"
        va, vb = by_seed(res, "moon_auto", density), by_seed(res, "sparse", density)
        for key in study.METRICS:
            d = [va[s]["weights/msp"][key] - vb[s]["msp"][key] for s in (0, 1)]
            check_figures(pub["figures"][key], d)
    # The arms really differ (a wiring slip that trained one arm twice would show here).
    moon, sparse = by_seed(res, "moon_auto", 0.05), by_seed(res, "sparse", 0.05)
    assert moon[0]["weights/msp"] != sparse[0]["msp"]


def test_score_choice_is_the_pick_against_msp_on_the_same_models(done) -> None:
    res, _, _ = done
    cases = [("dense", None, res["dense"], res["dense"]["score_choice"])]
    for density in LEVELS:
        level = res["levels"][f"{density:g}"]
        for arm in study.SPARSE_ARMS:
            row, c = level["arms"][arm], level["contrasts"][f"{arm}: picked - msp"]
            cases.append((arm, density, row, c))
    for arm, density, row, c in cases:
        v = by_seed(res, arm, density)
        # Each arm's pick: the best validation mean over seeds, among every variant.
        assert val_mean(v, row["variant"]) == max(val_mean(v, n) for n in v[0])
        assert c["variants"][0] == row["variant"]
        mode, _ = split_name(row["variant"])
        assert c["variants"][1] == ("msp" if mode is None else f"{mode}/msp")
        for key in study.METRICS:
            d = [v[s][c["variants"][0]][key] - v[s][c["variants"][1]][key] for s in (0, 1)]
            check_figures(c["figures"][key], d)
        # Same trained models: accuracy does not depend on the score.
        assert c["figures"]["accuracy"]["mean"] == 0 and c["figures"]["accuracy"]["p_t"] is None


def test_holm_runs_over_the_whole_test_table(done) -> None:
    res, printed, _ = done
    tested = [f for c in all_contrasts(res) for f in c["figures"].values() if f["p_t"] is not None]
    assert res["holm"]["family"] == len(tested) > 10
    raw = [f["p_t"] for f in tested]
    order = sorted(range(len(raw)), key=raw.__getitem__)
    want, running = [0.0] * len(raw), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(raw) - rank) * raw[i]))
        want[i] = running
    for f, w in zip(tested, want, strict=True):
        assert f["p_holm"] == pytest.approx(w) and f["holm_family"] == len(tested)
        assert f["shown"] == (w < 0.05)
    assert f"Holm over the whole test table, {len(tested)} comparisons" in printed
    for density in LEVELS:
        verdicts = res["levels"][f"{density:g}"]["verdicts"]
        assert len(verdicts) == 3 and verdicts[0].startswith(f"{density:g}: ")
        assert ("beats" in verdicts[0]) == res["levels"][f"{density:g}"]["contrasts"][
            "moon_auto - sparse"
        ]["figures"]["auroc_near"]["shown"]
        assert verdicts[0] in printed


def test_published_metrics_are_the_published_variants_figures(done) -> None:
    res, _, _ = done
    for run in res["runs"]:
        assert run["published"] == EXPECTED_VARIANT[run["arm"]]
        for key, value in run["variants"][run["published"]].items():
            assert run["metrics"][key] == value
        modes = {split_name(n)[0] for n in run["variants"]}
        votes = EXPECTED[run["arm"]]["voting"] != "off"
        assert modes == ({"weights", "predictions"} if votes else {None})
        assert any(n.endswith("unknown") for n in run["variants"]) == (run["arm"] == "moon_auto")


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
        assert labels == [*study.SPARSE_ARMS, "moon_auto (published)", "dense"]
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
        assert a["variants"] == b["variants"]


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
