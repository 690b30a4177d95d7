"""Generators that fercurate trains to fill a rebalance plan: a class-conditional GAN (``cgan``)
and a class-conditional diffusion model (``ddpm``, with diffusers), behind one contract
(:mod:`~fercurate.synth.generators.model`) and one trainer (:mod:`~fercurate.synth.generators.trainer`).

Nothing is downloaded: a generator is trained here on a workspace's training faces, or loaded
from a run folder a user trained before. Typical use::

    from fercurate.synth.generators import generator_config, load_generator, train_generator
    train_generator(Workspace("ws"), "runs/cgan", generator_config("cgan", max_minutes=30))
    faces = load_generator("runs/cgan").sample("disgust", seeds=range(16))
"""

from fercurate.synth.generators.model import GeneratorConfig, GeneratorModel
from fercurate.synth.generators.trainer import (GENERATORS, GeneratorProgress, TrainedGenerator, generator_config,
                                                generator_kind, generator_model, load_generator, train_generator,
                                                write_samples)

__all__ = ["GENERATORS", "GeneratorConfig", "GeneratorModel", "GeneratorProgress", "TrainedGenerator",
           "generator_config", "generator_kind", "generator_model", "load_generator", "train_generator",
           "write_samples"]
