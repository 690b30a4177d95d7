"""The class-conditional GAN generator (``cgan``): a small DCGAN-style generator with conditional
batch norm against a spectral-norm projection discriminator, hinge loss, two learning rates (TTUR),
DiffAugment on real and fake faces, and an EMA of the generator for sampling.

Why this recipe (measured on FER2013 with 2 CPU cores, see the project's STACK notes): with one
learning rate (2e-4) and no augmentation every class collapsed to a single image by half time; with
G at 1e-4, D at 4e-4, Adam betas (0, 0.9), and DiffAugment (translation, cutout) applied to real and
fake alike, 15 minutes gave varied, recognisable faces. A plain EMA with decay 0.999 still showed
the random initial weights after 1,200 steps, so the EMA's decay warms up (see below).

Architecture, for an output of ``S`` x ``S`` pixels:

- ``k`` = the most halvings that keep ``S / 2**k >= 3``; the generator starts at ``ceil(S / 2**k)``
  (3 to 6) pixels square and doubles ``k`` times with DCGAN's 4x4 stride-2 transposed
  convolutions (conditional batch norm and ReLU after each but the last, which gives the one gray
  channel, then tanh). When ``start * 2**k`` exceeds ``S`` (e.g. 17 -> 20) the image is
  area-resized to ``S``; 16, 24, 40, 48, 64 ... are generated exactly (48 = 3 * 2**4).
- Conditional batch norm: the class chooses each batch norm's gain and bias, so it acts at every
  scale (stronger than a class embedding concatenated to ``z``, which only enters at the start).
- The discriminator mirrors it: ``k`` spectrally normalised 4x4 stride-2 convolutions (LeakyReLU
  0.1), global sum pooling, and a projection head ``linear(h) + <embed(y), h>`` (Miyato & Koyama
  2018), every layer (the class embedding too) spectrally normalised.
- Channels are ``width``, 2x, 4x, 8x (then 8x) from the finest feature map to the coarsest, in both
  networks; at 48x48 and the default width G has 1.0M parameters and D 0.7M. DCGAN's layers keep
  a step cheap: no feature maps at the image's resolution, and a 4x4 stride-2 transposed
  convolution costs 4/9 of nearest upsampling plus a 3x3 convolution; about 30M multiply-adds
  per face for G and D together at 48x48.

Invariants:

- ``train_step`` draws every random number (``z``, DiffAugment's shifts, cutouts and colour
  changes) from the ``generator`` it is given, on that generator's device, in a fixed order; the
  rest of a step is deterministic, so the trainer's saved generator state makes a resume exact.
- DiffAugment is one differentiable function applied to every image the discriminator sees, real
  or fake, in both the discriminator's and the generator's step (the generator's gradient flows
  through it), so the discriminator never learns to tell augmentation apart from fakeness.
- Forward passes run under the configured autocast; losses are computed in float32.
- Sampling uses the EMA generator in eval mode, so a face depends on its label and seed, never on
  the other faces of its batch. The EMA's decay after ``n`` generator steps is
  ``min(ema_decay, (1 + n) / (10 + n))``: early on the average follows the training weights
  instead of the random initial ones.
- The EMA generator's batch-norm statistics are "standing statistics" (BigGAN): measured with the
  EMA weights themselves on 1,024 fixed noise vectors with the classes in turn, before the first
  sample (or ``inference_state``) after a step. Running statistics belong to the training weights,
  lag them, and averaged or not they do not match the averaged weights: on small planted data
  such samples looked unlike the generator's training-mode output.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from itertools import pairwise
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from fercurate.synth.generators.model import GeneratorConfig, GeneratorModel, seeded_normal

DiffAugmentPolicy = Literal["color", "translation", "cutout"]
#: Largest shift of ``translation``, as a fraction of the image side (DiffAugment's 1/8).
TRANSLATION_RATIO = 0.125
#: Side of ``cutout``'s square, as a fraction of the image side (DiffAugment's 1/2).
CUTOUT_RATIO = 0.5
#: The smallest (and start) side of the generator's and discriminator's feature maps.
MIN_FEATURE_SIDE = 3
SAMPLE_CHUNK = 256
#: Faces (fixed noise, classes in turn) on which the EMA generator's batch-norm statistics are measured.
STATISTICS_FACES = 1024
_LEAKY_SLOPE = 0.1
#: Channels stop doubling at this multiple of ``width``.
_WIDTH_CAP = 8

Beta = Annotated[float, Field(ge=0, lt=1)]


class CganConfig(GeneratorConfig):
    """How the class-conditional GAN is built and trained (the shared fields are the base's)."""

    kind: Literal["cgan"] = "cgan"
    z_dim: int = Field(128, ge=1, le=1024, description="size of the generator's noise vector")
    width: int = Field(32, ge=4, le=512,
                       description="channels of the finest feature maps; coarser ones have 2x, 4x, 8x "
                                   "(32: 1.0M generator and 0.7M discriminator parameters at 48x48)")
    lr_generator: float = Field(1e-4, gt=0, le=1, description="Adam learning rate of the generator")
    lr_discriminator: float = Field(4e-4, gt=0, le=1,
                                    description="Adam learning rate of the discriminator (TTUR: faster than G's)")
    betas: tuple[Beta, Beta] = Field((0.0, 0.9), description="Adam betas of both optimisers")
    diffaugment: tuple[DiffAugmentPolicy, ...] = Field(
        ("translation", "cutout"),
        description="differentiable augmentations of real and fake faces, applied in this order "
                    "(color: brightness and contrast; translation: shifts up to 1/8 of the side; "
                    "cutout: a blanked square of half the side)")
    d_steps: int = Field(1, ge=1, le=10, description="discriminator steps per generator step (same real batch)")

    @field_validator("diffaugment")
    @classmethod
    def _distinct_policies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"diffaugment names a policy twice: {', '.join(value)}")
        return value


