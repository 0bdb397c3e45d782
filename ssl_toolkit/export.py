"""``ssl checkpoints export``: a backbone written as safetensors, timm, torch or ONNX outside the library.

An export never lands in the library or in a run or backbone folder, and never replaces an
existing file unless asked (``--overwrite``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssl_toolkit.backbone_files import META, WEIGHTS
from ssl_toolkit.errors import UserError
from ssl_toolkit.library import load_backbone_any, refuse_inside_library


def check_export_path(out: str | Path, overwrite: bool) -> Path:
    """Refuse an export path inside the library or a run folder, an existing file without ``overwrite``, or an unwritable one."""
    from ssl_toolkit.backbone_files import sidecar_path
    from ssl_toolkit.outputs import check_writable_file
    from ssl_toolkit.run_folder import RunFolder, enclosing_run

    out = check_writable_file(out, "--out")
    parent = out.resolve().parent
    refuse_inside_library(out, "--out", "a folder of your own")
    if any((parent / name).exists() for name in (RunFolder.CONFIG, RunFolder.LAST, META, WEIGHTS)):
        raise UserError(f"--out {out} is inside a run or backbone folder ({parent}); export to a folder of your own")
    owner = enclosing_run(parent)
    if owner is not None:  # e.g. RUN/probes/x.safetensors: its x.safetensors.json would sit among the probe records
        raise UserError(f"--out {out} is inside a run or backbone folder ({owner}); export to a folder of your own")
    if sidecar_path(out).is_dir():
        raise UserError(f"--out {out}: its metadata file {sidecar_path(out)} is a folder")
    if not overwrite:
        for path in (out, sidecar_path(out)):
            if path.exists():
                raise UserError(f"--out: {path} already exists; use --overwrite to replace it")
    return out


def export_checkpoint(target: str | Path, out: str | Path, fmt: str = "safetensors", overwrite: bool = False) -> tuple[dict[str, Any], str]:
    """Write a checkpoint as ``fmt`` to ``out``; returns (the written metadata, Python code that loads it).

    ``out`` may not lie in the library or in a run folder, and an existing file is replaced
    only with ``overwrite``.
    """
    from ssl_toolkit.checkpoints import export_files, load_snippet

    check_export_path(out, overwrite)
    if fmt == "onnx":
        from ssl_toolkit.onnx_export import check_onnx_available, export_onnx, onnx_snippet

        check_onnx_available()
        model, meta, _ = load_backbone_any(target)
        new_meta = export_onnx(model, meta, out)
        return new_meta, onnx_snippet(new_meta, out)
    model, meta, _ = load_backbone_any(target)
    new_meta = export_files(model, meta, out, fmt)
    return new_meta, load_snippet(new_meta, out, fmt)
