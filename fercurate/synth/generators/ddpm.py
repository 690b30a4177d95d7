"""The class-conditional diffusion generator (``kind: ddpm``): diffusers' ``UNet2DModel`` trained to
denoise faces, sampled with a few-step solver and classifier-free guidance.

Choices, and why:

- **Network**: ``UNet2DModel`` with plain ResNet blocks and self-attention only at the lowest
  resolution (12x12 for 48-px faces with three blocks) and in the middle block; the default
  ``(32, 64, 64)`` channels, one layer per block, is about 1.1M parameters. On 2 CPU cores a step at
  batch 64 takes about 1 s (STACK.md: 0.54 steps/s in float32, 0.74 with bfloat16 autocast), so a
  useful model needs a GPU or CPU-hours; the trainer makes the run resumable.
- **Conditioning**: ``num_class_embeds = num_classes + 1``; the last index (``num_classes``) is the
  null class. During training ``label_dropout`` of the labels are replaced by it, so one network
  learns both the conditional and the unconditional prediction, and sampling mixes them
  (classifier-free guidance): ``pred = pred_null + w * (pred_cond - pred_null)``; ``w = 1`` is plain
  conditional sampling, ``w = 0`` unconditional, ``w > 1`` pushes towards the class.
- **Noise schedule**: ``squaredcos_cap_v2`` (the cosine schedule of improved DDPM) by default: it
  destroys small images less abruptly than the linear one. Training noise comes from
  ``DDPMScheduler``; the target is the noise (``epsilon``) or the velocity (``v_prediction``).
- **Sampler**: DPM-Solver++ (2nd order, multistep) or DDIM (eta 0), both deterministic given the
  initial noise, with ``trailing`` timestep spacing (the first step starts at the noisiest
  timestep, as the pure-noise start assumes) and the predicted clean image clipped to ``[-1, 1]``
  at each step. 20-25 steps suffice, against 1000 for ancestral DDPM sampling.
- **EMA**: ``diffusers.training_utils.EMAModel`` (decay ``ema_decay``, with its built-in warm-up
  ``(1 + n) / (10 + n)`` so early samples are not dominated by the random initial weights); samples
  always come from the EMA weights, copied into a separate inference UNet so the training weights
  are never swapped out.
- **Learning rate**: AdamW, linear warm-up over ``warmup_steps``, then cosine decay to 10% at the
  last step (:meth:`DdpmModel.learning_rate_factor`); gradients clipped to ``max_grad_norm``.

Invariants (beyond those of :mod:`fercurate.synth.generators.model`):

- ``train_step`` draws, in this order, the noise, the timesteps and the label-dropout mask from the
  generator it is given, on that generator's device, and nothing from global state.
- ``sample`` draws nothing at all after the initial noise ``seeded_normal(seeds, (1, S, S))``, and
  consumes no global random state. A face's pixels depend on (EMA weights, label, seed, guidance,
  steps, sampler) only; the batch it is made in can change the float rounding of the convolutions
  (CPU kernels choose blocking by batch size), which rarely moves a pixel by more than a level or two.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from pydantic import Field, model_validator

from fercurate.synth.generators.model import GeneratorConfig, GeneratorModel, seeded_normal

ATTENTION_HEAD_DIM = 8  # channels per attention head; every block's channel count is a multiple of it
SAMPLE_CHUNK = 256  # faces per sampling batch (doubled for classifier-free guidance)
FINAL_LR_SHARE = 0.1  # the cosine decay ends at this share of the peak learning rate
# DPM-Solver's clip of the log signal-to-noise ratio: needed by the cosine schedule, whose last
# timesteps have almost no signal (diffusers' recommendation; the linear schedule never reaches it).
DPM_LAMBDA_MIN = -5.1

Channels = Annotated[int, Field(ge=ATTENTION_HEAD_DIM, multiple_of=ATTENTION_HEAD_DIM)]


class DdpmConfig(GeneratorConfig):
    """A class-conditional DDPM on ``image_size`` faces (see the module docstring for the choices)."""

    kind: Literal["ddpm"] = "ddpm"
    block_out_channels: tuple[Channels, ...] = Field(
        (32, 64, 64), min_length=2, max_length=5,
        description="UNet channels per resolution (multiples of 8); each block after the first halves the size")
    layers_per_block: int = Field(1, ge=1, le=4, description="ResNet layers per UNet block")
    lr: float = Field(2e-4, gt=0, le=1, description="peak AdamW learning rate")
    weight_decay: float = Field(0.01, ge=0, description="AdamW's decoupled weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradients are clipped to this global norm")
    warmup_steps: int = Field(200, ge=0, description="steps of linear learning-rate warm-up")
    train_timesteps: int = Field(1000, ge=10, le=10_000, description="length of the diffusion chain")
    beta_schedule: Literal["squaredcos_cap_v2", "linear"] = Field(
        "squaredcos_cap_v2", description="noise schedule: cosine (improved DDPM) or linear (original DDPM)")
    prediction_type: Literal["epsilon", "v_prediction"] = Field(
        "epsilon", description="what the UNet predicts: the added noise or the velocity")
    label_dropout: float = Field(
        0.1, ge=0, le=1, description="share of training labels replaced by the null class (for classifier-free guidance)")
    sampler: Literal["ddim", "dpm-solver++"] = Field("dpm-solver++", description="deterministic few-step sampler")
    sampling_steps: int = Field(25, ge=1, description="denoising steps per sample")
    guidance: float = Field(
        2.0, ge=0, description="classifier-free guidance scale w: 0 unconditional, 1 plain conditional, >1 stronger")

    @model_validator(mode="after")
    def _consistent_sizes(self) -> DdpmConfig:
        downsampling = 2 ** (len(self.block_out_channels) - 1)
        if self.image_size % downsampling:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by {downsampling}: the UNet's "
                f"{len(self.block_out_channels)} blocks halve it {len(self.block_out_channels) - 1} times; "
                "use fewer block_out_channels or an image_size that is a multiple of it")
        if self.sampling_steps > self.train_timesteps:
            raise ValueError(f"sampling_steps {self.sampling_steps} exceeds train_timesteps {self.train_timesteps}")
        return self


def build_unet(config: DdpmConfig, num_classes: int) -> UNet2DModel:
    """The denoising UNet: plain blocks, attention at the lowest resolution, ``num_classes + 1``
    class embeddings (the last is the null class). Group-norm groups: the largest divisor of every
    channel count up to 32."""
    blocks = len(config.block_out_channels)
    return UNet2DModel(
        sample_size=config.image_size, in_channels=1, out_channels=1,
        block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
        down_block_types=("DownBlock2D",) * (blocks - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (blocks - 1),
        attention_head_dim=ATTENTION_HEAD_DIM, norm_num_groups=math.gcd(32, *config.block_out_channels),
        num_class_embeds=num_classes + 1)


class DdpmModel(GeneratorModel):
    """The UNet being trained, its EMA, AdamW, the training noise schedule, and an inference UNet
    that holds a copy of the EMA weights while sampling."""

    config_type = DdpmConfig
    config: DdpmConfig

    def __init__(self, config: DdpmConfig, num_classes: int, device: torch.device,
                 autocast: torch.dtype | None) -> None:
        super().__init__(config, num_classes, device, autocast)
        self.null_class = num_classes
        self.unet = build_unet(config, num_classes).to(device)
        self.inference_unet = copy.deepcopy(self.unet).requires_grad_(False).eval()
        self.ema = EMAModel(self.unet.parameters(), decay=config.ema_decay, foreach=True)
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.noise_schedule = DDPMScheduler(**self._schedule_options())

    def _schedule_options(self) -> dict[str, Any]:
        """What the training schedule and the samplers share."""
        return {"num_train_timesteps": self.config.train_timesteps, "beta_schedule": self.config.beta_schedule,
                "prediction_type": self.config.prediction_type}

    def _predict(self, unet: UNet2DModel, noisy: torch.Tensor, timesteps: torch.Tensor,
                 labels: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction in float32, its forward pass under the model's autocast."""
        with torch.autocast(device_type=self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            return unet(noisy, timesteps, class_labels=labels).sample.float()

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                   lr_factor: float = 1.0) -> dict[str, float]:
        """One denoising step: noise each face at a random timestep, predict the noise (or velocity)
        with ``label_dropout`` of the labels replaced by the null class; MSE, AdamW, EMA."""
        images = images.to(self.device, torch.float32)
        batch = images.shape[0]
        draw_device = generator.device
        noise = torch.randn(images.shape, generator=generator, device=draw_device).to(self.device)
        timesteps = torch.randint(0, self.config.train_timesteps, (batch,), generator=generator,
                                  device=draw_device).to(self.device)
        dropped = (torch.rand(batch, generator=generator, device=draw_device) < self.config.label_dropout).to(self.device)
        labels = torch.where(dropped, self.null_class, labels.to(self.device, torch.long))

        noisy = self.noise_schedule.add_noise(images, noise, timesteps)
        target = (noise if self.config.prediction_type == "epsilon"
                  else self.noise_schedule.get_velocity(images, noise, timesteps))
        self.unet.train()
        loss = F.mse_loss(self._predict(self.unet, noisy, timesteps, labels), target)

        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * lr_factor
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.ema.step(self.unet.parameters())
        return {"loss": loss.item()}

    def learning_rate_factor(self, step: int, total_steps: int) -> float:
        """Linear warm-up to 1 over ``warmup_steps``, then cosine decay to 0.1 at ``total_steps``."""
        if step < self.config.warmup_steps:
            return (step + 1) / self.config.warmup_steps
        progress = min(1.0, (step - self.config.warmup_steps) / max(1, total_steps - self.config.warmup_steps))
        return FINAL_LR_SHARE + (1 - FINAL_LR_SHARE) * 0.5 * (1 + math.cos(math.pi * progress))

    def _sampler(self, steps: int) -> DDIMScheduler | DPMSolverMultistepScheduler:
        """A fresh sampler (they keep per-run state) with its ``steps`` timesteps set; both clip the
        predicted clean image to [-1, 1] and add no noise of their own."""
        if self.config.sampler == "ddim":
            sampler = DDIMScheduler(**self._schedule_options(), timestep_spacing="trailing", clip_sample=True)
        else:
            sampler = DPMSolverMultistepScheduler(
                **self._schedule_options(), algorithm_type="dpmsolver++", timestep_spacing="trailing",
                thresholding=True, sample_max_value=1.0, lambda_min_clipped=DPM_LAMBDA_MIN)
        sampler.set_timesteps(steps, device=self.device)
        return sampler

    def _guided_prediction(self, noisy: torch.Tensor, timestep: torch.Tensor, labels: torch.Tensor,
                           guidance: float) -> torch.Tensor:
        """``pred_null + guidance * (pred_cond - pred_null)``, from the inference UNet; one pass
        (null or conditional labels only) when guidance is 0 or 1, else one doubled batch."""
        if guidance in (0.0, 1.0):
            return self._predict(self.inference_unet, noisy, timestep,
                                 labels if guidance == 1.0 else torch.full_like(labels, self.null_class))
        doubled = self._predict(self.inference_unet, torch.cat([noisy, noisy]), timestep,
                                torch.cat([labels, torch.full_like(labels, self.null_class)]))
        conditional, unconditional = doubled.chunk(2)
        return unconditional + guidance * (conditional - unconditional)

    @torch.inference_mode()
    def sample(self, labels: torch.Tensor, seeds: Sequence[int], *, guidance: float | None = None,
               steps: int | None = None) -> torch.Tensor:
        """Faces of ``labels`` as uint8 ``(N, S, S)`` on the CPU, face i denoised from
        ``seeded_normal(seeds[i])`` with the EMA weights, in chunks of 256 faces."""
        guidance = self.config.guidance if guidance is None else float(guidance)
        steps = self.config.sampling_steps if steps is None else int(steps)
        if guidance < 0:
            raise ValueError(f"guidance must be >= 0, not {guidance}")
        if not 1 <= steps <= self.config.train_timesteps:
            raise ValueError(f"steps must lie in 1..{self.config.train_timesteps}, not {steps}")
        labels = labels.to(self.device, torch.long)
        if len(labels) != len(seeds):
            raise ValueError(f"{len(labels)} labels but {len(seeds)} seeds")
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes:
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1}")

        self.ema.copy_to(self.inference_unet.parameters())
        size = self.config.image_size
        faces = [torch.empty((0, size, size), dtype=torch.uint8)]
        for start in range(0, len(labels), SAMPLE_CHUNK):
            chunk_labels = labels[start:start + SAMPLE_CHUNK]
            noisy = seeded_normal(seeds[start:start + SAMPLE_CHUNK], (1, size, size), self.device)
            sampler = self._sampler(steps)
            for timestep in sampler.timesteps:
                prediction = self._guided_prediction(noisy, timestep, chunk_labels, guidance)
                noisy = sampler.step(prediction, timestep, noisy).prev_sample
            faces.append(((noisy[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
        return torch.cat(faces)

    def training_state(self) -> dict[str, Any]:
        """A snapshot (copies, so later steps do not change it) of the UNet, EMA and AdamW states."""
        return copy.deepcopy({"unet": self.unet.state_dict(), "ema": self.ema.state_dict(),
                              "optimizer": self.optimizer.state_dict()})

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.unet.load_state_dict(state["unet"])
        self.ema.load_state_dict(state["ema"])
        self.ema.to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])

    def inference_state(self) -> dict[str, Any]:
        """The EMA weights as a UNet state dict (a copy)."""
        self.ema.copy_to(self.inference_unet.parameters())
        return copy.deepcopy(self.inference_unet.state_dict())

    def load_inference_state(self, state: dict[str, Any]) -> None:
        """Make ``state`` (from :meth:`inference_state`) the EMA weights that sampling uses."""
        self.inference_unet.load_state_dict(state)
        self.ema.load_state_dict({"shadow_params": [p.detach().clone() for p in self.inference_unet.parameters()]})

    def parameter_counts(self) -> dict[str, int]:
        return {"unet": sum(parameter.numel() for parameter in self.unet.parameters())}
