"""ONNX export of a backbone: ``ssl checkpoints export NAME --format onnx``.

The graph takes ``images`` of shape ``(batch, C, S, S)``, float32 pixels in [0, 1]
normalised with the recorded mean/std, and returns ``features`` ``(batch, D)``; the batch
size is dynamic. The opset is recorded in the exported metadata as ``onnx_opset``.
Needs the ``onnx`` extra: ``pip install 'ssl-toolkit[onnx]'``.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl_toolkit.backbone_files import sha256_bytes, write_with_sidecar
from ssl_toolkit.errors import UserError

OPSET = 18


def check_onnx_available() -> None:
    """Refuse the export early when the ``onnx`` extra is not installed."""
    missing = [p for p in ("onnx", "onnxscript") if importlib.util.find_spec(p) is None]
    if missing:
        raise UserError(f"--format onnx needs the {' and '.join(missing)} package(s): pip install 'ssl-toolkit[onnx]'")


def export_onnx(model: nn.Module, meta: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Write ``model`` as an ONNX graph with a dynamic batch to ``out`` (atomically) plus ``<out>.json``.

    Returns:
        The written metadata (``export_format: onnx``, ``onnx_opset``, weights hash of the file).
    """
    check_onnx_available()
    out = Path(out).expanduser()
    if out.suffix != ".onnx":
        raise UserError(f"--out {out}: an ONNX export needs a .onnx file name")
    in_chans, size = int(meta["in_chans"]), int(meta["image_size"])
    example = torch.zeros(2, in_chans, size, size)  # (B, C, S, S)
    batch = torch.export.Dim("batch", min=1)
    model = model.eval().float()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            _export(model, example, path, batch)
        except OSError as e:  # a full disk or a folder that turned read-only: name the output, not the temp file
            e.filename = str(out)
            raise
        data = path.read_bytes()
    keep = {k: v for k, v in meta.items() if k not in ("weights_file", "weights_sha256", "weights_bytes", "layout", "export_format")}
    new_meta = {
        **keep,
        "export_format": "onnx",
        "onnx_opset": OPSET,
        "onnx_io": {"input": "images", "output": "features"},
        "weights_file": out.name,
        "weights_sha256": sha256_bytes(data),
        "weights_bytes": len(data),
    }
    write_with_sidecar(out, data, new_meta)
    return new_meta


def _export(model: nn.Module, example: torch.Tensor, path: Path, batch: Any) -> None:
    """``torch.onnx.export`` of ``model`` to ``path`` with a dynamic batch (``example``: ``(2, C, S, S)``)."""
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["images"],
        output_names=["features"],
        dynamic_shapes={"x": {0: batch}},
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
        verbose=False,
    )


def onnx_snippet(meta: dict[str, Any], path: str | Path) -> str:
    """Python code that runs the exported graph with onnxruntime (no torch, no ssl_toolkit)."""
    from ssl_toolkit.checkpoints import input_notes

    size, chans = int(meta["image_size"]), int(meta["in_chans"])
    mean = [round(float(x), 6) for x in meta["mean"]]
    std = [round(float(x), 6) for x in meta["std"]]
    return (
        "\n".join(
            [
                "import numpy as np",
                "import onnxruntime as ort",
                f"session = ort.InferenceSession({str(Path(path).resolve())!r})",
                f"images = np.random.rand(4, {chans}, {size}, {size}).astype(np.float32)  # pixels in [0, 1], any batch size",
                f"mean, std = np.array({mean}, np.float32).reshape(1, -1, 1, 1), np.array({std}, np.float32).reshape(1, -1, 1, 1)",
                "features = session.run(['features'], {'images': (images - mean) / std})[0]  # (batch, D)",
                *input_notes(meta),
            ]
        )
        + "\n"
    )
