"""One validated description of a training run.

A `TrainConfig` is built from YAML (a file or a named preset), then dotted
`key=value` overrides, and validated by pydantic. Every user mistake becomes a
`ConfigError` whose message names the field, the bad value and what is allowed.
Names of components (suites, models, sparse methods, scores, augmentations) are checked
against their registries, so a new component needs no edit here.

Example:
    >>> from engine.config import load_config
    >>> cfg = load_config("default", ["sparsity.density=0.2", "epochs=9"])
    >>> cfg.sparsity.density, cfg.epochs
    (0.2, 9)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.data import DataConfig, suites
from engine.errors import ConfigError
from engine.models import models
from engine.registry import registered_name
from engine.scores import scores
from engine.sparse_methods import DENSE, sparse_methods

__all__ = [
    "DEFAULT_SCORES",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "MoonConfig",
    "OptimConfig",
    "RuntimeConfig",
    "SparsityConfig",
    "TrainConfig",
    "VotingConfig",
    "apply_overrides",
    "config_error",
    "effective_settings",
    "format_value",
    "load_config",
    "load_yaml",
    "preset_names",
    "resolve_source",
    "validate_config",
]

# The scores evaluated unless `eval.scores` says otherwise (any registered score may be named).
DEFAULT_SCORES = ("msp", "energy", "max_logit", "unknown", "dice")
ScoreName = registered_name(scores)
SparseMethodName = registered_name(sparse_methods, DENSE)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = "mlp"
    width: int = Field(256, ge=1)
    depth: int = Field(2, ge=1)


class SparsityConfig(_Section):
    method: SparseMethodName = "rigl"  # type: ignore[valid-type]
    density: float = Field(0.1, gt=0, le=1)
    init: Literal["erk", "uniform"] = "erk"
    update_interval: int = Field(80, ge=1)
    drop_fraction: float = Field(0.3, ge=0, lt=1)
    end_fraction: float = Field(0.7, gt=0, le=1)


class MoonConfig(_Section):
    enabled: bool = True
    warmup_epochs: int = Field(5, ge=0)
    init_factor: float = Field(64.0, gt=0)
    alpha_final: float = Field(1.0, ge=0)
    alpha_mode: Literal["auto", "fixed"] = "auto"
    alpha: float = Field(1.0, ge=0)
    ema_momentum: float = Field(0.05, gt=0, le=1)


class VotingConfig(_Section):
    mode: Literal["weights", "predictions", "off"] = "weights"
    epochs: int = Field(20, ge=1)
    snapshots_per_epoch: int = Field(1, ge=1)


class OptimConfig(_Section):
    lr: float = Field(0.12, gt=0)
    lr_end: float = Field(0.008, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"


class EvalConfig(_Section):
    scores: list[ScoreName] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(DEFAULT_SCORES)
    )
    primary: ScoreName = "msp"  # type: ignore[valid-type]
    dice_percentile: float = Field(90.0, ge=0, lt=100)
    ece_bins: int = Field(15, ge=2)


class RuntimeConfig(_Section):
    """How the training steps run; none of these changes what is computed beyond rounding.

    `autocast: bf16` runs the model's forward in bfloat16 (CPU and CUDA; weights, masks,
    optimizer and MOON's loss stay float32). `compile` wraps the training forward in
    `torch.compile` (meant for CUDA; it works on CPU when a C++ compiler is present, after
    a long first step). `channels_last` stores conv weights and batches NHWC.
    `fused_optimizer` updates every parameter in one fused SGD kernel (CPU and CUDA; other
    devices use PyTorch's default); the same update, rounded differently.
    """

    channels_last: bool = False
    autocast: Literal["none", "bf16"] = "none"
    compile: bool = False
    fused_optimizer: bool = True


# Settings counted in epochs, with how far below `epochs` each must stay (MOON's warm-up ends
# before training does; voting may span every epoch). A sweep's `--epochs` clips them to fit.
EPOCH_COUNTED: dict[str, int] = {"moon.warmup_epochs": 1, "voting.epochs": 0}


class TrainConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    sparsity: SparsityConfig = Field(default_factory=SparsityConfig)
    moon: MoonConfig = Field(default_factory=MoonConfig)
    voting: VotingConfig = Field(default_factory=VotingConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=1)
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.moon.enabled and self.moon.warmup_epochs >= self.epochs:
            raise ValueError(
                f"moon.warmup_epochs ({self.moon.warmup_epochs}) must be less than "
                f"epochs ({self.epochs})"
            )
        if self.moon.enabled and self.moon.alpha_mode == "auto" and self.moon.warmup_epochs < 1:
            raise ValueError(
                "moon.warmup_epochs: 0 is not allowed with moon.alpha_mode 'auto' (alpha_0 is "
                "estimated during warm-up); use at least 1, or alpha_mode 'fixed'"
            )
        if self.voting.mode != "off" and self.voting.epochs > self.epochs:
            raise ValueError(
                f"voting.epochs ({self.voting.epochs}) must be at most epochs ({self.epochs})"
            )
        if self.eval.primary not in self.eval.scores:
            raise ValueError(
                f"eval.primary ({self.eval.primary!r}) must be one of eval.scores "
                f"{self.eval.scores}"
            )
        if "unknown" in self.eval.scores and not self.moon.enabled:
            # Without MOON there is no unknown output, so the score would be constant.
            self.eval.scores = [s for s in self.eval.scores if s != "unknown"]
            if self.eval.primary == "unknown":
                raise ValueError("eval.primary 'unknown' needs moon.enabled: true")
        return self

    @property
    def num_outputs_extra(self) -> int:
        """1 when the head carries MOON's unknown output, else 0."""
        return 1 if self.moon.enabled else 0


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


# The settings that the rest of a config can make inert, each read only where named.
_MOON_AUTO_ONLY = ("moon.init_factor", "moon.alpha_final", "moon.ema_momentum")  # moon.py
_MASK_UPDATES = ("sparsity.update_interval", "sparsity.drop_fraction", "sparsity.end_fraction")
_STATIC = "static"  # engine.sparse_methods: the method whose mask never changes


def effective_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The flat dotted settings that apply to `cfg` (JSON values, in the config's order):
    every field of `cfg`, less those its training and evaluation never read.

    - MOON off (`moon.enabled: false`): every `moon.*` but `moon.enabled`;
    - MOON's alpha auto-tuned: `moon.alpha`; a fixed alpha: `moon.init_factor`,
      `moon.alpha_final` and `moon.ema_momentum` (`moon.warmup_epochs` stays: a fixed alpha,
      too, starts after the warm-up, with plain cross-entropy before it: engine/moon.py);
    - voting off: `voting.epochs` and `voting.snapshots_per_epoch`;
    - a primary score other than DICE: `eval.dice_percentile` (as
      `engine.test_time.kept_settings` records a test-time pick);
    - dense (`sparsity.method: dense`): every `sparsity.*` but the method; a static mask (it
      never changes): `sparsity.update_interval`, `drop_fraction` and `end_fraction`;
    - a constant learning rate: `optim.lr_end`; no momentum: `optim.nesterov`.

    The `data.*` section is kept whole (which of its fields a suite reads is the suite's
    business), and so are `runtime.*` (how the steps run) and `seed`.

    >>> cfg = load_config("default", ["moon.alpha_mode=fixed", "voting.mode=off"])
    >>> settings = effective_settings(cfg)
    >>> [k for k in settings if k.startswith(("moon.", "voting."))]
    ['moon.enabled', 'moon.warmup_epochs', 'moon.alpha_mode', 'moon.alpha', 'voting.mode']
    >>> off = effective_settings(load_config("default", ["moon.enabled=false"]))
    >>> [k for k in off if k.startswith("moon.")], "eval.dice_percentile" in off
    (['moon.enabled'], False)
    """
    settings = _flat(cfg.model_dump(mode="json"))
    inert: list[str] = []
    moon = cfg.moon
    if not moon.enabled:
        inert += [k for k in settings if k.startswith("moon.") and k != "moon.enabled"]
    elif moon.alpha_mode == "auto":
        inert.append("moon.alpha")
    else:
        inert += _MOON_AUTO_ONLY
    if cfg.voting.mode == "off":
        inert += ["voting.epochs", "voting.snapshots_per_epoch"]
    if cfg.eval.primary != "dice":
        inert.append("eval.dice_percentile")
    if cfg.sparsity.method == DENSE:
        inert += [k for k in settings if k.startswith("sparsity.") and k != "sparsity.method"]
    elif cfg.sparsity.method == _STATIC:
        inert += _MASK_UPDATES
    if cfg.optim.schedule == "constant":
        inert.append("optim.lr_end")
    if cfg.optim.momentum == 0:
        inert.append("optim.nesterov")
    return {k: v for k, v in settings.items() if k not in inert}


class _Yaml12Loader(yaml.SafeLoader):
    """Only true/false are booleans (YAML 1.2): `mode: off` must stay the string 'off'."""


_Yaml12Loader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    """Parse YAML text with YAML 1.2 booleans."""
    return yaml.load(text, Loader=_Yaml12Loader)


PRESET_DIR = Path(__file__).resolve().parent.parent / "search_spaces" / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a mapping of settings, got {type(data).__name__}")
    return data


def resolve_source(source: str | Path | None) -> dict[str, Any]:
    """Read a config file, or a preset by name; None means the preset `default`."""
    if source is None:
        source = "default"
    path = Path(source)
    # A folder named like a preset (a workdir called `default`, say) must not hide the preset.
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        return _read_yaml(path)
    if str(source) in preset_names():
        return _read_yaml(PRESET_DIR / f"{source}.yaml")
    raise ConfigError(
        f"no config file or preset named {str(source)!r}; presets: {', '.join(preset_names())}"
    )


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _known_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def format_value(value: Any) -> str:
    """A value as `--set` text that parses back to it (YAML 1.2 booleans, flow lists).

    >>> format_value(True), format_value([0.1, "rigl"]), format_value(3)
    ('true', '[0.1, rigl]', '3')
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides (values parsed as YAML) to a nested dict, in place."""
    known = _known_keys(TrainConfig)
    sections = {k.split(".")[0] for k in known if "." in k}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. sparsity.density=0.1")
        if key in sections:
            raise ConfigError(f"--set {key}: {key!r} is a section; set one of its fields")
        if key not in known:
            raise ConfigError(f"--set {key}: unknown setting; allowed: {', '.join(known)}")
        try:
            value = load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is a section, not a value")
            node = child
        node[leaf] = value
    return data


def _describe(error: Any, unknown_hint: str) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    msg = error["msg"].removeprefix("Value error, ")
    if not loc:  # a rule across fields: its message names them itself
        return msg
    if error["type"] == "extra_forbidden":
        return f"{loc}: unknown setting ({unknown_hint})"
    if error["type"] == "missing":
        return f"{loc}: required"
    return f"{loc}: {error['input']!r} is not allowed: {msg}"


def config_error(
    exc: ValidationError,
    prefix: str = "",
    unknown_hint: str = "check the spelling; see `moonsweep train --help`",
) -> ConfigError:
    """The one ConfigError for a pydantic ValidationError: every error, `; `-separated.

    Each names the setting (dotted), the bad value and what is allowed; `prefix` says
    what was being validated, `unknown_hint` follows a misspelt setting.

        >>> try:
        ...     TrainConfig.model_validate({"epochs": 0})
        ... except ValidationError as exc:
        ...     print(config_error(exc, "invalid config: "))
        invalid config: epochs: 0 is not allowed: Input should be greater than or equal to 1
    """
    lines = [_describe(e, unknown_hint) for e in exc.errors()]
    return ConfigError(prefix + "; ".join(lines))


def validate_config(data: dict[str, Any]) -> TrainConfig:
    """Validate a nested dict into a TrainConfig, or raise ConfigError naming the field."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, "invalid config: ") from None


def load_config(
    source: str | Path | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """Load a preset or YAML file, apply `--set` overrides, validate."""
    data = resolve_source(source)
    apply_overrides(data, list(overrides or []))
    config = validate_config(data)
    check_registered(config)
    return config


def check_registered(config: TrainConfig) -> None:
    """ConfigError unless the config's data suite and model are registered names."""
    # load_config calls it; validate_config (recorded configs) leaves an unknown suite or
    # model to load_suite / build_model.
    if config.data.suite not in suites:
        raise ConfigError(
            f"data.suite: {config.data.suite!r} is not allowed; "
            f"available: {', '.join(suites.names())}"
        )
    if config.model.name not in models:
        raise ConfigError(
            f"model.name: {config.model.name!r} is not allowed; "
            f"available: {', '.join(models.names())}"
        )
