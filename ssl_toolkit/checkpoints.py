"""Backbone files: ``backbone.safetensors`` + ``meta.json``, saved atomically, loaded safely.

Weights are stored as safetensors (never pickled); ``meta.json`` carries what rebuilds
the model in plain timm (name, create kwargs, stem change), the preprocessing (image
size, channels, mean/std), the training facts and the SHA-256 of the weights file.
The hash covers the weights file only, so results appended to ``meta.json`` later (probe
scores) never invalidate it.

Two weight layouts exist:

* ``native``: the state dict of the backbone as trained, small-image stem included
  (a 3x3 ``conv1`` where timm builds a 7x7 one).
* ``timm``: what plain ``timm.create_model(..., pretrained=True)`` loads before the stem is
  changed. A single-conv stem's 3x3 kernel is stored zero-padded to timm's kernel size;
  once the snippet sets that conv's stride to 1 the outputs are identical.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from ssl_toolkit.atomic import atomic_write_pair
from ssl_toolkit.backbone_files import FORMATS, META, WEIGHTS, read_meta, sha256_bytes, sidecar_path, write_with_sidecar
from ssl_toolkit.backbones import BackboneSpec, build_from_spec
from ssl_toolkit.data.color import LUMA
from ssl_toolkit.errors import UserError


def state_to_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies of ``model``'s state dict."""
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_backbone(folder: str | Path, model: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``model``'s state dict and ``meta`` (plus size and SHA-256) into ``folder`` atomically."""
    folder = Path(folder)
    state = state_to_cpu(model)
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise UserError(f"refusing to save a backbone with non-finite weights ({k})")
    data = st_save(state)
    meta = {**meta, "weights_file": WEIGHTS, "weights_sha256": sha256_bytes(data), "weights_bytes": len(data)}
    atomic_write_pair(folder / WEIGHTS, data, folder / META, (json.dumps(meta, indent=2, default=str) + "\n").encode())
    return meta


def given_path(target: str | Path) -> Path:
    """``target`` as a path, refusing an empty one (``Path("")`` would be the working folder)."""
    if not str(target).strip():
        raise UserError("no run folder, backbone file or checkpoint given (the name is empty)")
    return Path(target).expanduser()


def resolve_backbone_files(target: str | Path) -> tuple[Path, Path]:
    """``(weights, meta)`` paths for a run folder, a backbone folder or a weights file.

    A weights file's metadata is ``<file name>.json`` next to it (what ``ssl checkpoints
    export`` writes), else ``<file stem>.json``, else ``meta.json`` in the same folder.
    """
    p = given_path(target)
    if not p.exists():
        raise UserError(f"no such run folder or backbone file: {target}")
    if p.name == "last.ckpt" and (p.parent / "config.yaml").is_file():  # RunFolder.LAST and RunFolder.CONFIG
        raise UserError(f"{target} is a run's training checkpoint (for --resume), not a backbone: give the run folder, {p.parent}")
    if p.is_dir():
        weights, meta = p / WEIGHTS, p / META
        if not weights.is_file():
            raise UserError(f"{target} has no backbone checkpoint ({WEIGHTS}); did the run finish?")
    else:
        weights = p
        candidates = list(dict.fromkeys(c for c in (sidecar_path(p), p.with_suffix(".json"), p.with_name(META)) if c != p))
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            looked = ", ".join(c.name for c in candidates)
            raise UserError(
                f"{p} has no metadata next to it (looked for {looked} in {p.parent}): a backbone needs it to be rebuilt; "
                f"for weights from elsewhere write {candidates[0].name} with backbone.timm_name, backbone.kwargs, "
                "in_chans, image_size, mean and std (docs/checkpoints.md, 'Weights from elsewhere')"
            )
        meta = found
    if not meta.is_file():
        raise UserError(f"{meta} is missing: a backbone needs its metadata to be rebuilt")
    return weights, meta


def load_state(weights: Path, expected_sha: str | None, name: str) -> dict[str, torch.Tensor]:
    """Read a weights file safely (safetensors, or ``torch.load(weights_only=True)``), checking its hash."""
    try:
        data = weights.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read checkpoint {name}: {e.strerror}") from None
    if expected_sha and sha256_bytes(data) != expected_sha:
        raise UserError(f"checkpoint {name} is corrupt (hash mismatch)")
    if weights.suffix == ".safetensors" or data[8:9] == b"{":
        try:
            return st_load(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            if weights.suffix == ".safetensors":
                raise UserError(f"checkpoint {name} is corrupt ({str(e).splitlines()[0]})") from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unpickling failure means an unusable file)
        raise UserError(
            f"checkpoint {name} cannot be read safely ({type(e).__name__}); weights must be safetensors or a plain state_dict"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {name} is not a state_dict of tensors")
    return state


def describe_arch(spec: BackboneSpec) -> str:
    """``test_resnet (in_chans=1, small stem)``: the architecture in words."""
    extras = [f"{k}={v}" for k, v in spec.kwargs.items() if k != "num_classes"]
    if spec.small_stem:
        extras.append("small stem")
    elif not spec.stem_pool:
        extras.append("no stem max-pool")
    return f"{spec.timm_name} ({', '.join(extras)})" if extras else spec.timm_name


def build_with_state(spec: BackboneSpec, state: dict[str, torch.Tensor], name: str) -> nn.Module:
    """Rebuild the model from ``spec`` and load ``state`` strictly; a mismatch is a one-line error."""
    model = build_from_spec(spec)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        if wrong:
            detail = f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}"
        else:
            sample = ", ".join((missing + unexpected)[:2])
            detail = f"{len(missing)} missing and {len(unexpected)} unexpected tensors (e.g. {sample})"
        found = f"{len(state)} tensors, {sum(v.numel() for v in state.values()):,} values"
        expected = f"{len(own)} tensors, {sum(v.numel() for v in own.values()):,} values"
        raise UserError(
            f"checkpoint {name} does not match its architecture: expected {describe_arch(spec)} "
            f"({expected}), found a different one ({found}): {detail}"
        )
    model.load_state_dict(state)
    return model.eval()


def check_same_arch(expected: BackboneSpec, found: BackboneSpec, name: str) -> None:
    """Refuse ``found`` weights for a model built as ``expected`` (e.g. ``--init-from``)."""
    if (expected.timm_name, expected.small_stem, expected.stem_pool, expected.kwargs) != (
        found.timm_name,
        found.small_stem,
        found.stem_pool,
        found.kwargs,
    ):
        raise UserError(f"architecture mismatch: expected {describe_arch(expected)}, found {describe_arch(found)} in {name}")


INPUT_KEYS = ("in_chans", "image_size", "mean", "std")  # what a backbone's metadata must say of its input


def load_backbone_files(target: str | Path, name: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load a backbone from a run folder, backbone folder or weights file; returns (model in eval mode, meta).

    Args:
        target: Folder holding ``backbone.safetensors`` + ``meta.json``, or a weights file
            with its metadata beside it.
        name: How the checkpoint is named in errors (default: ``target``).
    """
    name = name or str(target)
    weights, meta_path = resolve_backbone_files(target)
    meta = read_meta(meta_path)
    if meta.get("export_format") == "onnx":
        raise UserError(f"checkpoint {name} is an ONNX graph; load or import the checkpoint it was exported from")
    missing = [k for k in INPUT_KEYS if meta.get(k) is None]
    if missing:  # probe, embed and export all need the input the backbone expects
        raise UserError(
            f"checkpoint {name}: {meta_path} does not say {', '.join(missing)} (the input the backbone expects); add them to it"
        )
    spec = BackboneSpec.from_dict(meta["backbone"])
    # the hash is skipped only for a weights file that borrows its folder's meta.json written for another file
    borrowed = meta_path == weights.with_name(META) and not Path(target).expanduser().is_dir()
    skip = borrowed and weights.name != meta.get("weights_file", WEIGHTS)
    expected_sha = None if skip else meta.get("weights_sha256")
    if not expected_sha and not skip:
        print(f"warning: {meta_path} records no weights_sha256; {weights.name} is loaded unverified", file=sys.stderr, flush=True)
    state = load_state(weights, expected_sha, name)
    if meta.get("layout") == "timm":
        state = from_timm_layout(state, spec)
    return build_with_state(spec, state, name), meta


# --------------------------------------------------------------------------- plain-timm export


def stem_changes(spec: BackboneSpec, layout: str) -> list[tuple[str, str]]:
    """The ``(state key, code line)`` pairs that turn ``timm.create_model(...)`` into the saved backbone.

    ``layout`` ``"timm"``: weights keep timm's shapes, so only strides and the max-pool change;
    ``"native"``: a single-conv stem is replaced by a fresh 3x3 conv (weights loaded afterwards).
    timm's stem without its max-pool (``stem_pool`` false) changes no weights, only the pool.
    """
    if not spec.small_stem:
        return [] if spec.stem_pool else [("", "model.maxpool = torch.nn.Identity()")]
    plain = _plain_model(spec)
    conv1 = plain.get_submodule("conv1")
    lines: list[tuple[str, str]] = []
    if isinstance(conv1, nn.Conv2d):
        if layout == "native":
            bias = conv1.bias is not None
            lines.append(
                ("conv1.weight", f"model.conv1 = torch.nn.Conv2d({conv1.in_channels}, {conv1.out_channels}, 3, 1, 1, bias={bias})")
            )
        else:
            lines.append(("conv1.weight", "model.conv1.stride = (1, 1)"))
    else:
        first = next(n for n, m in conv1.named_modules() if isinstance(m, nn.Conv2d))
        access = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in first.split("."))
        lines.append((f"conv1.{first}.weight", f"model.conv1{access}.stride = (1, 1)"))
    lines.append(("", "model.maxpool = torch.nn.Identity()"))
    return lines


def stem_words(spec: BackboneSpec) -> str:
    """How the exported backbone's stem differs from timm's, in words."""
    return "small-image stem (stride-1 first conv, no max-pool)" if spec.small_stem else "timm's stem without its max-pool"


def _plain_model(spec: BackboneSpec) -> nn.Module:
    return build_from_spec(BackboneSpec(spec.timm_name, spec.kwargs, small_stem=False))


def to_timm_layout(state: dict[str, torch.Tensor], spec: BackboneSpec) -> dict[str, torch.Tensor]:
    """Turn a native state dict into one that stock ``timm.create_model`` loads strictly."""
    if not spec.small_stem:
        return dict(state)
    plain = _plain_model(spec)
    want = plain.state_dict()
    out = dict(state)
    for key, tensor in state.items():
        target = want.get(key)
        if target is None or target.shape == tensor.shape:
            continue
        conv = plain.get_submodule(key.rsplit(".", 1)[0])
        kh, kw = conv.kernel_size if isinstance(conv, nn.Conv2d) else (0, 0)  # only a stem conv changes shape
        sh, sw = tensor.shape[-2:]
        fits = (
            isinstance(conv, nn.Conv2d)
            and key.endswith(".weight")
            and tensor.ndim == 4
            and tensor.shape[:2] == target.shape[:2]
            and conv.dilation == (1, 1)
            and conv.padding == (kh // 2, kw // 2)
            and kh % 2 == 1
            and kw % 2 == 1
            and sh <= kh
            and sw <= kw
        )
        if not fits:
            raise UserError(
                f"{spec.timm_name}: cannot express {key} {tuple(tensor.shape)} in timm's layout {tuple(target.shape)}; export with --format torch"
            )
        ph, pw = (kh - sh) // 2, (kw - sw) // 2
        out[key] = F.pad(tensor, (pw, pw, ph, ph)).contiguous()
    return out


def from_timm_layout(state: dict[str, torch.Tensor], spec: BackboneSpec) -> dict[str, torch.Tensor]:
    """Undo :func:`to_timm_layout`: crop zero-padded stem kernels back to the backbone's shapes."""
    if not spec.small_stem:
        return state
    own = build_from_spec(spec).state_dict()
    out = dict(state)
    for key, tensor in state.items():
        target = own.get(key)
        if target is None or target.shape == tensor.shape or tensor.ndim != 4 or tensor.shape[:2] != target.shape[:2]:
            continue
        th, tw = target.shape[-2:]
        ph, pw = (tensor.shape[-2] - th) // 2, (tensor.shape[-1] - tw) // 2
        if ph >= 0 and pw >= 0:
            out[key] = tensor[..., ph : ph + th, pw : pw + tw].contiguous()
    return out


def load_snippet(meta: dict[str, Any], path: str | Path, fmt: str) -> str:
    """Python code that loads an exported file in plain timm/torch (no ssl_toolkit), as ``model``."""
    spec = BackboneSpec.from_dict(meta["backbone"])
    path_s = str(Path(path).resolve())
    kwargs = "".join(f", {k}={v!r}" for k, v in spec.kwargs.items())
    size = int(meta["image_size"])
    mean = tuple(round(float(x), 6) for x in meta["mean"])
    std = tuple(round(float(x), 6) for x in meta["std"])
    lines = ["import timm", "import torch"]
    if fmt == "timm":
        overlay = (
            f"dict(file={path_s!r}, num_classes=0, input_size=({int(meta['in_chans'])}, {size}, {size}), mean={mean}, std={std}, "
            "crop_pct=1.0, interpolation='bilinear')"  # the centre square, resized bilinearly (timm's defaults would crop inside it)
        )
        lines.append(f"model = timm.create_model({spec.timm_name!r}, pretrained=True, pretrained_cfg_overlay={overlay}{kwargs})")
        changes = stem_changes(spec, "timm")
        if changes:
            lines.append(f"# {stem_words(spec)}, as in training")
            lines += [code for _, code in changes]
    else:
        if fmt == "safetensors":
            lines.append("from safetensors.torch import load_file")
            load = f"load_file({path_s!r})"
        else:
            load = f"torch.load({path_s!r}, map_location='cpu', weights_only=True)"
        lines.append(f"model = timm.create_model({spec.timm_name!r}, pretrained=False{kwargs})")
        changes = stem_changes(spec, "native")
        if changes:
            lines.append(f"# {stem_words(spec)}, as in training")
            lines += [code for _, code in changes]
        lines.append(f"model.load_state_dict({load})")
    lines.append("model.eval()")
    lines += input_notes(meta)
    return "\n".join(lines) + "\n"


def input_notes(meta: dict[str, Any]) -> list[str]:
    """Comment lines that say how the exported backbone's inputs were made from images (every export format)."""
    size, chans = int(meta["image_size"]), int(meta["in_chans"])
    mean = tuple(round(float(x), 6) for x in meta["mean"])
    std = tuple(round(float(x), 6) for x in meta["std"])
    notes = [
        f"# images: the largest centred square (after the EXIF orientation), resized to {size} x {size} as PIL does it:",
        f"#   im.resize(({size}, {size}), Image.BILINEAR, box=square, reducing_gap=2.0)",
        "#   (a JPEG whose square is at least twice that side is first decoded at libjpeg's 1/2, 1/4 or 1/8 scale: im.draft)",
    ]
    from ssl_toolkit.data.processing import Processing

    proc = meta.get("processing") or {}
    steps = Processing(**proc).recipe() if proc else []
    if steps and chans == 3:  # the gray expansion comes first
        notes.append("# a gray image goes in as R = G = B")
    if steps:
        notes.append(f"# then, before normalising, the [0, 1] pixels x (B, 3, H, W) were processed as in training ({proc}):")
        notes += [f"#   {line}" for line in steps]
    transform = meta.get("input_transform")
    if transform == "lab_l":
        notes.append(
            "# the backbone sees the CIE Lab lightness of the sRGB pixels, L / 100 in [0, 1] (D65 white; a gray image as R = G = B),"
        )
        notes.append("#   e.g. kornia.color.rgb_to_lab(rgb)[:, :1] / 100, not the pixels themselves; that is what mean and std normalise")
    elif transform:
        notes.append(f"# the backbone sees the input transform {transform!r} of the pixels (ssl_toolkit.pretext.base.INPUT_TRANSFORMS)")
    elif chans == 1:
        notes.append(f"# an RGB image goes in as its luma, {LUMA[0]} R + {LUMA[1]} G + {LUMA[2]} B")
    elif not steps:
        notes.append("# a gray image goes in as R = G = B")
    notes.append(f"# inputs: {chans} x {size} x {size}, pixels in [0, 1] normalised with mean={mean}, std={std}")
    return notes


def export_files(model: nn.Module, meta: dict[str, Any], out: str | Path, fmt: str) -> dict[str, Any]:
    """Write ``model`` as ``fmt`` to ``out`` (atomically) plus ``<out>.json`` metadata; returns that metadata."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    from ssl_toolkit.outputs import refuse_empty

    refuse_empty(out, "--out")
    out = Path(out).expanduser()
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file path, e.g. {out / 'backbone.safetensors'}")
    if fmt == "safetensors" and out.suffix != ".safetensors":
        raise UserError(f"--out {out}: a safetensors export needs a .safetensors file name")
    if fmt == "torch" and out.suffix == ".safetensors":
        raise UserError(f"--out {out}: a torch export is a pickled state_dict; name it e.g. {out.with_suffix('.pt').name}")
    spec = BackboneSpec.from_dict(meta["backbone"])
    state = state_to_cpu(model)
    layout = "native"
    if fmt == "timm":
        state, layout = to_timm_layout(state, spec), "timm"
    if out.suffix == ".safetensors":
        data = st_save(state)
    else:
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
    keep = {k: v for k, v in meta.items() if k not in ("weights_file", "weights_sha256", "weights_bytes", "layout", "export_format")}
    new_meta = {
        **keep,
        "export_format": fmt,
        "layout": layout,
        "weights_file": out.name,
        "weights_sha256": sha256_bytes(data),
        "weights_bytes": len(data),
    }
    write_with_sidecar(out, data, new_meta)
    return new_meta