def feature_layout(image_size: int) -> tuple[int, int]:
    """``(start, stages)``: the generator starts at ``start`` x ``start`` and doubles ``stages``
    times (the discriminator halves as often); ``start * 2**stages >= image_size``."""
    stages = (image_size // MIN_FEATURE_SIDE).bit_length() - 1
    return -(-image_size // 2 ** stages), stages


def stage_channels(width: int, stages: int) -> list[int]:
    """Channels of the ``stages`` feature maps below the image, finest first: ``width``, 2x, 4x, 8x, 8x ..."""
    return [width * min(2 ** scale, _WIDTH_CAP) for scale in range(stages)]


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose gain and bias are chosen by the class (gain starts at 1, bias at 0)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (self.norm(features) * self.gain(labels)[:, :, None, None]
                + self.bias(labels)[:, :, None, None])


def _up(inputs: int, outputs: int, *, bias: bool) -> nn.ConvTranspose2d:
    """DCGAN's doubling layer: a 4x4 transposed convolution with stride 2."""
    return nn.ConvTranspose2d(inputs, outputs, 4, stride=2, padding=1, bias=bias)


class Generator(nn.Module):
    """``(z, labels)`` -> images ``(B, 1, S, S)`` in [-1, 1] (see the module docstring)."""

    def __init__(self, *, image_size: int, z_dim: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.image_size = image_size
        self.start, stages = feature_layout(image_size)
        channels = stage_channels(width, stages)[::-1]  # coarsest first
        self.project = nn.Linear(z_dim, channels[0] * self.start ** 2, bias=False)
        self.norms = nn.ModuleList(ConditionalBatchNorm(count, num_classes) for count in channels)
        self.ups = nn.ModuleList(_up(inputs, outputs, bias=False) for inputs, outputs in pairwise(channels))
        self.to_image = _up(channels[-1], 1, bias=True)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        features = F.relu(self.norms[0](self.project(z).view(len(z), -1, self.start, self.start), labels))
        for up, norm in zip(self.ups, self.norms[1:], strict=True):
            features = F.relu(norm(up(features), labels))
        images = torch.tanh(self.to_image(features))
        if images.shape[-1] != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="area")
        return images


class Discriminator(nn.Module):
    """``(images, labels)`` -> one realness score per image: a spectral-norm projection discriminator."""

    def __init__(self, *, image_size: int, width: int, num_classes: int) -> None:
        super().__init__()
        channels = [1, *stage_channels(width, feature_layout(image_size)[1])]
        self.downs = nn.ModuleList(spectral_norm(nn.Conv2d(inputs, outputs, 4, stride=2, padding=1))
                                   for inputs, outputs in pairwise(channels))
        self.score = spectral_norm(nn.Linear(channels[-1], 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, channels[-1]))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        features = images
        for down in self.downs:
            features = F.leaky_relu(down(features), _LEAKY_SLOPE)
        pooled = features.sum(dim=(2, 3))
        return self.score(pooled).squeeze(1) + (self.embed(labels) * pooled).sum(dim=1)


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _integers(low: int, high: int, shape: tuple[int, ...], generator: torch.Generator,
              device: torch.device) -> torch.Tensor:
    return torch.randint(low, high, shape, generator=generator, device=generator.device).to(device)


def _color(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """DiffAugment's brightness (+-0.5) and contrast (x0.5-1.5) for gray images."""
    count = len(images)
    images = images + (_uniform((count, 1, 1, 1), generator, images.device) - 0.5)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - mean) * (_uniform((count, 1, 1, 1), generator, images.device) + 0.5) + mean


def _translation(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to 1/8 of its side in each direction, filling with zeros."""
    count, channels, side, _ = images.shape
    pad = int(side * TRANSLATION_RATIO + 0.5)
    shifts = _integers(-pad, pad + 1, (count, 2), generator, images.device)
    positions = torch.arange(side, device=images.device)
    rows = (positions + shifts[:, :1] + pad)[:, None, :, None].expand(count, channels, side, side + 2 * pad)
    columns = (positions + shifts[:, 1:] + pad)[:, None, None, :].expand(count, channels, side, side)
    padded = F.pad(images, (pad, pad, pad, pad))
    return padded.gather(2, rows).gather(3, columns)


def _cutout(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Zero a square of half the side at a random centre (clipped at the borders) in each image."""
    count, _, side, _ = images.shape
    size = int(side * CUTOUT_RATIO + 0.5)
    corners = _integers(0, side + (1 - size % 2), (count, 2), generator, images.device) - size // 2
    positions = torch.arange(side, device=images.device)
    inside = (positions >= corners[:, :, None]) & (positions < corners[:, :, None] + size)  # (count, 2, side)
    blanked = inside[:, 0, :, None] & inside[:, 1, None, :]
    return images * (~blanked)[:, None].to(images.dtype)


_POLICIES = {"color": _color, "translation": _translation, "cutout": _cutout}


def diff_augment(images: torch.Tensor, policies: Sequence[DiffAugmentPolicy],
                 generator: torch.Generator) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020) of ``(B, 1, S, S)`` images in [-1, 1]: each policy in turn,
    with fresh randomness per image drawn from ``generator``; differentiable in ``images``."""
    for policy in policies:
        images = _POLICIES[policy](images, generator)
    return images


class CganModel(GeneratorModel):
    """The class-conditional GAN: generator, discriminator, their Adam optimisers and the EMA
    generator (see the module docstring for the recipe and its invariants)."""

    config_type: ClassVar[type[GeneratorConfig]] = CganConfig

    def __init__(self, config: CganConfig, num_classes: int, device: torch.device,
                 autocast: torch.dtype | None) -> None:
        super().__init__(config, num_classes, device, autocast)
        self.config: CganConfig = config
        self.generator = Generator(image_size=config.image_size, z_dim=config.z_dim, width=config.width,
                                   num_classes=num_classes).to(device)
        self.discriminator = Discriminator(image_size=config.image_size, width=config.width,
                                           num_classes=num_classes).to(device)
        self.ema_generator = copy.deepcopy(self.generator).eval().requires_grad_(False)
        for norm in self._ema_norms():
            norm.momentum = None  # standing statistics: a plain average over their batches
        self.ema_updates = 0
        self.ema_statistics_current = False
        self.optimizer_generator = torch.optim.Adam(self.generator.parameters(), lr=config.lr_generator,
                                                    betas=config.betas)
        self.optimizer_discriminator = torch.optim.Adam(self.discriminator.parameters(),
                                                        lr=config.lr_discriminator, betas=config.betas)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.device.type, dtype=self.autocast, enabled=self.autocast is not None)

    def _fakes(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn((len(labels), self.config.z_dim), generator=generator, device=generator.device)
        with self._autocast():
            return self.generator(z.to(self.device), labels).float()

    def _scores(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        augmented = diff_augment(images, self.config.diffaugment, generator)
        with self._autocast():
            return self.discriminator(augmented, labels).float()

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                   lr_factor: float = 1.0) -> dict[str, float]:
        """``d_steps`` discriminator steps (real and fresh fakes, one forward) then one generator
        step on the last discriminator step's fakes, then the EMA update; hinge losses."""
        images, labels = images.to(self.device, torch.float32), labels.to(self.device)
        for optimizer, rate in ((self.optimizer_generator, self.config.lr_generator),
                                (self.optimizer_discriminator, self.config.lr_discriminator)):
            for group in optimizer.param_groups:
                group["lr"] = rate * lr_factor

        discriminator_losses = []
        for index in range(self.config.d_steps):
            with torch.set_grad_enabled(index == self.config.d_steps - 1):
                fakes = self._fakes(labels, generator)
            scores = self._scores(torch.cat([images, fakes.detach()]), torch.cat([labels, labels]), generator)
            real_scores, fake_scores = scores.chunk(2)
            loss = F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()
            self.optimizer_discriminator.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer_discriminator.step()
            discriminator_losses.append(loss.item())

        self.discriminator.requires_grad_(False)
        generator_loss = -self._scores(fakes, labels, generator).mean()
        self.optimizer_generator.zero_grad(set_to_none=True)
        generator_loss.backward()
        self.optimizer_generator.step()
        self.discriminator.requires_grad_(True)
        self._update_ema()
        return {"discriminator": sum(discriminator_losses) / len(discriminator_losses),
                "generator": generator_loss.item()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.ema_updates) / (10 + self.ema_updates))
        for average, current in zip(self.ema_generator.parameters(), self.generator.parameters(), strict=True):
            average.lerp_(current, 1 - decay)
        self.ema_updates += 1
        self.ema_statistics_current = False

    def _ema_norms(self) -> list[nn.BatchNorm2d]:
        return [module for module in self.ema_generator.modules() if isinstance(module, nn.BatchNorm2d)]

    @torch.no_grad()
    def _measure_ema_statistics(self) -> None:
        """Standing statistics: the EMA generator's batch-norm statistics measured with its own
        weights on fixed noise and class-balanced labels, once per change of the weights."""
        if self.ema_statistics_current:
            return
        z = torch.randn((STATISTICS_FACES, self.config.z_dim), generator=torch.Generator().manual_seed(0))
        labels = torch.arange(STATISTICS_FACES) % self.num_classes
        for norm in self._ema_norms():
            norm.reset_running_stats()
        self.ema_generator.train()
        for begin in range(0, STATISTICS_FACES, SAMPLE_CHUNK):
            with self._autocast():
                self.ema_generator(z[begin:begin + SAMPLE_CHUNK].to(self.device),
                                   labels[begin:begin + SAMPLE_CHUNK].to(self.device))
        self.ema_generator.eval()
        self.ema_statistics_current = True

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, seeds: Sequence[int], *, guidance: float | None = None,
               steps: int | None = None) -> torch.Tensor:
        """Faces as uint8 ``(N, S, S)`` on the CPU from the EMA generator; ``guidance`` and
        ``steps`` do not apply to a GAN and are ignored."""
        if len(labels) != len(seeds):
            raise ValueError(f"{len(labels)} labels but {len(seeds)} seeds: give one seed per face")
        self._measure_ema_statistics()
        side = self.config.image_size
        faces = [torch.empty((0, side, side), dtype=torch.uint8)]
        for begin in range(0, len(seeds), SAMPLE_CHUNK):
            z = seeded_normal(seeds[begin:begin + SAMPLE_CHUNK], (self.config.z_dim,), self.device)
            with self._autocast():
                images = self.ema_generator(z, labels[begin:begin + SAMPLE_CHUNK].to(self.device)).float()
            faces.append(((images[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu())
        return torch.cat(faces)

    def training_state(self) -> dict[str, Any]:
        """The live state dicts of both networks, the EMA generator and both optimisers, and the
        count of EMA updates (save or copy them before the next step)."""
        return {"generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
                "ema_generator": self.ema_generator.state_dict(), "ema_updates": self.ema_updates,
                "optimizer_generator": self.optimizer_generator.state_dict(),
                "optimizer_discriminator": self.optimizer_discriminator.state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.ema_generator.load_state_dict(state["ema_generator"])
        self.ema_updates = int(state["ema_updates"])
        self.ema_statistics_current = False
        self.optimizer_generator.load_state_dict(state["optimizer_generator"])
        self.optimizer_discriminator.load_state_dict(state["optimizer_discriminator"])

    def inference_state(self) -> dict[str, Any]:
        """The EMA generator's state dict (weights and their standing batch-norm statistics)."""
        self._measure_ema_statistics()
        return {"ema_generator": self.ema_generator.state_dict()}

    def load_inference_state(self, state: dict[str, Any]) -> None:
        self.ema_generator.load_state_dict(state["ema_generator"])
        self.ema_statistics_current = True

    def parameter_counts(self) -> dict[str, int]:
        return {"generator": sum(parameter.numel() for parameter in self.generator.parameters()),
                "discriminator": sum(parameter.numel() for parameter in self.discriminator.parameters())}
