"""Search spaces and the searcher, without Ray: validation, conditions, baselines first,
constraints, failures as FAIL, all against a real Optuna SQLite storage."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
from ray.tune.search import Searcher

from engine.config import ConfigError
from sweep.search import SweepSearcher, make_sampler
from sweep.spaces import SEARCH_ARM, load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_default_space_is_valid_and_conditional() -> None:
    space = load_space("default")
    assert space.baselines["dense"]["sparsity.method"] == "dense"
    assert space.parameters["moon.alpha_final"].distribution == "log_uniform"
    # Log ranges around the method's reference alpha_final 1.0 (MOON.md section 8), capped
    # below where this model diverged in single runs (alpha_final 30, a fixed alpha of 5).
    final, fixed = space.parameters["moon.alpha_final"], space.parameters["moon.alpha"]
    assert final.low <= 0.1 and 1.0 < final.high < 30
    assert fixed.low <= 0.01 and 1.0 < fixed.high < 5
    study = optuna.create_study(
        directions=["maximize"] * 3, sampler=optuna.samplers.RandomSampler(0)
    )
    seen_modes = set()
    for _ in range(30):
        params = space.suggest(study.ask())
        mode = params["moon.alpha_mode"]
        seen_modes.add(mode)
        assert ("moon.alpha" in params) == (mode == "fixed")
        assert ("moon.init_factor" in params) == (mode == "auto")
        assert 0.02 <= params["sparsity.density"] <= 0.5
        cfg = space.trial_config(params, seed=1)
        assert cfg.seed == 1 and cfg.epochs == 30
    assert seen_modes == {"auto", "fixed"}


def test_grace_waits_for_the_mask_to_freeze() -> None:
    space = load_space("default")
    cfg = space.trial_config({}, 0)
    assert space.grace_epochs() >= cfg.sparsity.end_fraction * cfg.epochs


def _space_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


# A condition on a parameter that is not listed before it.
WHEN_BEFORE = (
    "  moon.alpha: {distribution: uniform, low: 0, high: 1, when: {moon.alpha_mode: fixed}}\n"
)
BASE = """
parameters:
  sparsity.density: {distribution: log_uniform, low: 0.05, high: 0.5}
objectives:
  - {metric: val/auroc_near, direction: maximize}
