"""Device-resident training batches: the whole training set is one tensor on the device.

Each epoch draws one permutation with the run's `torch.Generator` and takes batches by
index, so no worker processes, no collation and no host-to-device copy per batch. With
`augment="crop_flip"` every image gets its own random crop from the image zero-padded by
`pad` pixels (zero is the training mean after normalisation) and a random horizontal
flip, done for the whole batch at once by one gather on the device.

All random numbers of an epoch (permutation, crop offsets, flips) come from the one CPU
generator, drawn at the start of the epoch: the batches are the same on every device, a
resumed run draws exactly what an uninterrupted one would, and without augmentation the
draws are exactly those of a DataLoader over a `SubsetRandomSampler` on the same generator.

Augmentations are registered by name in `augments` (the names `data.augment` accepts):
each is a function called once per epoch that draws its random numbers and returns the
transform of one batch (or None for no change).

Example:
    >>> import torch
    >>> from engine.pipeline import DeviceLoader
    >>> x, y = torch.randn(10, 3, 32, 32), torch.arange(10)
    >>> loader = DeviceLoader(x, y, batch_size=4, generator=torch.Generator().manual_seed(0),
    ...                       augment="crop_flip")
    >>> len(loader), [tuple(xb.shape) for xb, _ in loader.epoch()]
    (3, [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from engine.registry import Registry

# One batch's transform: (images of the batch, its slice of the epoch's order) -> images.
BatchTransform = Callable[[torch.Tensor, slice], torch.Tensor]

augments: Registry[BatchTransform | None] = Registry("augmentation")


def crop_flip(
    x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int
) -> torch.Tensor:
    """Crop each image of `x` (N, C, H, W) from its zero-padded copy, then maybe flip it.

    `offsets` (N, 2) are the (row, column) corners in the padded image, each in 0..2*pad;
    `flips` (N,) are booleans. Output pixel [n, c, i, j] is padded[n, c, r + i, s + j'] with
    (r, s) = offsets[n] and j' = W-1-j when flipped, else j: a gather of rows, then one of
    columns, for the whole batch (3-4x faster on a CPU than one 4-index advanced indexing).
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (N, H)
    cols_fwd = torch.arange(w, device=x.device)
    cols = offsets[:, 1:] + torch.where(flips[:, None], cols_fwd.flip(0), cols_fwd)  # (N, W)
    strip = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * pad))
    return strip.gather(3, cols[:, None, None, :].expand(n, c, h, w))


@augments.register("none")
def no_augment(n: int, generator: torch.Generator, device: torch.device, pad: int) -> None:
    """No augmentation (draws nothing): batches are the images as stored."""
    return None


@augments.register("crop_flip")
def crop_flip_augment(
    n: int, generator: torch.Generator, device: torch.device, pad: int
) -> BatchTransform:
    """A random crop from the image zero-padded by `pad` pixels, then a random horizontal flip.

    Draws every offset and flip of the epoch's `n` images at once, on the CPU generator.
    """
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator).bool()
    offsets, flips = offsets.to(device), flips.to(device)
    return lambda xb, part: crop_flip(xb, offsets[part], flips[part], pad)


class DeviceLoader:
    """Shuffled batches of (x, y) tensors that live on one device.

    `epoch()` yields `len(self)` batches; the last one is smaller when the batch size does
    not divide the set (as a DataLoader without drop_last). `memory_format` is applied to
    each image batch (e.g. `torch.channels_last` for convolutions on a GPU).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        generator: torch.Generator,
        augment: str = "none",
        pad: int = 4,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        if augment not in augments:
            raise ValueError(f"augment must be one of {tuple(augments.names())}, not {augment!r}")
        if augment != "none" and x.dim() != 4:
            raise ValueError(f"{augment} needs images (N, C, H, W), got shape {tuple(x.shape)}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.generator = generator
        self.augment = augment
        self.pad = pad
        self.memory_format = memory_format

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch, in a fresh random order."""
        n, device = len(self.y), self.x.device
        # Drawn on the CPU generator and moved once per epoch: the same order on any device.
        perm = torch.randperm(n, generator=self.generator).to(device)
        transform = augments.build(
            self.augment, n=n, generator=self.generator, device=device, pad=self.pad
        )
        for start in range(0, n, self.batch_size):
            idx = perm[start : start + self.batch_size]
            xb = self.x[idx]
            if transform is not None:
                xb = transform(xb, slice(start, start + self.batch_size))
            if self.memory_format is not torch.contiguous_format and xb.dim() == 4:
                xb = xb.contiguous(memory_format=self.memory_format)
            yield xb, self.y[idx]
