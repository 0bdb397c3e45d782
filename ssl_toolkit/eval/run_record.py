"""What a run folder records for its report: training curves, probe results, sample pictures.

A damaged file raises :class:`UnreadableFile` (the report leaves that part out with a
warning); a missing one is simply absent; a damaged probe result is replaced by its summary
in ``meta.json``, with a warning.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ssl_toolkit.html_page import data_uri

CURVE_COLUMNS = ("loss_step", "loss_epoch", "pretext_acc", "online_top1", "online_train_top1")
EPOCH_IN_NAME = re.compile(r"epoch[-_]?(\d+)", re.IGNORECASE)
PAGE_IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}


class UnreadableFile(Exception):
    """A file of the run folder exists but cannot be read as what it should be (the message says why)."""


def read_curves(path: Path) -> dict[str, tuple[list[float], list[float]]]:
    """Series of Lightning's ``metrics.csv``: losses against the step, epoch metrics against the epoch (1-based).

    Cells that are not finite numbers are skipped; a missing file gives no series.

    Raises:
        UnreadableFile: The file is not UTF-8 CSV text (or cannot be read at all).
    """
    try:
        return _read_curves(path) if path.is_file() else {}
    except UnicodeDecodeError as e:
        raise UnreadableFile(f"not UTF-8 text: byte {e.start}") from None
    except (OSError, csv.Error) as e:
        raise UnreadableFile(str(e)) from None


def _read_curves(path: Path) -> dict[str, tuple[list[float], list[float]]]:
    series: dict[str, tuple[list[float], list[float]]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            for col in CURVE_COLUMNS:
                value = _number(row.get(col))
                if value is None:
                    continue
                if col.startswith("loss"):
                    x = _number(row.get("step"))
                else:
                    epoch = _number(row.get("epoch"))
                    x = None if epoch is None else epoch + 1
                if x is None:
                    continue
                xs, ys = series.setdefault(col, ([], []))
                xs.append(x)
                ys.append(value)
    return series


def _number(text: str | list[str] | None) -> float | None:
    if not isinstance(text, str):  # a row longer than the header puts a list under the key None
        return None
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


class ProbeRecord(BaseModel):
    """The fields of a probe result (``probes/*.json`` or a ``meta.json`` summary) that the report reads; others pass through."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    mode: str | None = None
    label_fraction: float | None = None
    target_kind: str | None = None
    dataset: str | None = None
    created: str | None = None
    top1: float | None = None
    top5: float | None = None
    roc_auc: float | None = None
    f1: float | None = None
    mAP: float | None = None
    macro_f1: float | None = None
    n_train: int | None = None
    n_test: int | None = None
    seed: int | None = None
    settings: dict[str, str | int | float | bool | None] | None = None
    top1_by_k: dict[str, float | None] | None = None
    per_class_ap: list[float | None] | None = None
    classes: list[str] | None = None
    confusion: list[list[int]] | None = None

    @model_validator(mode="after")
    def _square_confusion(self) -> ProbeRecord:
        rows = self.confusion
        if rows is not None and (any(len(r) != len(rows) for r in rows) or (self.classes is not None and len(self.classes) != len(rows))):
            raise ValueError("confusion is not a square matrix with a row per class")
        return self


def _probe_record(r: Any) -> dict[str, Any]:
    """``r`` checked as a probe result (:class:`ProbeRecord`, with ``top1``).

    Raises:
        UnreadableFile: It is not one (the message says why).
    """
    if not isinstance(r, dict) or "top1" not in r:
        raise UnreadableFile("not a probe result (no top1)")
    try:
        return ProbeRecord.model_validate(r).model_dump(exclude_unset=True)
    except ValidationError as e:
        err = e.errors()[0]
        raise UnreadableFile(f"{'.'.join(map(str, err['loc'])) or 'the result'}: {err['msg'].removeprefix('Value error, ')}") from None


def read_probes(folder: Path | None, meta: dict[str, Any], warn: Callable[[str], None]) -> list[dict[str, Any]]:
    """Probe results of a backbone: per probe its ``probes/*.json`` (full), else its summary in the metadata.

    Only the probes the metadata lists are read: a file whose summary the metadata no longer
    holds is a probe of the backbone before a resume trained it further (the resumed run's
    ``meta.json`` starts its probes afresh). A file that is not valid JSON, or whose fields
    have the wrong types (:class:`ProbeRecord`), is replaced by its summary, and ``warn``
    says so; a summary that is not a probe result is left out with a warning.
    """
    results = []
    for key, summary in sorted((meta.get("probes") or {}).items()):
        path = None if folder is None or Path(key).name != key else folder / "probes" / f"{key}.json"  # a key is a file name
        try:
            if path is not None and path.is_file():
                try:
                    text = path.read_text()
                    results.append(_probe_record(json.loads(text)))
                    continue
                except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, UnreadableFile) as e:
                    why = f"not UTF-8 text: byte {e.start}" if isinstance(e, UnicodeDecodeError) else str(e).splitlines()[0][:200]
                    warn(f"{path} cannot be read as a probe result ({why}): the report shows its summary in meta.json")
            results.append(_probe_record(summary))
        except UnreadableFile as e:
            warn(f"the probe {key} in meta.json is left out of the report ({e})")
    return sorted(results, key=lambda r: (str(r.get("mode")), -float(r.get("label_fraction") or 0)))


def pick_confusion(probes: list[dict[str, Any]], dataset: str) -> dict[str, Any] | None:
    """The linear probe with a confusion matrix, preferring this dataset and the most labels."""
    linear = [p for p in probes if p.get("mode") == "linear" and p.get("confusion") and p.get("classes")]
    if not linear:
        return None
    return max(linear, key=lambda p: (p.get("dataset") == dataset, float(p.get("label_fraction") or 0)))


def latest_samples(folder: Path | None) -> tuple[int | None, list[Path]]:
    """The sample pictures of the latest epoch in ``<run>/samples`` (by the epoch number in the name, else the newest file)."""
    if folder is None or not (folder / "samples").is_dir():
        return None, []
    files = sorted((folder / "samples").glob("*.png"))
    if not files:
        return None, []
    numbered = {p: int(m.group(1)) for p in files if (m := EPOCH_IN_NAME.search(p.stem))}
    if numbered:
        last = max(numbered.values())
        return last, [p for p in files if numbered.get(p) == last]
    return None, [max(files, key=lambda p: p.stat().st_mtime)]


def sample_picture(path: Path, max_width: int = 1100) -> dict[str, Any]:
    """A saved sample grid for the page: its bytes as a data URI and a display width (small grids scaled up to 4x).

    Raises:
        UnreadableFile: The bytes do not decode as a PNG, JPEG, GIF or WebP image.
    """
    import io

    from PIL import Image

    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            kind, width = im.format, int(im.width)
            im.load()  # decodes every pixel: a truncated or corrupt file fails here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableFile(f"not a readable image ({type(e).__name__}: {e})") from None
    if kind not in PAGE_IMAGE_TYPES:
        raise UnreadableFile(f"a {kind} image, which browsers do not show")
    scale = max(1, min(4, max_width // max(width, 1)))
    return {"src": data_uri(data, PAGE_IMAGE_TYPES[kind]), "name": path.name, "width": min(width * scale, max_width)}