"""


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (BASE.replace("low: 0.05", "low: -1"), "parameters.sparsity.density"),
        (BASE.replace("log_uniform", "gaussian"), "parameters.sparsity.density.distribution"),
        (BASE.replace("sparsity.density", "sparsity.densty"), "sparsity.densty"),
        (BASE.replace("high: 0.5", "high: 3"), "parameters.sparsity.density"),
        (BASE.replace("maximize", "maximise"), "objectives.0.direction"),
        (BASE + "baselines: {dense: {sparsity.method: prune}}\n", "baselines.dense"),
        (BASE + "constraints: [{metric: val/accuracy, op: '>=', baseline: nope}]\n", "nope"),
        (BASE + "resources: {gpu: 0.3}\n", "resources"),
        (BASE + "seeds: [1, 1]\n", "seeds"),
        (BASE + "budgett: {trials: 3}\n", "budgett"),
        (BASE + "sampler: {name: nsga2, multivariate: true}\n", "multivariate applies to"),
        (
            BASE.replace("parameters:\n", "parameters:\n" + WHEN_BEFORE),
            "parameters.moon.alpha.when",
        ),
        ("- not a mapping\n", "mapping"),
        ("parameters: {a: [\n", "YAML"),
    ],
)
def test_bad_spaces_name_the_entry(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_space(_space_file(tmp_path, text))
    assert needle in str(err.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (BASE.replace("val/auroc_near", "auroc_near"), "use val/auroc_near"),
        (BASE.replace("val/auroc_near", "test/auroc_near"), "use val/auroc_near"),
        (BASE.replace("val/auroc_near", "val/auroc_nera"), "no such validation figure"),
        (BASE.replace("val/auroc_near", "val/msp/accuracy"), "no such validation figure"),
        (BASE.replace("val/auroc_near", "density/head.weight"), "no such validation figure"),
        (BASE + "constraints: [{metric: ece, op: '<=', value: 0.2}]\n", "use val/ece"),
        (BASE + "test_time: {pick: {metric: val/auroc_nera}}\n", "no such validation figure"),
        (BASE + "test_time: {pick: {metric: density}}\n", "the test-time pick is on val/"),
        (BASE + "early_stopping: {metric: auroc_near}\n", "a test-split figure"),
        (BASE + "early_stopping: {metric: val/accuracy}\n", "not in every report Ray gets"),
        (BASE + "early_stopping: {metric: loss}\n", "not a figure the trials report"),
    ],
)
def test_choices_are_made_on_validation_figures(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_space(_space_file(tmp_path, text))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_every_validation_figure_may_be_decided_on(tmp_path: Path) -> None:
    names = ["val/accuracy", "val/known_accuracy", "val/fpr95_far", "val/energy/auroc_near",
             "val/auroc/photos", "val/dice/aupr_out/digits_6-9", "density"]  # fmt: skip
    objectives = "".join(f"  - {{metric: {n}, direction: maximize}}\n" for n in names)
    text = BASE + objectives + "test_time: {pick: {metric: val/auroc/photos}}\n"
    text += "constraints: [{metric: val/nll, op: '<=', value: 2}]\n"
    space = load_space(_space_file(tmp_path, text))
    assert [o.metric for o in space.objectives] == ["val/auroc_near", *names]
    assert space.early_stopping is not None and space.early_stopping.metric == "val_accuracy"


def test_a_pick_on_a_metric_no_variant_has_is_an_error() -> None:
    """Not the first variant: a failure the trial records (its `fail_reason`)."""
    import math

    from engine.test_time import PickError, PickRule, pick

    means = [{"val/ece": 0.05, "ece": 0.04}, {"val/ece": math.nan, "ece": 0.03}]
    with pytest.raises(PickError, match="no variant has it; they have val/ece$"):
        pick(means, PickRule(metric="val/auroc_near"))
    # Missing on some variants only: those are never kept, as a NaN.
    assert pick([{}, {"val/auroc_near": 0.6}], PickRule(metric="val/auroc_near")) == 1
    assert pick([{"val/ece": math.nan}, {}], PickRule(metric="val/ece")) == 0


def test_unknown_space_name() -> None:
    with pytest.raises(ConfigError, match="spaces: .*default"):
        load_space("no-such-space")


def test_folder_named_like_a_space_does_not_hide_it(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "default").mkdir()  # e.g. `--workdir default`
    monkeypatch.chdir(tmp_path)
    shipped = load_space(Path(__file__).parents[1] / "search_spaces" / "default.yaml")
    assert load_space("default").model_dump() == shipped.model_dump()


def _searcher(tmp_path: Path, extra: str = "", trials: int = 3) -> SweepSearcher:
    text = BASE + f"budget: {{trials: {trials}}}\n" + extra
    space = load_space(_space_file(tmp_path, text))
    return SweepSearcher(space, f"sqlite:///{tmp_path / 'optuna.db'}", "s")


def _final(value: float, accuracy: float = 0.9) -> dict:
    return {"final": 1, "val/auroc_near": value, "val/accuracy": accuracy}


def test_baselines_first_then_optuna_then_finished(tmp_path: Path) -> None:
    searcher = _searcher(tmp_path)
    # The default arms (engine/arms.py); the unlevelled one (dense) first.
    arms = [searcher.suggest(f"b{i}")["arm"] for i in range(4)]
    assert arms == ["dense", "moon_auto", "sparse", "sparse+voting"]
    configs = [searcher.suggest(f"t{i}") for i in range(3)]
    for i in range(4):
        searcher.on_trial_complete(f"b{i}", _final(0.8))
    assert [c["arm"] for c in configs] == [SEARCH_ARM] * 3
    assert [c["optuna_trial"] for c in configs] == [0, 1, 2]
    assert searcher.suggest("t3") is Searcher.FINISHED
    # Baselines are outside Optuna's budget: the study holds only the searched trials.
    assert len(searcher.study.trials) == 3
    searcher.on_trial_complete("t0", _final(0.91))
    searcher.on_trial_result("t1", {"fail_reason": "TrainingDiverged: loss is nan"})
    searcher.on_trial_complete("t1", {"fail_reason": "TrainingDiverged: loss is nan"})
    searcher.on_trial_complete("t2", {"epoch": 16, "val_accuracy": 0.5})  # stopped by ASHA
    states = [t.state.name for t in searcher.study.trials]
    assert states == ["COMPLETE", "FAIL", "FAIL"]  # never PRUNED in a multi-objective study
    attrs = [t.user_attrs for t in searcher.study.trials]
    assert attrs[1]["fail_reason"].startswith("TrainingDiverged")
    assert attrs[2]["fail_reason"] == "stopped early by the scheduler"
    assert attrs[0]["ray_trial_id"] == "t0"


def test_constraint_against_a_baseline(tmp_path: Path) -> None:
    extra = "constraints: [{metric: val/accuracy, op: '>=', baseline: dense, offset: -0.01}]\n"
    searcher = _searcher(tmp_path, extra, trials=2)
    for i in range(4):  # b0 is dense (unlevelled arms first), b1-b3 the sparse arms
        searcher.suggest(f"b{i}")
    for i in (1, 2, 3):
        searcher.on_trial_complete(f"b{i}", _final(0.8, 0.5))
    searcher.suggest("t0")
    searcher.suggest("t1")
    searcher.on_trial_complete("t0", _final(0.9, 0.93))  # 0.93 < 0.95 - 0.01: infeasible
    # The dense baseline is still running: t0 waits for it before Optuna hears of it.
    assert searcher.study.trials[0].state.name == "RUNNING"
    searcher.on_trial_complete("b0", _final(0.8, 0.95))  # dense
    assert searcher.study.trials[0].state.name == "COMPLETE"
    searcher.on_trial_complete("t1", _final(0.85, 0.96))
    # The space's constraint, and `trains` (met: both trained) on every searched trial.
    feasible = [t.constraints for t in searcher.study.trials]
    label = "val/accuracy>=dense-0.01"
    assert feasible[0] == {label: pytest.approx(0.94 - 0.93), "trains": 0.0}
    assert feasible[1] == {label: pytest.approx(0.94 - 0.96), "trains": 0.0}
    # Optuna's Pareto front keeps only feasible trials.
    assert [t.number for t in searcher.study.best_trials] == [1]


def test_searcher_state_survives_pickling(tmp_path: Path) -> None:
    searcher = _searcher(tmp_path)
    for i in range(4):
        searcher.suggest(f"b{i}")
        searcher.on_trial_complete(f"b{i}", _final(0.8))
    searcher.suggest("t0")
    path = tmp_path / "searcher.pkl"
    searcher.save(str(path))
    restored = _searcher(tmp_path)
    restored.restore(str(path))
    assert restored.suggested == 1
    assert restored.suggest("t1")["optuna_trial"] == 1  # same study, next number
    restored.on_trial_complete("t0", _final(0.9))
    assert restored.study.trials[0].state.name == "COMPLETE"


# -- stored and read back: sweep.json, space.yaml ---------------------------------------------


def _keys(node: object) -> object:
    """Every mapping's keys in order, recursively: equal dicts can still differ here."""
    if isinstance(node, dict):
        return [(k, _keys(v)) for k, v in node.items()]
    if isinstance(node, list):
        return [_keys(v) for v in node]
    return node


