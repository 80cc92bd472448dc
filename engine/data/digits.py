"""The `digits` suite: scikit-learn's 8x8 digits, known digits ID, the rest near-OOD.

Far-OOD: random crops of scikit-learn's sample photos, and uniform noise. Nothing is
downloaded: both ship with scikit-learn.

Example:
    >>> from engine.data import DataConfig, load_suite
    >>> suite = load_suite(DataConfig(suite="digits", known_classes=[0, 1, 2, 3, 4, 5]))
    >>> [(s.name, s.group) for s in suite.ood]
    [('digits_6-9', 'near'), ('photos', 'far'), ('noise', 'far')]
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images

from engine.data.suite import DataConfig, OODGroup, Suite, assemble, split_rng, suites
from engine.errors import ConfigError

# Seed streams of the two far-OOD sets (engine.data.suite.STREAM_OOD_SPLIT is 3).
STREAM_PHOTOS, STREAM_NOISE = 1, 2


def _compact(digits: list[int]) -> str:
    """[6, 7, 8, 9] -> "6-9"; [1, 3, 4] -> "1,3,4": runs of 3+ become ranges."""
    parts: list[str] = []
    run = [digits[0]]
    for d in [*digits[1:], None]:
        if d is not None and d == run[-1] + 1:
            run.append(d)
            continue
        parts.append(f"{run[0]}-{run[-1]}" if len(run) >= 3 else ",".join(map(str, run)))
        if d is not None:
            run = [d]
    return ",".join(parts)


def _check_known_classes(known: list[int] | None, num_all: int) -> list[int]:
    known = [0, 1, 2, 3, 4, 5] if known is None else list(known)
    problem = None
    if len(known) < 2:
        problem = "needs at least 2 classes"
    elif any(not 0 <= k < num_all for k in known):
        problem = f"every class must be in 0..{num_all - 1}"
    elif len(set(known)) != len(known):
        problem = "must not repeat a class"
    elif len(known) == num_all:
        problem = "must leave at least one class out to serve as near-OOD"
    if problem:
        raise ConfigError(f"data.known_classes: {known} is not allowed: {problem}")
    return sorted(known)


def _photo_crops(n: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """`n` random grayscale square crops (16..64 px) of sklearn's sample photos, (n,1,s,s)."""
    photos = [
        torch.from_numpy(np.asarray(Image.fromarray(img).convert("L"), dtype=np.float32) / 255.0)
        for img in load_sample_images().images
    ]
    out = torch.empty(n, 1, size, size)
    for i in range(n):
        photo = photos[rng.integers(len(photos))]
        side = int(rng.integers(16, 65))
        top = int(rng.integers(photo.shape[0] - side + 1))
        left = int(rng.integers(photo.shape[1] - side + 1))
        crop = photo[top : top + side, left : left + side]
        # Area averaging, so downsampling does not alias fine texture into noise.
        out[i] = F.adaptive_avg_pool2d(crop[None, None], size)[0]
    return out


@suites.register("digits")
def digits(*, cfg: DataConfig) -> Suite:
    """scikit-learn's 8x8 digits: known digits are ID, the rest near-OOD; photos/noise far.

    Always (1, 8, 8): `cfg.image_size` and `cfg.channels` apply to image folders only.
    """
    raw = load_digits()
    images = torch.from_numpy(raw.images.astype(np.float32) / 16.0)[:, None]
    target = torch.from_numpy(raw.target.astype(np.int64))
    known = _check_known_classes(cfg.known_classes, 10)
    held_out = [d for d in range(10) if d not in known]

    is_id = torch.isin(target, torch.tensor(known))
    relabel = torch.full((10,), -1, dtype=torch.long)
    relabel[torch.tensor(known)] = torch.arange(len(known))

    n_far = cfg.far_ood_size
    ood_raw: list[tuple[str, OODGroup, torch.Tensor]] = [
        (f"digits_{_compact(held_out)}", "near", images[~is_id]),
        ("photos", "far", _photo_crops(n_far, 8, split_rng(cfg, STREAM_PHOTOS))),
        (
            "noise",
            "far",
            torch.from_numpy(split_rng(cfg, STREAM_NOISE).random((n_far, 1, 8, 8))).float(),
        ),
    ]
    return assemble(
        "digits",
        images[is_id],
        relabel[target[is_id]],
        [str(k) for k in known],
        ood_raw,
        cfg,
        source="data.known_classes",
    )
