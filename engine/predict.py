"""Inference with a trained run: class, confidence, OOD score and an in/out flag per input.

A `Predictor` is built once from a run's checkpoint and its data suite: it keeps the
model(s), the normalisation of the ID training data, the DICE layer when the primary
score is `dice`, and the OOD threshold, set so that 95% of the validation ID inputs are
flagged in-distribution (the operating point of the FPR95 metric). Afterwards it needs no
data: `state_dict()` saves it (loads with `torch.load(..., weights_only=True)`).

Inputs are raw images in [0, 1], shaped (N, C, H, W) (or (N, H, W) for one channel), as
the suite's loader gives them before normalisation; `load_inputs` reads them from .npy /
.pt tensors or image files and folders.

Example:
    >>> from engine.predict import Predictor, load_inputs
    >>> checkpoint = load_checkpoint("run/checkpoint.pt")  # doctest: +SKIP
    >>> predictor = Predictor.from_checkpoint(checkpoint)  # doctest: +SKIP
    >>> names, images = load_inputs(["digits.npy"], predictor.input_shape)  # doctest: +SKIP
    >>> predictor.predict(images)[0]  # doctest: +SKIP
    Prediction(label='3', class_index=3, confidence=0.98, ood_score=0.98, in_distribution=True)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.config import ConfigError, TrainConfig, validate_config
from engine.data.suite import IMAGE_EXTENSIONS, Suite, load_images, load_suite
from engine.evaluate import DiceLayers, dice_layers, score_inputs
from engine.models import Classifier, build_model
from engine.scores import compute_score, mean_probs

TPR_LEVEL = 0.95
UNKNOWN_LABEL = "unknown"
TENSOR_EXTENSIONS = (".npy", ".pt")


@dataclass
class Prediction:
    """One input's outcome. `label` is a class name or `unknown` (MOON's extra output);
    `confidence` the largest probability over all outputs; `ood_score` the config's primary
    score (higher = more in-distribution); `in_distribution` is `ood_score >= threshold`."""

    label: str
    class_index: int
    confidence: float
    ood_score: float
    in_distribution: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tpr_threshold(id_scores: torch.Tensor | np.ndarray, tpr: float = TPR_LEVEL) -> float:
    """The largest threshold t with at least `tpr` of `id_scores` >= t.

    >>> tpr_threshold(np.arange(100.0))  # 95 of the 100 scores are >= 5
    5.0
    """
    values = np.sort(np.asarray(id_scores, dtype=np.float64).ravel())[::-1]
    if values.size == 0:
        raise ValueError("tpr_threshold needs at least one ID score")
    keep = math.ceil(tpr * values.size - 1e-9)
    return float(values[max(keep, 1) - 1])


class Predictor:
    """A trained run ready for inference; see the module docstring."""

    def __init__(
        self,
        config: TrainConfig,
        models: list[Classifier],
        class_names: list[str],
        input_shape: tuple[int, ...],
        norm_mean: torch.Tensor,
        norm_std: torch.Tensor,
        threshold: float,
        dice: DiceLayers | None = None,
    ) -> None:
        self.config = config
        self.models = [m.eval() for m in models]
        self.class_names = list(class_names)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.norm_mean = norm_mean.float()
        self.norm_std = norm_std.float()
        self.threshold = float(threshold)
        self.dice = dice

    @property
    def score(self) -> str:
        return self.config.eval.primary

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], suite: Suite | None = None) -> Predictor:
        """Build from a run checkpoint (`TrainResult.checkpoint()`); `suite` (default: the
        config's, loaded) gives the normalisation, the DICE layer and the ID threshold."""
        config = validate_config(checkpoint["config"])
        suite = suite if suite is not None else load_suite(config.data)
        if suite.norm_mean is None or suite.norm_std is None:
            raise ConfigError(f"suite {suite.name} does not record its normalisation")
        suite = suite.to("cpu")
        models = _build_models(config, suite.input_shape, suite.num_classes, checkpoint["models"])
        k, has_unknown = suite.num_classes, config.moon.enabled
        dice = None
        if config.eval.primary == "dice":
            percentile = config.eval.dice_percentile
            dice = dice_layers(models, suite.train.x, k, (percentile,))[percentile]
        id_val = score_inputs(models, suite.val.x, k, has_unknown, dice)
        threshold = tpr_threshold(compute_score(config.eval.primary, id_val))
        return cls(
            config,
            models,
            suite.class_names,
            suite.input_shape,
            suite.norm_mean,
            suite.norm_std,
            threshold,
            dice,
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything to rebuild the predictor without data; weights_only-loadable."""
        return {
            "format": 1,
            "config": self.config.model_dump(mode="json"),
            "models": [m.state_dict() for m in self.models],
            "class_names": self.class_names,
            "input_shape": list(self.input_shape),
            "norm_mean": self.norm_mean,
            "norm_std": self.norm_std,
            "threshold": self.threshold,
            "tpr_level": TPR_LEVEL,
            "dice": None if self.dice is None else list(self.dice),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Predictor:
        config = validate_config(state["config"])
        shape = tuple(int(d) for d in state["input_shape"])
        models = _build_models(config, shape, len(state["class_names"]), state["models"])
        dice = None if state["dice"] is None else (state["dice"][0], state["dice"][1])
        return cls(
            config,
            models,
            state["class_names"],
            shape,
            state["norm_mean"],
            state["norm_std"],
            state["threshold"],
            dice,
        )

    def save(self, path: str | Path) -> None:
        save_checkpoint(path, self.state_dict())

    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        return cls.from_state_dict(load_checkpoint(path))

    def bundled_inputs(self) -> dict[str, torch.Tensor]:
        """Raw test images of the model's own data suite (none of them seen in training or
        in setting the threshold): `id`, then each OOD set by name."""
        suite = load_suite(self.config.data).to("cpu")

        def raw(x: torch.Tensor) -> torch.Tensor:
            return x * self.norm_std + self.norm_mean

        return {"id": raw(suite.test.x), **{o.name: raw(o.test) for o in suite.ood}}

    def prepare(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Raw [0, 1] images as (N, C, H, W) float32, normalised like the training data."""
        x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
        x = x.float()
        if x.ndim == 3 and self.input_shape[0] == 1:
            x = x[:, None]
        if tuple(x.shape[1:]) != self.input_shape:
            raise ConfigError(
                f"inputs have shape {tuple(x.shape)}; expected raw images in [0, 1] of "
                f"shape (N, {', '.join(map(str, self.input_shape))})"
            )
        return (x - self.norm_mean) / self.norm_std

    @torch.no_grad()
    def predict(self, images: torch.Tensor | np.ndarray) -> list[Prediction]:
        """One `Prediction` per input image (raw, in [0, 1])."""
        x = self.prepare(images)
        k = len(self.class_names)
        inputs = score_inputs(self.models, x, k, self.config.moon.enabled, self.dice)
        probs = mean_probs(inputs)
        confidence, index = probs.max(dim=1)
        scores = compute_score(self.score, inputs)
        labels = [*self.class_names, UNKNOWN_LABEL]
        return [
            Prediction(labels[int(i)], int(i), float(c), float(s), bool(s >= self.threshold))
            for i, c, s in zip(index, confidence, scores, strict=True)
        ]


def _build_models(
    config: TrainConfig, input_shape: tuple[int, ...], num_classes: int, states: list[dict]
) -> list[Classifier]:
    models = []
    for state in states:
        model = build_model(
            config.model.name,
            input_shape,
            num_classes + config.num_outputs_extra,
            config.model.width,
            config.model.depth,
        )
        model.load_state_dict(state)
        models.append(model.eval())
    return models


def load_inputs(
    paths: list[str | Path], input_shape: tuple[int, ...]
) -> tuple[list[str], torch.Tensor]:
    """Read inputs for `Predictor.predict`: .npy / .pt tensors of raw [0, 1] images, or
    image files / folders of them (resized to `input_shape`, 0-255 scaled to [0, 1]).

    Returns one name per input (`file` for an image, `file[i]` for a tensor's rows) and the
    images as one (N, C, H, W) tensor. Raises ConfigError for a missing or unreadable file.
    """
    channels, height, width = input_shape
    names: list[str] = []
    parts: list[torch.Tensor] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and _readable(p))
            if not files:
                raise ConfigError(f"input folder {path} holds no images or tensors")
        elif path.is_file():
            files = [path]
        else:
            raise ConfigError(f"input {path} does not exist")
        for file in files:
            if not _readable(file):
                raise ConfigError(
                    f"input {file}: unknown kind; give {', '.join(TENSOR_EXTENSIONS)} tensors "
                    f"or images ({', '.join(IMAGE_EXTENSIONS)})"
                )
            if file.suffix.lower() in TENSOR_EXTENSIONS:
                batch = _read_tensor(file)
                if batch.ndim == 3 and channels == 1:
                    batch = batch[:, None]
                names += [f"{file}[{i}]" for i in range(len(batch))]
            else:
                # The suites' own image reader, set to this model's input size.
                batch = load_images([file], height, channels)
                names.append(str(file))
            if tuple(batch.shape[1:]) != tuple(input_shape):
                raise ConfigError(
                    f"input {file}: images of shape {tuple(batch.shape[1:])}, expected "
                    f"{tuple(input_shape)} (channels, height, width)"
                )
            parts.append(batch)
    if not parts:
        raise ConfigError("no inputs given")
    return names, torch.cat(parts)


def _readable(path: Path) -> bool:
    return path.suffix.lower() in (*TENSOR_EXTENSIONS, *IMAGE_EXTENSIONS)


def _read_tensor(path: Path) -> torch.Tensor:
    try:
        if path.suffix.lower() == ".npy":
            data = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign files raise many different types
        raise ConfigError(f"input {path} cannot be read: {exc}") from None
    if not torch.is_tensor(data) or data.ndim not in (3, 4):
        raise ConfigError(f"input {path}: expected an (N, C, H, W) or (N, H, W) array of images")
    return data.float()
