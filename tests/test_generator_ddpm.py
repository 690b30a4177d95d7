"""The diffusion generator (fercurate.synth.generators.ddpm) on tiny configurations: it learns,
samples the promised shapes deterministically per seed, resumes exactly, and validates its config."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from pydantic import ValidationError

from fercurate.synth.generators.ddpm import DdpmConfig, DdpmModel

NUM_CLASSES = 3
BATCH = 8
CPU = torch.device("cpu")


def tiny_config(**overrides: object) -> DdpmConfig:
    options = {"image_size": 16, "block_out_channels": (8, 16), "batch_size": BATCH, "sampling_steps": 4,
               "lr": 1e-3, "warmup_steps": 0, **overrides}
    return DdpmConfig(**options)


def tiny_model(config: DdpmConfig | None = None, *, init_seed: int = 0,
               autocast: torch.dtype | None = None) -> DdpmModel:
    torch.manual_seed(init_seed)  # the UNet's initial weights come from the global generator
    return DdpmModel(config or tiny_config(), NUM_CLASSES, CPU, autocast)


def planted_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c is a flat gray level (-0.6, 0, 0.6) with a bright top half: easy to learn."""
    labels = torch.arange(step, step + BATCH) % NUM_CLASSES
    images = (labels.float() * 0.6 - 0.6).view(-1, 1, 1, 1).expand(-1, 1, 16, 16).clone()
    images[:, :, :8] += 0.3
    return images, labels


def train(model: DdpmModel, steps: int, generator: torch.Generator, lr_factor: float = 1.0) -> list[float]:
    return [model.train_step(*planted_batch(step), generator, lr_factor)["loss"] for step in range(steps)]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Networks this small gain nothing from a second thread, and OpenMP threads slow down many
    times over when other processes share the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_model() -> DdpmModel:
    model = tiny_model()
    train(model, 10, torch.Generator().manual_seed(1))
    return model


def test_training_lowers_the_loss_and_a_frozen_step_does_not() -> None:
    def first_and_last_mean(lr_factor: float) -> tuple[float, float]:
        losses = train(tiny_model(), 40, torch.Generator().manual_seed(3), lr_factor)
        return sum(losses[:5]) / 5, sum(losses[-5:]) / 5

    first, last = first_and_last_mean(1.0)
    assert last < 0.6 * first, (first, last)
    frozen_first, frozen_last = first_and_last_mean(0.0)  # the same draws, but no update
    assert frozen_last > 0.6 * frozen_first, (frozen_first, frozen_last)


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++"])
def test_sample_shapes_and_determinism_per_seed(trained_model: DdpmModel, sampler: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trained_model, "config", trained_model.config.model_copy(update={"sampler": sampler}))
    labels = torch.tensor([0, 1, 2, 0])
    seeds = [11, 12, 13, 14]
    for guidance in (0.0, 1.0, 3.0):
        faces = trained_model.sample(labels, seeds, guidance=guidance)
        assert faces.shape == (4, 16, 16) and faces.dtype == torch.uint8 and faces.device == CPU
        again = trained_model.sample(labels, seeds, guidance=guidance)
        assert torch.equal(faces, again)
        # Alone vs in a batch of 4: the CPU kernels may round differently by batch size, so allow
        # a level or two on a few pixels, not a different face.
        alone = trained_model.sample(labels[2:3], seeds[2:3], guidance=guidance)
        difference = (alone[0].int() - faces[2].int()).abs()
        assert difference.max() <= 2 and difference.float().mean() < 0.1, difference
        assert (faces[0].int() - faces[3].int()).abs().float().mean() > 5  # same label, other seed
    assert trained_model.sample(labels[:0], [], steps=2).shape == (0, 16, 16)


def test_sample_consumes_no_global_randomness_and_keeps_training_weights(trained_model: DdpmModel) -> None:
    weights = {name: value.clone() for name, value in trained_model.unet.state_dict().items()}
    global_state = torch.get_rng_state()
    trained_model.sample(torch.tensor([0, 1]), [1, 2], guidance=2.0)
    assert torch.equal(torch.get_rng_state(), global_state)
    assert all(torch.equal(value, weights[name]) for name, value in trained_model.unet.state_dict().items())


def test_training_state_resumes_exactly() -> None:
    generator = torch.Generator().manual_seed(5)
    original = tiny_model(autocast=torch.bfloat16)
    train(original, 3, generator)
    resumed = tiny_model(init_seed=99, autocast=torch.bfloat16)
    resumed.load_training_state(original.training_state())
    resumed_generator = torch.Generator().manual_seed(0)
    resumed_generator.set_state(generator.get_state())

    images, labels = planted_batch(3)
    assert (original.train_step(images, labels, generator, 0.5)
            == resumed.train_step(images, labels, resumed_generator, 0.5))
    resumed_weights = resumed.unet.state_dict()
    for name, value in original.unet.state_dict().items():
        assert torch.equal(value, resumed_weights[name]), name
    assert all(torch.equal(a, b) for a, b in zip(original.ema.shadow_params, resumed.ema.shadow_params))


def test_inference_state_round_trip_gives_identical_samples(trained_model: DdpmModel) -> None:
    loaded = tiny_model(trained_model.config, init_seed=42)
    loaded.load_inference_state(trained_model.inference_state())
    labels, seeds = torch.tensor([0, 1, 2]), [7, 8, 9]
    assert torch.equal(loaded.sample(labels, seeds), trained_model.sample(labels, seeds))


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++"])
def test_v_prediction_on_the_linear_schedule_trains_and_samples(sampler: str) -> None:
    model = tiny_model(tiny_config(prediction_type="v_prediction", beta_schedule="linear", sampler=sampler))
    losses = train(model, 2, torch.Generator().manual_seed(2))
    assert all(0 < loss < 10 for loss in losses)
    assert model.sample(torch.tensor([0, 2]), [1, 2], guidance=2.0).shape == (2, 16, 16)


def test_learning_rate_factor_warms_up_then_decays_to_a_tenth() -> None:
    model = tiny_model(tiny_config(warmup_steps=10))
    assert model.learning_rate_factor(0, 100) == pytest.approx(0.1)
    assert model.learning_rate_factor(9, 100) == pytest.approx(1.0)
    assert model.learning_rate_factor(55, 100) == pytest.approx(0.55)
    assert model.learning_rate_factor(100, 100) == pytest.approx(0.1)


@pytest.mark.parametrize("bad", [
    {"lr": -1e-4},
    {"label_dropout": 1.5},
    {"image_size": 18, "block_out_channels": (8, 16, 16)},  # two halvings need a multiple of 4
    {"block_out_channels": (8, 12)},  # not a multiple of the attention head size
    {"guidance": -1.0},
    {"sampler": "euler"},
])
def test_config_refuses_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        tiny_config(**bad)


def test_config_refuses_a_size_the_unet_cannot_halve() -> None:
    with pytest.raises(ValidationError, match="not divisible by 4"):
        DdpmConfig(image_size=50, block_out_channels=(32, 64, 64))
