"""Dataset inspection: facts, label balance, duplicates, leakage and unreadable files.

``inspect_data("fashion-mnist")`` builds a per-image table (:mod:`.table`), derives the
basic facts (:mod:`.facts`) and the duplicate groups (:mod:`.duplicates`), and returns
one JSON-able report. :func:`render_html` (:mod:`.html`) turns a report and its table into a
self-contained HTML page; :func:`format_summary` (:mod:`.summary`) into terminal text.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssl_toolkit.api import public
from ssl_toolkit.config import validate
from ssl_toolkit.data.folder import empty_classes_line
from ssl_toolkit.data.layout import shown
from ssl_toolkit.errors import UserError
from ssl_toolkit.inspection import duplicates as dup
from ssl_toolkit.inspection import facts
from ssl_toolkit.inspection.config import InspectConfig
from ssl_toolkit.inspection.table import ImageTable, StageProgress, table_from_folder, table_from_shards, table_from_source


@dataclass
class Inspection:
    """A finished inspection: the JSON-able ``report`` and the per-image ``table`` it was built from."""

    report: dict[str, Any]
    table: ImageTable
    groups: dict[str, list[np.ndarray]]
    pictures: dict[str, bytes] = field(default_factory=dict)  # before / after processing strips (PNG)


def build_table(cfg: InspectConfig, keep_arrays: bool = False, progress: StageProgress | None = None) -> ImageTable:
    """The per-image table of ``cfg.data``: a registered tensor source, shards or an image folder."""
    from ssl_toolkit.data.processing import Processing
    from ssl_toolkit.data.sources import SOURCES, is_shard_dir, load_source, refuse_unread_settings

    if cfg.data.name not in SOURCES and is_shard_dir(cfg.data.name):
        refuse_unread_settings(cfg.data, "shards")
        return table_from_shards(cfg.data.name, cfg.data, keep_arrays=keep_arrays, workers=cfg.workers, progress=progress)
    if cfg.data.name not in SOURCES:
        path = Path(cfg.data.name).expanduser()
        if path.is_dir():
            refuse_unread_settings(cfg.data, "an image folder")
            return table_from_folder(path, cfg.data, keep_arrays=keep_arrays, workers=cfg.workers, progress=progress)
        load_source(cfg.data)  # raises the usual one-line error for unknown names and bad paths
    if progress is not None:
        progress("loading", 0, 1)
    source = load_source(cfg.data)
    if progress is not None:
        progress("loading", 1, 1)
    Processing.from_config(cfg.data).check(source.channels, source.name, source.image_size)  # refused before hashing
    return table_from_source(source, progress=progress)


def _load_embedder(target: str | Path, cfg: InspectConfig):
    from ssl_toolkit.eval.features import Preprocess
    from ssl_toolkit.library import load_backbone_any

    model, meta, _ = load_backbone_any(target)
    try:
        pre = Preprocess.from_meta(meta)
        size = int(meta["image_size"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{target}: backbone metadata lacks in_chans / image_size / mean / std") from None
    return model, pre, size


def _embeddings(table: ImageTable, model, pre, progress: StageProgress | None):
    """Features of every table row (cached like the evaluators' features)."""
    import torch

    from ssl_toolkit.eval.features import FeatureCache

    source = table.to_source()
    cache = FeatureCache()
    if progress is not None:
        progress("embedding", 0, 2)
    parts = {}
    for k, split in enumerate(("train", "test")):
        parts[split] = cache.get(model, source, split, pre) if len(getattr(source, split)) else None
        if progress is not None:
            progress("embedding", k + 1, 2)
    dim = next(p.shape[1] for p in parts.values() if p is not None)
    feats = torch.zeros(len(table), dim)
    for s, split in enumerate(("train", "test")):
        part = parts[split]
        if part is not None:
            feats[torch.from_numpy(np.flatnonzero(table.split == s))] = part
    return feats


def _group_scores(groups: list[np.ndarray], i: np.ndarray, j: np.ndarray, v: np.ndarray, key: str, worst) -> list[dict]:
    """Per group, the weakest pair score inside it (largest Hamming distance, smallest cosine)."""
    where: dict[int, int] = {}
    for g_idx, g in enumerate(groups):
        for m in g.tolist():
            where[m] = g_idx
    scores: list[list] = [[] for _ in groups]
    for a, b, s in zip(i.tolist(), j.tolist(), v.tolist()):
        group = where.get(a)
        if group is not None and where.get(b) == group:
            scores[group].append(s)
    cast = int if key == "max_hamming" else (lambda v: round(float(v), 4))
    return [{key: (cast(worst(s)) if s else None)} for s in scores]


def _duplicate_section(table: ImageTable, groups: list[np.ndarray], scores: list[dict] | None = None, **settings: Any) -> dict[str, Any]:
    described = [dup.describe_group(table, g, scores[k] if scores else None) for k, g in enumerate(groups)]
    leaks = [d for d in described if d["crosses_split"]]
    return {
        **settings,
        "groups": described,
        "num_groups": len(described),
        "images": int(sum(d["size"] for d in described)),
        "redundant": int(sum(d["size"] - 1 for d in described)),
        "leak_groups": len(leaks),
        "leaked_test_images": int(sum(sum(1 for m in d["members"] if m["split"] == "test") for d in leaks)),
    }


def inspect_config(data: str | Path | InspectConfig | dict[str, Any]) -> InspectConfig:
    """The :class:`InspectConfig` of ``data``: itself, a dict of its fields, a YAML file of them (as ``--config``), or a dataset name or folder."""
    if isinstance(data, InspectConfig):
        return data
    if isinstance(data, dict):
        return validate(InspectConfig, data)
    if Path(data).suffix.lower() in (".yaml", ".yml") and Path(data).expanduser().is_file():
        from ssl_toolkit.api import config_fields

        return validate(InspectConfig, config_fields(Path(data).expanduser()), what=str(data))
    return InspectConfig.model_validate({"data": {"name": str(data)}})


def run_inspection(
    data: str | Path | InspectConfig | dict[str, Any] = "digits",
    embed: str | Path | None = None,
    progress: StageProgress | None = None,
) -> Inspection:
    """Inspect ``data`` and return the report with its table (see :func:`inspect_data`)."""
    start = time.time()
    cfg = inspect_config(data)
    embedder = None
    if embed is not None:
        model, pre, size = _load_embedder(embed, cfg)
        embedder = (model, pre)
        if cfg.data.image_size not in (None, size):
            raise UserError(f"--embed {embed} needs {size}px images; drop data.image_size={cfg.data.image_size}")
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"image_size": size})})
    table = build_table(cfg, keep_arrays=embed is not None, progress=progress)

    exact = dup.exact_groups(table)
    ni, nj, nd = dup.near_pairs(table, cfg.near_hamming, cfg.near_tolerance, progress=progress)
    near = dup.groups_from_pairs(table, ni, nj)
    groups = {"exact": exact, "near": near}
    sections = {
        "exact": _duplicate_section(table, exact),
        "near": _duplicate_section(
            table,
            near,
            _group_scores(near, ni, nj, nd, "max_hamming", max),
            max_hamming=cfg.near_hamming,
            tolerance=cfg.near_tolerance,
            pairs=len(ni),
        ),
        "embedding": None,
    }
    if embedder is not None:
        feats = _embeddings(table, *embedder, progress)
        ei, ej, es = dup.embedding_pairs(feats, table.exact_key, cfg.embed_threshold, progress=progress)
        emb = dup.groups_from_pairs(table, ei, ej)
        groups["embedding"] = emb
        sections["embedding"] = _duplicate_section(
            table,
            emb,
            _group_scores(emb, ei, ej, es, "min_cosine", min),
            backbone=str(embed),
            threshold=cfg.embed_threshold,
            pairs=len(ei),
        )

    labels = facts.label_facts(table, cfg.max_imbalance)
    report: dict[str, Any] = {
        "data": table.name,
        "kind": table.kind,
        "images": facts.count_facts(table),
        "sizes": facts.size_facts(table),
        "modes": facts.mode_facts(table),
        "formats": facts.format_facts(table),
        "file_sizes": facts.file_size_facts(table),
        "normalisation": {"channels": table.channels, "image_size": table.image_size, "mean": list(table.mean), "std": list(table.std)},
        "labels": labels,
        "duplicates": sections,
        "unreadable": [{"path": shown(p), "reason": shown(r)} for p, r in table.unreadable],
        "unused": _unused_section(table),
        "empty_classes": [shown(c) for c in table.empty_classes],
        "settings": cfg.model_dump(),
    }
    report["processing"], pictures = _processing(cfg)
    report["warnings"] = _warnings(report)
    report["seconds"] = round(time.time() - start, 3)
    return Inspection(report, table, groups, pictures)