def _stored_spaces() -> list[tuple[str, object]]:
    from sweep.spaces import space_names, with_epochs, with_settings

    out = []
    for name in space_names():
        space = load_space(name)
        out.append((name, space))
        out.append((f"{name} --epochs 5", with_epochs(space, 5)[0]))
        out.append((f"{name} --set", with_settings(space, ["model.width=8", "data.split_seed=3"])))
    return out


@pytest.mark.parametrize(("label", "space"), _stored_spaces(), ids=lambda v: str(v)[:40])
def test_stored_space_round_trips_in_order(label: str, space, tmp_path: Path) -> None:
    """What `run` writes (sweep.json, space.yaml) comes back identical, key order included,
    and validates again: a `when` condition's parameter stays before the one it gates."""
    import yaml

    from engine.checkpoint import load_json, save_json
    from sweep.spaces import SearchSpace
    from sweep.state import SweepState

    dumped = space.model_dump(mode="json")
    state = SweepState(
        name="s", space=dumped, space_source=label, tracking_uri="sqlite:///m.db",
        storage_url="sqlite:///o.db", experiment_id="1", parent_run_id="r",
        adjusted=["fitted to --epochs 5: x"], settings=["model.width=8"],
    )  # fmt: skip
    save_json(tmp_path / "sweep.json", state.model_dump())
    back = SweepState.model_validate(load_json(tmp_path / "sweep.json"))
    assert back == state and _keys(back.model_dump()) == _keys(state.model_dump())
    assert list(back.space["parameters"]) == list(space.parameters)
    again = SearchSpace.model_validate({**back.space, "source_dir": str(tmp_path)})
    assert _keys(again.model_dump(mode="json")) == _keys(dumped)
    again.check()
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(back.space, sort_keys=False))
    from_yaml = load_space(tmp_path / "space.yaml")  # a user may run the stored copy again
    assert _keys(from_yaml.model_dump(mode="json")) == _keys(dumped)


