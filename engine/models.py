"""Models, registered by name; each splits into `features` and a linear `head`.

The split lets evaluation read penultimate features (DICE, mean feature) without hooks.

Example:
    >>> from engine.models import build_model
    >>> net = build_model("mlp", input_shape=(1, 8, 8), num_outputs=7, width=32, depth=2)
    >>> net.head.out_features
    7
"""

from __future__ import annotations

import math

import torch
from torch import nn

from engine.registry import Registry


class Classifier(nn.Module):
    """`features` (any backbone) followed by one linear `head`."""

    def __init__(self, features: nn.Module, feature_dim: int, num_outputs: int) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Linear(feature_dim, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        return self.head(feats), feats


models: Registry[Classifier] = Registry("model")


@models.register("mlp")
def mlp(
    input_shape: tuple[int, ...], num_outputs: int, width: int = 256, depth: int = 2
) -> Classifier:
    """`depth` hidden ReLU layers of `width` units on the flattened input."""
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    return Classifier(nn.Sequential(*layers), width, num_outputs)


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


@models.register("cnn")
def cnn(
    input_shape: tuple[int, ...], num_outputs: int, width: int = 32, depth: int = 2
) -> Classifier:
    """`depth` conv-BN-ReLU stages, channels doubling, 2x2 pooling between, global pooling."""
    layers: list[nn.Module] = []
    cin, cout = input_shape[0], width
    for stage in range(depth):
        layers += _conv_bn(cin, cout)
        if stage < depth - 1:
            layers.append(nn.MaxPool2d(2))
        cin, cout = cout, cout * 2
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Classifier(nn.Sequential(*layers), cin, num_outputs)


@models.register("resnet18")
def resnet18(
    input_shape: tuple[int, ...], num_outputs: int, width: int = 64, depth: int = 2
) -> Classifier:
    """ResNet-18 for 32x32 inputs as in the paper: 3x3 stem, no max-pool (torchvision's blocks).

    `width` is the first stage's channels (64: torchvision's ResNet-18; the stages double it),
    so tests and quick looks can run a narrow one; `depth` is ignored.
    """
    # Lazy: torchvision takes ~2 s to import (it loads torch._dynamo) and only this model
    # needs it; engine.config imports this registry to validate model names.
    from torchvision.models.resnet import BasicBlock, conv1x1
    from torchvision.models.resnet import resnet18 as torchvision_resnet18

    net = torchvision_resnet18(num_classes=num_outputs)
    net.conv1 = nn.Conv2d(input_shape[0], width, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    if width != 64:  # the same modules under the same names, narrower
        net.bn1 = nn.BatchNorm2d(width)
        cin = width
        for i, name in enumerate(("layer1", "layer2", "layer3", "layer4")):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            down = None
            if stride != 1 or cin != planes:
                down = nn.Sequential(conv1x1(cin, planes, stride), nn.BatchNorm2d(planes))
            blocks = [BasicBlock(cin, planes, stride, down), BasicBlock(planes, planes)]
            setattr(net, name, nn.Sequential(*blocks))
            cin = planes
    feature_dim = width * 8
    net.fc = nn.Identity()
    return Classifier(net, feature_dim, num_outputs)


def build_model(
    name: str, input_shape: tuple[int, ...], num_outputs: int, width: int, depth: int
) -> Classifier:
    return models.build(
        name, input_shape=input_shape, num_outputs=num_outputs, width=width, depth=depth
    )
