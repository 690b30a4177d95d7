"""The reference classifiers: networks for 48x48 gray faces, built from scratch (never pretrained).

- ``vgg``: the strong FER2013 baseline. Four blocks of two 3x3 conv + BatchNorm + ReLU
  (64-128-256-512 channels), each closed by 2x2 max-pooling (48 -> 24 -> 12 -> 6 -> 3), then two
  fully connected layers with dropout. VGG-style networks of this shape reach the low 70s (%) on
  FER2013's private test set when trained long enough on a GPU (Khaireddin & Chen, 2021).
- ``mobilenet_v2``: torchvision's MobileNetV2 (``weights=None``) for edge deployment, with a
  1-channel stem of stride 1, so 48x48 input ends in a 3x3 feature map instead of 2x2 (stride 32
  would leave almost no spatial layout for the classifier to use).
- ``tiny``: two small conv blocks and a linear layer; for tests and smoke runs only.

Every model maps a float tensor ``(N, 1, 48, 48)``, normalised with the training set's mean and
standard deviation (see :mod:`fercurate.train.data`), to logits ``(N, num_classes)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models import mobilenet_v2

from fercurate.errors import OptionError, TrainError

INPUT_SIDE = 48


def _conv_bn_relu(inputs: int, outputs: int) -> list[nn.Module]:
    """A 3x3 same-padding convolution (no bias: BatchNorm has one), BatchNorm and ReLU."""
    return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True)]


class VggFer(nn.Module):
    """Compact VGG for 48x48 gray faces (about 9.4M parameters). See the module docstring."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (64, 128, 256, 512), hidden: int = 1024,
                 dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width in widths:
            layers += [*_conv_bn_relu(channels, width), *_conv_bn_relu(width, width), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        side = INPUT_SIDE // 2 ** len(widths)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(channels * side * side, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        # Small output weights: the first predictions are near uniform, so training starts at a loss
        # of about ln(classes) instead of confidently wrong.
        nn.init.normal_(self.classifier[-1].weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TinyCnn(nn.Module):
    """Two conv blocks, average pooling to 3x3 (keeping a coarse layout: where the brows and the
    mouth are matters), dropout and a linear layer; a few thousand parameters."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_relu(1, 8), nn.MaxPool2d(2),
            *_conv_bn_relu(8, 16), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Dropout(0.1),
        )
        self.head = nn.Linear(16 * 9, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _mobilenet_v2(num_classes: int) -> nn.Module:
    """torchvision's MobileNetV2, randomly initialised, with a 1-channel stride-1 stem."""
    model = mobilenet_v2(weights=None, num_classes=num_classes)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(1, stem.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")
    return model


MODELS: dict[str, Callable[[int], nn.Module]] = {
    "vgg": VggFer,
    "mobilenet_v2": _mobilenet_v2,
    "tiny": TinyCnn,
}


def build_model(name: str, num_classes: int) -> nn.Module:
    """A freshly initialised classifier ``name`` (one of :data:`MODELS`) with ``num_classes`` outputs."""
    if name not in MODELS:
        raise OptionError(f"unknown model {name!r}", f"use one of {', '.join(MODELS)}")
    if num_classes < 2:
        raise TrainError(f"a classifier needs at least 2 classes, the training rows have {num_classes}",
                         "ingest more classes, or balance over at least two (e.g. --balance anger=1,disgust=1)")
    return MODELS[name](num_classes)


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
