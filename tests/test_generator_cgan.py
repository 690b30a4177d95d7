"""The class-conditional GAN (:mod:`fercurate.synth.generators.cgan`) against the generator contract:
a step learns, sampling is per-seed and batch-independent, training and inference states round-trip
exactly, and bad configurations are refused. Tiny networks (16-48 px, width 4-8, batch 8) on one
thread keep the file fast."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from fercurate.synth.generators.cgan import CganConfig, CganModel, diff_augment

CPU = torch.device("cpu")
BATCH = 8


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny networks run fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(*, seed: int = 0, num_classes: int = 2, autocast: torch.dtype | None = torch.bfloat16,
               **config: Any) -> CganModel:
    """A small model whose initial weights come from ``seed`` (global RNG left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CganModel(CganConfig(**{"image_size": 16, "width": 8, "z_dim": 16, **config}), num_classes, CPU,
                         autocast)


def planted_batch(random: torch.Generator, side: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: top half bright, bottom half dark; class 1 the other way round; a random contrast
    per image. Images in [-1, 1], ``(BATCH, 1, side, side)``."""
    labels = torch.arange(BATCH) % 2
    rows = torch.where(torch.arange(side) < side // 2, 1.0, -1.0)[:, None].expand(side, side)
    polarity = torch.where(labels == 0, 1.0, -1.0)[:, None, None, None]
    contrast = 0.3 + 0.6 * torch.rand(BATCH, 1, 1, 1, generator=random)
    return polarity * contrast * rows, labels


def through_bytes(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` saved and loaded as the trainer's checkpoints are (a copy that later steps leave alone)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def flat_tensors(state: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a nested state (dicts and lists) by its path."""
    if isinstance(state, dict):
        return {name: leaf for key, value in state.items()
                for name, leaf in flat_tensors(value, f"{prefix}/{key}").items()}
    if isinstance(state, (list, tuple)):
        return {name: leaf for index, value in enumerate(state)
                for name, leaf in flat_tensors(value, f"{prefix}/{index}").items()}
    return {prefix: state}


def assert_same_state(first: dict[str, Any], second: dict[str, Any]) -> None:
    first_leaves, second_leaves = flat_tensors(first), flat_tensors(second)
    assert first_leaves.keys() == second_leaves.keys()
    for name, value in first_leaves.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, second_leaves[name]), name
        else:
            assert value == second_leaves[name], name


def test_training_steps_teach_the_discriminator_and_move_every_network() -> None:
    model = tiny_model()
    start = {name: tensor.clone() for name, tensor in flat_tensors(model.training_state()).items()
             if isinstance(tensor, torch.Tensor) and tensor.is_floating_point()}
    noise, data = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    losses = [model.train_step(*planted_batch(data), noise) for _ in range(60)]

    first_loss = losses[0]["discriminator"]
    late_loss = sum(step["discriminator"] for step in losses[-10:]) / 10
    assert first_loss > 1.0  # an untrained discriminator scores real and fake alike: hinge loss near 2
    assert late_loss < 0.5 * first_loss, (first_loss, late_loss)
    assert all(set(step) == {"discriminator", "generator"} for step in losses)
    now = flat_tensors(model.training_state())
    for network in ("generator", "discriminator", "ema_generator"):
        weights = [name for name in start if name.startswith(f"/{network}/") and "running" not in name]
        assert weights and any(not torch.equal(start[name], now[name]) for name in weights), network


def test_a_step_draws_randomness_only_from_its_generator() -> None:
    model = tiny_model(diffaugment=("color", "translation", "cutout"))
    images, labels = planted_batch(torch.Generator().manual_seed(3))
    global_state = torch.get_rng_state()
    model.train_step(images, labels, torch.Generator().manual_seed(4))
    model.sample(labels, range(BATCH))
    assert torch.equal(torch.get_rng_state(), global_state)

    augmented = [diff_augment(images, ("color", "translation", "cutout"), torch.Generator().manual_seed(5))
                 for _ in range(2)]
    assert torch.equal(*augmented) and augmented[0].shape == images.shape
    assert not torch.equal(augmented[0], images)


@pytest.mark.parametrize("image_size", [16, 17, 24, 40, 48])
def test_sample_gives_uint8_faces_of_the_configured_size(image_size: int) -> None:
    model = tiny_model(image_size=image_size, width=4, num_classes=3)
    faces = model.sample(torch.tensor([0, 1, 2, 1, 0]), [7, 8, 9, 10, 11])
    assert faces.shape == (5, image_size, image_size) and faces.dtype == torch.uint8
    assert faces.device.type == "cpu"
    assert model.sample(torch.tensor([], dtype=torch.long), []).shape == (0, image_size, image_size)


def test_a_face_depends_on_its_seed_not_on_its_batch() -> None:
    model = tiny_model(image_size=24)
    noise, data = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    for _ in range(3):
        model.train_step(*planted_batch(data, side=24), noise)
    alone = model.sample(torch.tensor([1]), [42])
    labels = torch.tensor([0, 1] * 150)
    seeds = [seed + 100 for seed in range(300)]
    seeds[1] = seeds[299] = 42  # the same face in two chunks of a batch larger than one chunk
    batch = model.sample(labels, seeds, guidance=3.0, steps=10)  # both ignored by a GAN
    assert torch.equal(batch[1], alone[0]) and torch.equal(batch[299], alone[0])
    assert not torch.equal(batch[1], batch[3])
    with pytest.raises(ValueError, match="one seed per face"):
        model.sample(torch.tensor([0, 1]), [1])


@pytest.mark.parametrize("config", [{}, {"d_steps": 2, "diffaugment": ("color", "translation", "cutout")}])
def test_training_state_resumes_exactly(config: dict[str, Any]) -> None:
    original = tiny_model(**config)
    noise, data = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    for _ in range(3):
        original.train_step(*planted_batch(data), noise, lr_factor=0.5)
    saved_state, saved_noise = through_bytes(original.training_state()), noise.get_state()

    resumed = tiny_model(seed=99, **config)
    resumed.load_training_state(saved_state)
    resumed_noise = torch.Generator().set_state(saved_noise)
    images, labels = planted_batch(data)
    assert original.train_step(images, labels, noise) == resumed.train_step(images, labels, resumed_noise)
    assert_same_state(original.training_state(), resumed.training_state())
    assert torch.equal(noise.get_state(), resumed_noise.get_state())
    assert torch.equal(original.sample(labels, range(BATCH)), resumed.sample(labels, range(BATCH)))


def test_inference_state_round_trip_gives_identical_samples() -> None:
    original = tiny_model()
    noise, data = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    for _ in range(5):
        original.train_step(*planted_batch(data), noise)
    state = through_bytes(original.inference_state())
    assert set(state) == {"ema_generator"}

    loaded = tiny_model(seed=7)
    loaded.load_inference_state(state)
    labels = torch.tensor([0, 1, 1, 0])
    assert torch.equal(loaded.sample(labels, [1, 2, 3, 4]), original.sample(labels, [1, 2, 3, 4]))


def test_default_size_matches_the_measured_pair() -> None:
    counts = CganModel(CganConfig(), 7, CPU, None).parameter_counts()
    assert 0.9e6 < counts["generator"] < 1.5e6 and 0.6e6 < counts["discriminator"] < 0.8e6, counts


@pytest.mark.parametrize("values", [
    {"lr_generator": -1e-4}, {"lr_discriminator": 0}, {"diffaugment": ("translation", "flip")},
    {"diffaugment": ("cutout", "cutout")}, {"betas": (0.5, 1.0)}, {"betas": (-0.1, 0.9)}, {"d_steps": 0},
    {"width": 2}, {"z_dim": 0}, {"image_size": 8}, {"kind": "ddpm"}, {"unknown_option": 1},
])
def test_config_rejects_bad_values(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CganConfig(**values)


def test_config_defaults_are_the_measured_recipe() -> None:
    config = CganConfig()
    assert (config.kind, config.z_dim, config.lr_generator, config.lr_discriminator, config.betas,
            config.diffaugment, config.d_steps) == ("cgan", 128, 1e-4, 4e-4, (0.0, 0.9), ("translation", "cutout"), 1)
