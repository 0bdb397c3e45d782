"""``probe()``: carry a backbone to supervised classification and score it.

Loads the backbone (run folder, backbone file, or a random-init baseline), loads labelled
data at the backbone's image size, takes the label fraction, runs the evaluator named by
``mode``, and writes ``probes/<mode>-<fraction>.json`` into the run folder.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ssl_toolkit.atomic import atomic_write_json
from ssl_toolkit.backbones import create_backbone
from ssl_toolkit.config import BackboneConfig, ProbeConfig, validate
from ssl_toolkit.data.sources import DataSource, load_source
from ssl_toolkit.errors import UserError
from ssl_toolkit.evaluators import EVALUATORS, EvalContext
from ssl_toolkit.eval.features import Preprocess
from ssl_toolkit.eval.metrics import classification_report


def label_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Stratified, seeded subset: ``max(1, round(n_c * fraction))`` indices of each class ``c``, sorted."""
    if fraction >= 1.0:
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().view(-1)
        n = max(1, int(round(len(idx) * fraction)))
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    return torch.cat(keep).sort().values


def load_target(target: str | Path | None, random_init: bool, backbone: BackboneConfig, cfg: ProbeConfig) -> tuple[torch.nn.Module, dict[str, Any], Path | None]:
    """The backbone to evaluate, its metadata, and the run folder to write results into (if any)."""
    if random_init:
        torch.manual_seed(cfg.seed)
        probe_source = load_source(cfg.data)
        model, spec = create_backbone(backbone, probe_source.channels, probe_source.image_size)
        meta = {
            "task": "random-init",
            "backbone": spec.to_dict(),
            "in_chans": probe_source.channels,
            "image_size": probe_source.image_size,
            "mean": list(probe_source.mean),
            "std": list(probe_source.std),
        }
        return model.eval(), meta, None
    if target is None:
        raise UserError("probe needs a TARGET (run folder, backbone file or library name) or --random-init")
    from ssl_toolkit.library import load_backbone_any

    model, meta, folder = load_backbone_any(target)
    return model, meta, folder


def probe(
    target: str | Path | None = None,
    config: ProbeConfig | dict[str, Any] | None = None,
    random_init: bool = False,
    backbone: str | BackboneConfig | dict[str, Any] = "resnet18",
) -> dict[str, Any]:
    """Evaluate a backbone on labelled data.

    Args:
        target: Run folder, backbone file or checkpoint-library name.
        config: A :class:`ProbeConfig` or a dict of its fields.
        random_init: Evaluate an untrained ``backbone`` instead (the baseline).
        backbone: The untrained backbone for ``random_init``: a timm name, or a
            :class:`BackboneConfig` (or dict of its fields) to choose the stem as a
            pretraining config does.

    Returns:
        The result: ``mode``, ``label_fraction``, ``top1``, ``top5``, ``per_class_acc``,
        ``confusion``, ``n_train``, ``n_test``, ``seconds`` and evaluator facts.
    """
    cfg = config if isinstance(config, ProbeConfig) else validate(ProbeConfig, dict(config or {}))
    evaluator = EVALUATORS.get(cfg.mode)(cfg)  # validates the evaluator's own settings
    start = time.time()
    if isinstance(backbone, str):
        backbone = BackboneConfig(name=backbone)
    elif not isinstance(backbone, BackboneConfig):
        backbone = validate(BackboneConfig, dict(backbone))
    model, meta, run_folder = load_target(target, random_init, backbone, cfg)
    data_cfg = cfg.data.model_copy(update={"image_size": meta["image_size"]})
    source: DataSource = load_source(data_cfg)
    if not source.labelled:
        raise UserError(f"probe needs labelled data; {source.name} has no classes")
    if len(source.test) == 0:
        raise UserError(f"probe needs a test split; {source.name} has none")
    pre = Preprocess.from_meta(meta)
    train_idx = label_subset(source.train.labels, cfg.label_fraction, cfg.seed)
    ctx = EvalContext(model=model, meta=meta, source=source, pre=pre, train_idx=train_idx, cfg=cfg)
    scores, facts = evaluator.evaluate(ctx)
    report = classification_report(scores.float(), source.test.labels, source.num_classes)
    result = {
        "mode": cfg.mode,
        "label_fraction": cfg.label_fraction,
        **report,
        "n_train": int(len(train_idx)),
        "n_test": len(source.test),
        "num_classes": source.num_classes,
        "classes": source.classes,
        "dataset": source.name,
        "backbone": meta["backbone"]["timm_name"],
        "small_stem": bool(meta["backbone"].get("small_stem")),
        "task": meta.get("task"),
        "random_init": random_init,
        **facts,
        "seconds": round(time.time() - start, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if run_folder is not None:
        record_probe(run_folder, result)
    return result


def record_probe(folder: Path, result: dict[str, Any]) -> None:
    """Write ``probes/<mode>-<fraction>.json`` and add a summary to the folder's ``meta.json``.

    The summary also reaches the twin of the folder: the library entry of a run folder
    (``library_name`` in its metadata), or the run folder of a library entry. Library
    entries keep only ``backbone.safetensors`` + ``meta.json``, so they get the summary only.
    """
    from ssl_toolkit.library import is_library_entry, record_probe_summary

    name = f"{result['mode']}-{result['label_fraction']:g}"
    if not is_library_entry(folder):
        atomic_write_json(folder / "probes" / f"{name}.json", result)
    summary = {k: result[k] for k in ("mode", "label_fraction", "top1", "top5", "n_train", "n_test", "dataset", "created")}
    record_probe_summary(folder, name, summary)