def _unused_section(table: ImageTable) -> dict[str, Any] | None:
    """What a folder's layout does not read: images (counts, a few named) and other files by extension."""
    u = table.unused
    if u is None:
        return None
    return {
        "images": u.images,
        "top_level": u.top_level,
        "nested": u.nested,
        "examples": [shown(p) for p in u.examples],
        "other_files": {shown(ext): n for ext, n in sorted(u.other.items())},
        "other_image_files": u.other_images(),
    }


def _processing(cfg: InspectConfig) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Per-channel histograms before/after ``data.color_space``/``equalize`` (:mod:`.processing`), on a sample."""
    from ssl_toolkit.data.folder import load_folder
    from ssl_toolkit.data.processing import Processing
    from ssl_toolkit.data.sources import SOURCES, is_shard_dir, load_source
    from ssl_toolkit.inspection.processing import processing_section

    path = Path(cfg.data.name).expanduser()
    if cfg.data.name not in SOURCES and path.is_dir() and not is_shard_dir(cfg.data.name):  # a folder: decode the sample only
        source = load_folder(path, cfg.data.model_copy(update={"stream": True}), warn_unused=False)  # the report lists what is not used
    else:
        source = load_source(cfg.data)
    return processing_section(source, Processing.from_config(cfg.data))


def _warnings(report: dict[str, Any]) -> list[str]:
    out = []
    if report["unreadable"]:
        out.append(f"{len(report['unreadable'])} unreadable file(s) (skipped by pretraining and evaluation)")
    if report["empty_classes"]:
        out.append(empty_classes_line(report["empty_classes"]))
    unused = report["unused"]
    if unused and unused["images"]:
        where = [f"{n} {what}" for n, what in ((unused["top_level"], "at the top level"), (unused["nested"], "in nested folders")) if n]
        out.append(f"{unused['images']} image(s) not used by the folder's layout ({', '.join(where)}; see docs/data.md)")
    if unused and unused["other_image_files"]:
        counts = ", ".join(f"{ext} {n}" for ext, n in unused["other_image_files"].items())
        out.append(f"{sum(unused['other_image_files'].values())} file(s) of image types the toolkit does not read ({counts})")
    if report["images"]["train"] and not report["images"]["test"]:
        out.append("no test images: `ssl probe` needs a test split, and pretraining has no online probe")
    if report["labels"]:
        out += report["labels"]["warnings"]
    mixed = sum(1 for g in report["duplicates"]["exact"]["groups"] if g.get("mixed_labels"))
    if mixed:
        what = "with different label sets" if report["labels"] and report["labels"]["multilabel"] else "in several classes"
        out.append(f"labels: {mixed} exact-duplicate group(s) carry different labels (the same image {what})")
    for kind, what in (("exact", "exact-duplicate"), ("near", "near-duplicate"), ("embedding", "embedding-neighbour")):
        sec = report["duplicates"][kind]
        if sec and sec["leak_groups"]:
            out.append(
                f"train/test leakage: {sec['leak_groups']} {what} group(s) span both splits ({sec['leaked_test_images']} test images)"
            )
    if report["modes"]["mixed"]:
        out.append(
            "mixed colour modes: "
            + ", ".join(f"{m} {c}" for m, c in report["modes"]["modes"].items())
            + f" (the toolkit converts all to {'L' if report['normalisation']['channels'] == 1 else 'RGB'})"
        )
    return out


@public
def inspect_data(
    data: str | Path | InspectConfig | dict[str, Any] = "digits",
    embed: str | Path | None = None,
    out: str | Path | None = None,
    dedupe_list: str | Path | None = None,
    progress: StageProgress | None = None,
) -> dict[str, Any]:
    """Inspect a data source: facts, labels, duplicates, leakage, unreadable files.

    Args:
        data: A dataset name or folder path, an :class:`InspectConfig` (or a dict of its fields), or a YAML file of its fields (``.yaml``/``.yml``, as ``--config``).
        embed: A backbone (run folder, weights file or library name) for embedding neighbours.
        out: Write a self-contained HTML page here.
        dedupe_list: Write the ids (file paths for folders) to drop, one per line, keeping one per group.
        progress: Called as ``progress(stage, done, total)``.

    Returns:
        The JSON-able report (see ``docs/inspect.md``).
    """
    from ssl_toolkit.data.input_guard import refuse_data_files
    from ssl_toolkit.html_page import check_page_suffix
    from ssl_toolkit.run_folder import check_output_file

    cfg = inspect_config(data)
    for option, path in (("--out", out), ("--dedupe-list", dedupe_list)):
        if path is not None:
            check_output_file(path, option)
    if out is not None:
        check_page_suffix(out)
    if (
        out is not None
        and dedupe_list is not None
        and os.path.realpath(Path(out).expanduser()) == os.path.realpath(Path(dedupe_list).expanduser())
    ):
        raise UserError(f"--out and --dedupe-list are the same file ({out}); give each its own")
    refuse_data_files(cfg.data, {"--out": out, "--dedupe-list": dedupe_list})
    result = run_inspection(cfg, embed=embed, progress=progress)
    if dedupe_list is not None:
        write_dedupe_list(result, dedupe_list)
    if out is not None:
        from ssl_toolkit.inspection.html import write_html

        write_html(result, out, progress=progress)
        result.report["html"] = str(out)
    return result.report


def write_dedupe_list(result: Inspection, path: str | Path) -> list[str]:
    """Write the ids to drop (all duplicate kinds found, one kept per group), one per line; returns them.

    A path with a newline in its name is left out (one line per path is what ``xargs -d '\\n'``
    reads) and named in ``report["dedupe"]["left_out"]``.
    """
    from ssl_toolkit.atomic import atomic_write_bytes

    all_groups = [g for gs in result.groups.values() for g in gs]
    drops = dup.dedupe_drops(result.table, all_groups)
    left_out = [d for d in drops if "\n" in d]
    drops = [d for d in drops if "\n" not in d]
    atomic_write_bytes(Path(path), ("".join(d + "\n" for d in drops)).encode("utf-8", "surrogateescape"))
    result.report["dedupe"] = {"path": str(path), "drop": len(drops), "left_out": [shown(d) for d in left_out]}
    return drops


__all__ = ["InspectConfig", "Inspection", "inspect_data", "run_inspection", "write_dedupe_list"]
