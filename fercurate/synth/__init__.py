"""Synthesis: the rebalance plan, face-aware occluders (albumentations transforms), the near-copy
and judge filter, and synthetic rows with full provenance. See :mod:`fercurate.synth.run`."""

from fercurate.synth.augment import augment_faces, contact_sheet
from fercurate.synth.filter import FilterOptions
from fercurate.synth.occluders import OCCLUDERS, FaceGeometry, FaceOccluder, occlusion_pipeline, photometric_preset
from fercurate.synth.plan import RebalancePlan, plan_rebalance
from fercurate.synth.run import (SynthesizeOptions, SynthesizeReport, make_occluded_test_set, remove_synthetic,
                                 synthesize)

__all__ = ["OCCLUDERS", "FaceGeometry", "FaceOccluder", "FilterOptions", "RebalancePlan", "SynthesizeOptions",
           "SynthesizeReport", "augment_faces", "contact_sheet", "make_occluded_test_set", "occlusion_pipeline",
           "photometric_preset", "plan_rebalance", "remove_synthetic", "synthesize"]
