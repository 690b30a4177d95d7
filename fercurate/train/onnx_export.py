"""ONNX export of a trained classifier, and the proof that the export computes what the model does.

The model is exported with PyTorch's ``torch.export``-based exporter (the default since PyTorch
2.9; it needs ``onnxscript``) at opset 18, its lowest native opset (converting down to 17 fails for
these graphs), with a dynamic batch dimension: input ``input`` float32 ``(batch, 1, 48, 48)``,
normalised as in training, output ``logits`` ``(batch, classes)``. What inference needs besides
the graph goes into the model's metadata: ``class_names`` (JSON list, in output order),
``normalization_mean`` and ``normalization_std`` (on the 0..1 pixel scale) and ``model_name``.

:func:`check_onnx` runs the file in onnxruntime and compares it with the PyTorch model on real
inputs, at the example's batch size and at batch 1, so a broken export never ships silently.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fercurate.atomic import atomic_path
from fercurate.train.data import SIDE, Normalization

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class OnnxMismatch(AssertionError):
    """onnxruntime's outputs differ from the PyTorch model's beyond the tolerance."""


def export_onnx(model: nn.Module, path: str | Path, class_names: Sequence[str], normalization: Normalization,
                model_name: str = "", opset: int = OPSET, extra_metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``model`` (in eval mode, on the CPU, float32; the original is left untouched) to
    ``path`` as ONNX with a dynamic batch dimension and inference metadata; returns the path."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exported = copy.deepcopy(model).cpu().float().eval()
    example = torch.zeros(2, 1, SIDE, SIDE)
    batch = torch.export.Dim("batch", min=1)
    with atomic_path(path) as temporary:
        with warnings.catch_warnings():  # the exporter narrates its passes; failures still raise
            warnings.simplefilter("ignore")
            torch.onnx.export(exported, (example,), temporary, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=opset, dynamic_shapes=({0: batch},), dynamo=True, external_data=False,
                              verbose=False)
        proto = onnx.load(str(temporary))
        metadata = {"class_names": json.dumps(list(class_names)), "normalization_mean": repr(normalization.mean),
                    "normalization_std": repr(normalization.std), "model_name": model_name,
                    **(extra_metadata or {})}
        del proto.metadata_props[:]
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(temporary))
    return path


def onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The inference metadata of an exported classifier: class names, normalisation, model name."""
    import onnx

    props = {entry.key: entry.value for entry in onnx.load(str(path), load_external_data=False).metadata_props}
    return {"class_names": json.loads(props["class_names"]),
            "normalization": Normalization(float(props["normalization_mean"]), float(props["normalization_std"])),
            "model_name": props.get("model_name", ""), "extra": {k: v for k, v in props.items() if k not in
                                                                {"class_names", "normalization_mean",
                                                                 "normalization_std", "model_name"}}}


def check_onnx(path: str | Path, model: nn.Module, sample: torch.Tensor | np.ndarray, atol: float = 1e-4) -> dict[str, Any]:
    """Run ``sample`` (normalised float ``(N, 1, 48, 48)``) through onnxruntime and through ``model``
    (eval mode, CPU), whole and as a batch of one; raise :class:`OnnxMismatch` unless every
    argmax agrees and every logit is within ``atol``. Returns the comparison."""
    import onnxruntime

    inputs = torch.as_tensor(sample, dtype=torch.float32).cpu()
    reference = copy.deepcopy(model).cpu().float().eval()
    with torch.no_grad():
        expected = reference(inputs).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})[0]
    single = session.run([OUTPUT_NAME], {INPUT_NAME: inputs[:1].numpy()})[0]
    if actual.shape != expected.shape or single.shape != expected[:1].shape:
        raise OnnxMismatch(f"output shapes differ: onnxruntime {actual.shape} (batch 1: {single.shape}), "
                           f"torch {expected.shape}")
    max_abs_diff = float(max(np.abs(actual - expected).max(), np.abs(single - expected[:1]).max()))
    agreement = float((actual.argmax(1) == expected.argmax(1)).mean())
    report = {"n": len(inputs), "max_abs_diff": max_abs_diff, "argmax_agreement": agreement, "atol": atol}
    if max_abs_diff > atol or agreement < 1.0:
        raise OnnxMismatch(f"ONNX export differs from the model: {report}")
    return report