def test_default_space_has_a_condition_after_its_parameter() -> None:
    # The case the round trip guards: sorted keys would put moon.alpha before moon.alpha_mode.
    names = list(load_space("default").parameters)
    assert names.index("moon.alpha_mode") < names.index("moon.alpha")
    assert sorted(names).index("moon.alpha") < sorted(names).index("moon.alpha_mode")


# -- --epochs and --set ----------------------------------------------------------------------


def test_epochs_fit_the_default_space_and_say_so() -> None:
    from sweep.spaces import with_epochs

    fitted, notes = with_epochs(load_space("default"), 5)
    assert fitted.epochs == 5 and notes
    assert all(n.split(":")[0] in ("moon.warmup_epochs", "voting.epochs") for n in notes)
    for arm, overrides in fitted.baselines.items():  # every arm and corner makes a config
        cfg = fitted.trial_config({}, 0, overrides)
        assert cfg.moon.warmup_epochs < 5 and cfg.voting.epochs <= 5, arm
    for name in ("moon.warmup_epochs", "voting.epochs"):
        param = fitted.parameters.get(name)
        assert param is None or param.high <= 5
    with pytest.raises(ConfigError, match=r"the smallest it allows is --epochs 2"):
        with_epochs(load_space("default"), 1)


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("model.widht=3", "--set model.widht: unknown setting"),
        ("model.width=abc", "--set model.width=abc: invalid config: model.width"),
        ("model.width=0", "model.width"),
        ("model.name=foo", "model.name: 'foo' is not allowed; available: cnn, mlp, resnet18"),
        ("sparsity.density=0.1", "the space searches this setting (parameters.sparsity.density)"),
        ("moon.enabled=false", "baseline moon_auto sets its own value"),
        ("epochs=3", "--epochs 3"),
        ("seed=4", "seeds"),
        ("model", "expected key=value"),
    ],
)
def test_bad_fixed_settings_name_what_is_wrong(item: str, needle: str) -> None:
    from sweep.spaces import with_settings

    with pytest.raises(ConfigError) as err:
        with_settings(load_space("default"), [item])
    assert needle in str(err.value)


def test_fixed_settings_reach_every_trial_and_baseline() -> None:
    from sweep.spaces import with_settings

    space = with_settings(load_space("default"), ["model.width=16", "data.split_seed=7"])
    assert space.set["model.width"] == 16
    assert list(space.set)[-2:] == ["model.width", "data.split_seed"]
    for overrides in [{}, *space.baselines.values()]:
        cfg = space.trial_config({"sparsity.density": 0.3}, 1, overrides)
        assert (cfg.model.width, cfg.data.split_seed, cfg.seed) == (16, 7, 1)
    assert load_space("default").trial_config({}, 0).model.width == 256  # the shipped one


@pytest.mark.parametrize("sampler", ["nsga2", "tpe", "gp", "random"])
def test_every_sampler_survives_pickling_with_its_state(sampler: str) -> None:
    # Ray pickles the searcher (and so its sampler) with the Tuner's state; Optuna 5.1's
    # NSGA-II holds a threading.Lock, which pickle refuses (a fresh install failed `run`).
    space = load_space("default").model_copy(
        update={"sampler": load_space("default").sampler.model_copy(update={"name": sampler})}
    )
    original = make_sampler(space)
    again = pickle.loads(pickle.dumps(original))
    assert type(again) is type(original)
    # The same random state: both draw the same next parameter in identical studies.
    draws = []
    for s in (original, again):
        study = optuna.create_study(sampler=s)
        draws.append(study.ask().suggest_float("x", 0.0, 1.0))
    assert draws[0] == draws[1]


def test_multivariate_tpe_models_the_parameters_jointly() -> None:
    # The same seed and history: independent TPE and multivariate (group) TPE propose apart
    # once past the start-up trials, on an objective where only the pair's sum matters.
    default = load_space("default")
    proposals = []
    for multivariate in (False, True):
        sampler = default.sampler.model_copy(
            update={"name": "tpe", "startup_trials": 4, "multivariate": multivariate}
        )
        study = optuna.create_study(
            sampler=make_sampler(default.model_copy(update={"sampler": sampler}))
        )
        study.optimize(
            lambda t: (t.suggest_float("x", -1, 1) + t.suggest_float("y", -1, 1)) ** 2,
            n_trials=12,
        )
        proposals.append([t.params for t in study.trials[4:]])
    assert proposals[0] != proposals[1]
