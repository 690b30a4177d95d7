"""The contract every generator meets: a configuration (pydantic, validated where it is defined)
and a model object that the shared trainer (:mod:`fercurate.synth.generators.trainer`) drives.

A generator kind (``cgan``, ``ddpm``) is one module with a :class:`GeneratorConfig` subclass and a
:class:`GeneratorModel` subclass; the registry (:data:`fercurate.synth.generators.GENERATORS`) names
them. The trainer owns everything that is the same for every kind (the training faces, batches,
time budget, checkpoints, exact resume, sample grids, progress); a model owns its networks,
optimisers and EMA, one optimisation step, and sampling.

Invariants a model keeps:

- Images are float tensors ``(B, 1, S, S)`` in ``[-1, 1]``; labels are class indices ``(B,)``.
- ``train_step`` draws every random number it needs from the ``generator`` it is given (never from
  global state), so the trainer's saved generator state makes a resumed run exact.
- ``sample`` uses the EMA weights and draws each face's randomness from that face's own seed only,
  so a face depends on (weights, label, seed, sampling options), not on the batch it was made in.
- ``training_state`` holds everything ``train_step`` changes (networks, EMA, optimisers);
  ``inference_state`` only what ``sample`` needs (the EMA weights).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fercurate.options import parse_device


class GeneratorConfig(BaseModel):
    """What every generator kind is trained with; a kind's subclass adds its own fields (and sets
    ``kind``). The defaults are for a CPU run of minutes; a GPU run wants more steps."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    image_size: int = Field(48, ge=16, le=256, description="faces are resized to this square size")
    batch_size: int | None = Field(None, ge=2, description="None: 64 on CPU, 256 on CUDA")
    steps: int = Field(20_000, ge=1, description="optimisation steps when the time budget allows")
    max_minutes: float | None = Field(None, gt=0, description="time budget for the whole call, loading included")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="decay of the weights' exponential moving average")
    balanced_classes: bool = Field(True, description="draw every class equally often (small classes do not starve)")
    flip: bool = Field(True, description="mirror half of each batch (faces are near-symmetric)")
    mixed_precision: bool = Field(True, description="bfloat16 autocast (faster on these CPUs; float16 on old GPUs)")
    device: str = Field("auto", description="auto (CUDA if available), cpu, cuda, cuda:N")
    seed: int = Field(0, ge=0)
    sample_every: int = Field(500, ge=1, description="steps between the per-class sample grids")
    checkpoint_minutes: float = Field(2.0, gt=0, description="minutes between checkpoints (also at the end)")
    log_every: int = Field(10, ge=1, description="steps between progress reports")

    @field_validator("device", mode="before")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return parse_device(value)


#: Config fields that may differ when resuming: they do not change what is computed.
RESUMABLE_CHANGES = frozenset({"max_minutes", "log_every", "sample_every", "checkpoint_minutes", "steps", "device"})


class GeneratorModel(ABC):
    """One kind of class-conditional generator: networks, optimisers, EMA, a step, sampling."""

    config_type: ClassVar[type[GeneratorConfig]]

    def __init__(self, config: GeneratorConfig, num_classes: int, device: torch.device,
                 autocast: torch.dtype | None) -> None:
        self.config = config
        self.num_classes = num_classes
        self.device = device
        self.autocast = autocast  # None: float32

    @abstractmethod
    def train_step(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                   lr_factor: float = 1.0) -> dict[str, float]:
        """One optimisation step on a batch (images in [-1, 1], ``(B, 1, S, S)``; labels ``(B,)``),
        at ``lr_factor`` times the configured learning rates; returns the losses by name."""

    @abstractmethod
    def sample(self, labels: torch.Tensor, seeds: Sequence[int], *, guidance: float | None = None,
               steps: int | None = None) -> torch.Tensor:
        """Faces of ``labels`` as uint8 ``(N, S, S)`` on the CPU, face i from ``seeds[i]`` alone, with the
        EMA weights. ``guidance`` and ``steps`` are sampling options of kinds that have them (None:
        the config's default; kinds without them ignore them)."""

    @abstractmethod
    def training_state(self) -> dict[str, Any]:
        """Everything a step changes (networks, EMA, optimisers), for exact resume."""

    @abstractmethod
    def load_training_state(self, state: dict[str, Any]) -> None: ...

    @abstractmethod
    def inference_state(self) -> dict[str, Any]:
        """What sampling needs (the EMA weights)."""

    @abstractmethod
    def load_inference_state(self, state: dict[str, Any]) -> None: ...

    @abstractmethod
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per network, e.g. ``{"generator": ..., "discriminator": ...}``."""

    def learning_rate_factor(self, step: int, total_steps: int) -> float:
        """The learning-rate multiplier at ``step`` of ``total_steps`` (default: constant)."""
        return 1.0


def seeded_normal(seeds: Sequence[int], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``(N, *shape)`` standard normal noise, row i drawn from ``seeds[i]`` alone (on the CPU, so a
    seed gives the same noise on any device), then moved to ``device``."""
    rows = [torch.randn(shape, generator=torch.Generator().manual_seed(int(seed))) for seed in seeds]
    return (torch.stack(rows) if rows else torch.empty((0, *shape))).to(device)
