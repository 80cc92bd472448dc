"""Configuration: presets, overrides, and one clear message per bad input."""

from __future__ import annotations

import pytest

from engine.config import ConfigError, load_config, preset_names


def test_default_preset_loads_with_typed_overrides() -> None:
    cfg = load_config(None, ["sparsity.density=0.05", "moon.enabled=false", "epochs=9"])
    assert cfg.sparsity.density == 0.05
    assert cfg.moon.enabled is False
    assert cfg.epochs == 9
    # The preset's own values survive where not overridden.
    assert cfg.sparsity.update_interval == 20
    assert cfg.batch_size == 64
    assert "default" in preset_names()


def test_yaml_file_is_read(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("sparsity:\n  method: set\n  density: 0.3\nepochs: 9\nvoting:\n  epochs: 2\n")
    cfg = load_config(str(path))
    assert (cfg.sparsity.method, cfg.sparsity.density, cfg.epochs) == ("set", 0.3, 9)
    assert cfg.model.name == "mlp"  # defaults fill the rest


def test_unknown_score_dropped_without_moon() -> None:
    cfg = load_config(None, ["moon.enabled=false"])
    assert "unknown" not in cfg.eval.scores
    assert "msp" in cfg.eval.scores


@pytest.mark.parametrize(
    ("overrides", "field", "value"),
    [
        (["sparsity.density=1.5"], "sparsity.density", "1.5"),
        (["sparsity.density=0"], "sparsity.density", "0"),
        (["sparsity.method=magic"], "sparsity.method", "magic"),
        (["sparsity.init=gauss"], "sparsity.init", "gauss"),
        (["voting.mode=vote"], "voting.mode", "vote"),
        (["moon.alpha_mode=learned"], "moon.alpha_mode", "learned"),
        (["epochs=-3"], "epochs", "-3"),
        (["batch_size=abc"], "batch_size", "abc"),
        (["model.name=vgg"], "model.name", "vgg"),
        (["data.suite=cifar99"], "data.suite", "cifar99"),
        (["eval.scores=[msp, odin]"], "eval.scores", "odin"),
    ],
)
def test_bad_values_name_field_and_value(overrides: list[str], field: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert field in message
    assert value in message


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigError, match="moon.warmup_epochs"):
        load_config(None, ["epochs=5", "moon.warmup_epochs=5", "voting.epochs=2"])
    with pytest.raises(ConfigError, match="voting.epochs"):
        load_config(None, ["epochs=5", "moon.warmup_epochs=1", "voting.epochs=6"])
    with pytest.raises(ConfigError, match="moon.warmup_epochs"):
        load_config(None, ["moon.warmup_epochs=0"])
    # A fixed alpha needs no warm-up estimate.
    assert load_config(None, ["moon.warmup_epochs=0", "moon.alpha_mode=fixed"]).moon.alpha == 1.0


def test_unknown_keys_and_sources() -> None:
    with pytest.raises(ConfigError, match="sparsity.densty: unknown setting"):
        load_config(None, ["sparsity.densty=0.1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["epochs"])
    with pytest.raises(ConfigError, match="is a section"):
        load_config(None, ["sparsity=3"])
    with pytest.raises(ConfigError, match="no config file or preset named 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("missing.yaml")


def test_bad_yaml_files(tmp_path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("sparsity: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(broken))
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(listing))
    typo = tmp_path / "typo.yaml"
    typo.write_text("moon:\n  warmup: 3\n")
    with pytest.raises(ConfigError, match="moon.warmup: unknown setting"):
        load_config(str(typo))


def test_yaml_12_scalars() -> None:
    # YAML 1.1 would read `off` as False and `1e-3` as a string; users mean 'off' and 0.001.
    cfg = load_config(None, ["voting.mode=off", "optim.weight_decay=1e-3", "moon.enabled=false"])
    assert cfg.voting.mode == "off"
    assert cfg.optim.weight_decay == pytest.approx(0.001)
    assert cfg.moon.enabled is False


def test_folder_named_like_a_preset_does_not_hide_it(tmp_path, monkeypatch) -> None:
    # A work directory called `default` in the current directory is not a config file.
    (tmp_path / "default").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_config("default").model.name == load_config(None).model.name
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
