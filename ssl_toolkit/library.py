"""The checkpoint library: ``$SSL_TOOLKIT_HOME/checkpoints/<name>/`` holding ``backbone.safetensors`` + ``meta.json``.

Every finished ``ssl pretrain`` registers its backbone here, so later commands can name it
instead of pointing at a run folder. An entry is written completely into a hidden temp
folder and then renamed into place: a crash never leaves a half-written entry, and since
renaming onto a non-empty folder fails, two runs finishing at once both land (the later
one under a ``-2`` suffix). Probe results are appended to the entry's ``meta.json``; the
weights hash covers the weights file only, so appending never invalidates it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssl_toolkit.atomic import atomic_write_json
from ssl_toolkit.backbone_files import META, WEIGHTS, read_meta, sha256_bytes
from ssl_toolkit.errors import UserError, did_you_mean
from ssl_toolkit.settings import toolkit_home

if TYPE_CHECKING:
    from torch import nn

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
STALE_SECONDS = 3600  # hidden temp folders older than this are leftovers of a crash


def library_root() -> Path:
    """``$SSL_TOOLKIT_HOME/checkpoints``."""
    return toolkit_home() / "checkpoints"


def refuse_inside_library(path: str | Path, what: str, own: str) -> None:
    """Refuse an output ``path`` (a file or a run folder) in the library: its entries are written and removed by ``ssl checkpoints`` only.

    Args:
        path: The output.
        what: The option that gave it (``--out``).
        own: What to write instead, for the message (``a folder of your own``).
    """
    root = library_root().resolve()
    target = Path(path).expanduser().resolve()
    if target == root or root in target.parents:
        raise UserError(f"{what} {path} is inside the checkpoint library ({root}); write to {own}")


def check_library_writable() -> None:
    """Refuse a library folder that cannot be written (e.g. ``SSL_TOOLKIT_HOME`` names a file), before training."""
    from ssl_toolkit.outputs import check_writable_dir

    check_writable_dir(library_root(), "checkpoint library (SSL_TOOLKIT_HOME)")


def check_name(name: str) -> str:
    """``name`` if it is a valid entry name (letters, digits, ``._+-``, starting with a letter or digit), else a UserError."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UserError(
            f"invalid checkpoint name '{name}': use ASCII letters, digits, '.', '_', '+' or '-', starting with a letter or digit (at most 128)"
        )
    return name


def entry_dir(name: str) -> Path:
    return library_root() / check_name(name)


def is_library_entry(folder: str | Path) -> bool:
    """Whether ``folder`` is an entry of the library."""
    try:
        return Path(folder).resolve().parent == library_root().resolve()
    except OSError:
        return False


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.") or "x"


def default_name(meta: dict[str, Any]) -> str:
    """``<task>-<backbone>-<dataset>-<YYYYMMDD>``, e.g. ``rotation-resnet18-digits-20260127``."""
    data = str((meta.get("dataset") or {}).get("name", "data"))
    parts = [str(meta.get("task", "backbone")), meta["backbone"]["timm_name"], Path(data).name or data, datetime.now().strftime("%Y%m%d")]
    return _slug("-".join(_slug(p) for p in parts))[:120]


def _case_twin(root: Path, name: str) -> str | None:
    """An entry whose name differs from ``name`` only in case: the two would be one folder on a case-insensitive filesystem."""
    low = name.casefold()
    try:
        return next((p.name for p in root.iterdir() if p.name != name and p.name.casefold() == low and not p.name.startswith(".")), None)
    except OSError:
        return None


def name_taken(name: str) -> str | None:
    """The entry that ``name`` would collide with (itself, or a name differing only in case), else ``None``."""
    return name if entry_dir(name).exists() else _case_twin(library_root(), name)


# --------------------------------------------------------------------------- writing entries


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.filename is None:  # a write's error (a full disk) names no file
            e.filename = str(path)
        raise


def _clean_stale(root: Path) -> None:
    now = time.time()
    for p in root.glob(".*"):
        with contextlib.suppress(OSError):
            if p.is_dir() and now - p.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(p, ignore_errors=True)


def register(weights: bytes, meta: dict[str, Any], name: str | None = None, unique: bool = True) -> dict[str, Any]:
    """Add a backbone to the library atomically; returns the entry's metadata (with ``name``).

    Args:
        weights: The bytes of a safetensors weights file (native layout).
        meta: Its metadata; ``weights_sha256`` is recomputed from ``weights``.
        name: Entry name (default :func:`default_name`).
        unique: When the name is taken, use ``NAME-2``, ``NAME-3``, ... instead of failing.
    """
    base = check_name(name) if name else default_name(meta)
    root = library_root()
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale(root)
    keep = {k: v for k, v in meta.items() if k not in ("library_name", "export_format", "layout")}
    entry = {**keep, "name": base, "weights_file": WEIGHTS, "weights_sha256": sha256_bytes(weights), "weights_bytes": len(weights)}
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{base[:40]}-", dir=root))
    try:
        _write_file(tmp / WEIGHTS, weights)
        taken = base
        for attempt in range(1, 1000):
            candidate = base if attempt == 1 else f"{base[: 128 - len(f'-{attempt}')]}-{attempt}"  # within NAME_RE's 128
            if attempt > 1 and not unique:
                raise UserError(f"checkpoint '{taken}' already exists; choose another --name or `ssl checkpoints remove {taken}` first")
            entry["name"] = candidate
            _write_file(tmp / META, (json.dumps(entry, indent=2, default=str) + "\n").encode())
            final = root / candidate
            taken = _case_twin(root, candidate) or candidate  # names differing only in case are one on some filesystems
            if (final.exists() and (not final.is_dir() or any(final.iterdir()))) or taken != candidate:
                continue
            try:
                os.rename(tmp, final)  # fails when another process landed a non-empty folder here first
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                    continue
                raise
            _fsync_dir(root)
            return {**entry, "library_path": str(final)}
        raise UserError(f"no free checkpoint name like '{base}' in {root}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def register_run(folder: str | Path, name: str | None = None) -> dict[str, Any]:
    """Register the backbone of a finished run folder; records ``library_name`` in the run's ``meta.json``."""
    folder = Path(folder)
    meta = read_meta(folder / META)
    data = (folder / WEIGHTS).read_bytes()
    if meta.get("weights_sha256") and sha256_bytes(data) != meta["weights_sha256"]:
        raise UserError(f"checkpoint {folder} is corrupt (hash mismatch)")
    entry = register(data, {**meta, "run_dir": str(folder.resolve())}, name, unique=True)
    update_meta(folder, lambda m: m.__setitem__("library_name", entry["name"]))
    return {**meta, "library_name": entry["name"], "library_path": entry["library_path"]}


def import_checkpoint(path: str | Path, name: str | None = None) -> dict[str, Any]:
    """Copy a run folder, backbone folder or exported weights file into the library (checked first)."""
    from safetensors.torch import save as st_save

    from ssl_toolkit.checkpoints import load_backbone_files, state_to_cpu

    if name is not None:
        check_name(name)  # an empty name is refused, not taken as "the default"
    check_library_writable()
    model, meta = load_backbone_files(path)
    meta = {**meta, "imported_from": str(Path(path).resolve())}
    return register(st_save(state_to_cpu(model)), meta, name if name is not None else default_name(meta), unique=name is None)


def remove_checkpoint(name: str) -> Path:
    """Delete an entry (renamed away first, so it disappears at once)."""
    folder = _existing_entry(name)
    trash = Path(tempfile.mkdtemp(prefix=f".trash-{name[:40]}-", dir=folder.parent))
    try:
        os.rename(folder, trash / name)
    except FileNotFoundError:  # removed by another process since the check above
        raise UserError(f"no checkpoint named '{name}' in the library (it was removed meanwhile)") from None
    finally:
        shutil.rmtree(trash, ignore_errors=True)
    return folder


# --------------------------------------------------------------------------- metadata updates


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Exclusive lock on ``folder`` (flock on the directory itself; a no-op where unsupported)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update_meta(
    folder: str | Path,
    change: Callable[[dict[str, Any]], Any],
    sha: str | None = None,
    when: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any] | None:
    """Apply ``change`` to ``folder/meta.json`` under a lock; skipped when missing, when its weights hash is not ``sha``, or when ``when`` says no."""
    folder = Path(folder)
    path = folder / META
    if not path.is_file():
        return None
    with _locked(folder):
        try:
            meta = read_meta(path)
        except UserError:  # unreadable or malformed: left as it is, listed as unreadable
            return None
        if sha is not None and meta.get("weights_sha256") != sha:
            return None
        if when is not None and not when(meta):
            return None
        change(meta)
        atomic_write_json(path, meta)
    return meta


def probe_key(dataset: str, mode: str, label_fraction: float) -> str:
    """The key of a probe result: ``<dataset>-<mode>-<fraction>``, e.g. ``digits-knn-1``.

    A folder dataset is named by its last component plus a short hash of its real absolute
    path (a URL: of the URL), so two folders with the same name never share a key and one
    folder, however its path is typed (``fold``, ``./fold``, ``$PWD/fold``, a symlink), has one.
    """
    import hashlib

    from ssl_toolkit.data.sources import source_names

    name = str(dataset)
    if "://" in name:
        name = f"{name.rstrip('/').rsplit('/', 1)[-1]}.{hashlib.sha1(name.encode()).hexdigest()[:6]}"
    elif name not in source_names() and (os.sep in name or "/" in name or Path(name).expanduser().exists()):
        real = os.path.realpath(Path(name).expanduser())
        name = f"{Path(real).name}.{hashlib.sha1(real.encode()).hexdigest()[:6]}"
    return f"{_slug(name)}-{mode}-{label_fraction:.12g}"  # 12 digits: fractions that differ are told apart


def run_of_entry(entry: str | Path, meta: dict[str, Any]) -> Path | None:
    """The run folder a library entry was saved from (``run_dir``), while that run still names the entry back
    and holds the same weights; else ``None``."""
    entry = Path(entry)
    run_dir = meta.get("run_dir")
    if not is_library_entry(entry) or not isinstance(run_dir, str) or not run_dir:
        return None
    run = Path(run_dir)
    try:
        theirs = read_meta(run / META)
    except UserError:  # gone, or no longer a run's metadata
        return None
    same = theirs.get("library_name") == entry.name and theirs.get("weights_sha256") == meta.get("weights_sha256")
    return run if same else None


def record_probe_summary(folder: str | Path, key: str, summary: dict[str, Any]) -> Path | None:
    """Add ``summary`` under ``probes[key]`` in ``folder``'s metadata and in its twin; returns the twin updated, if any.

    The twin of a run folder is its library entry (``library_name``), that of a library entry
    its run folder (``run_dir``), each only while it names the other back: an imported copy
    of a run's backbone keeps the run's ``run_dir`` but is not that run's entry.
    """
    folder = Path(folder)

    def add(m: dict[str, Any]) -> None:
        m.setdefault("probes", {})[key] = summary

    meta = update_meta(folder, add)
    if meta is None:
        return None
    here = folder.resolve()
    if is_library_entry(folder):
        twin = Path(meta["run_dir"]) if meta.get("run_dir") else None

        def names_back(m: dict[str, Any]) -> bool:
            return m.get("library_name") == folder.name
    else:
        lib = meta.get("library_name")
        twin = library_root() / lib if isinstance(lib, str) and NAME_RE.fullmatch(lib) else None

        def names_back(m: dict[str, Any]) -> bool:
            return bool(m.get("run_dir")) and Path(str(m["run_dir"])).expanduser().resolve() == here

    if twin is None or not twin.is_dir() or twin.resolve() == here:
        return None
    return twin if update_meta(twin, add, sha=meta.get("weights_sha256"), when=names_back) is not None else None


# --------------------------------------------------------------------------- reading


def best_probe(meta: dict[str, Any]) -> tuple[str, float] | None:
    """The probe result with the highest top-1 so far, as ``(mode-fraction, top1)``."""
    scores = [(k, float(v["top1"])) for k, v in (meta.get("probes") or {}).items() if isinstance(v, dict) and v.get("top1") is not None]
    return max(scores, key=lambda kv: kv[1]) if scores else None


HEADLINE_ORDER = ("top1", "roc_auc", "mAP")  # which results rank first when an entry holds several kinds


def best_headline(meta: dict[str, Any]) -> tuple[str, str, float] | None:
    """The best probe result by its own headline metric, as ``(mode-fraction, metric, score)``.

    Multiclass results rank by top-1, binary by ROC-AUC, multi-label by mAP; an entry probed on
    data of several kinds shows its multiclass results first, then binary, then multi-label.
    """
    found: dict[str, list[tuple[str, float]]] = {}
    for key, v in (meta.get("probes") or {}).items():
        if not isinstance(v, dict):
            continue
        metric = v.get("metric") or "top1"
        score = v.get("top1") if metric == "top1" else v.get("score")
        if metric in HEADLINE_ORDER and isinstance(score, (int, float)):
            found.setdefault(metric, []).append((key, float(score)))
    for metric in HEADLINE_ORDER:
        if metric in found:
            key, score = max(found[metric], key=lambda kv: kv[1])
            return key, metric, score
    return None


def _summary(folder: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"name": folder.name, "path": str(folder)}
    unknown = dict.fromkeys(
        ("task", "backbone", "dataset", "epochs", "steps", "best_probe", "best_top1")
        + ("headline_probe", "headline_metric", "headline_score", "size_bytes", "created")
    )
    if not NAME_RE.fullmatch(folder.name):  # put there by hand: no command can name it
        return {**row, **unknown, "error": "not a checkpoint name (letters, digits, '._+-'): rename or delete the folder"}
    try:
        meta = read_meta(folder / META)
    except UserError as e:
        why = (
            str(e).split(": ", 1)[-1]
            if "not valid backbone metadata" in str(e)
            else "not backbone metadata"
            if "not backbone" in str(e)
            else "missing"
            if not (folder / META).is_file()
            else "invalid JSON"
        )
        return {**row, **unknown, "error": f"unreadable {META}: {why}"}
    best, headline = best_probe(meta), best_headline(meta)
    weights = folder / WEIGHTS
    size = weights.stat().st_size if weights.is_file() else None
    expected = meta.get("weights_bytes")
    damaged = (
        "weights file missing"
        if size is None
        else f"weights file is {size:,} bytes, not {expected:,}"
        if isinstance(expected, int) and size != expected
        else None
    )  # the size only: `ssl checkpoints show` checks the hash
    return {
        **row,
        "damaged": damaged,
        "task": meta.get("task"),
        "backbone": (meta.get("backbone") or {}).get("timm_name"),
        "dataset": (meta.get("dataset") or {}).get("name"),
        "epochs": meta.get("epochs"),
        "steps": meta.get("steps"),
        "best_probe": best[0] if best else None,
        "best_top1": best[1] if best else None,
        "headline_probe": headline[0] if headline else None,  # the best result by its own kind's metric
        "headline_metric": headline[1] if headline else None,  # top1, roc_auc (binary) or mAP (multi-label)
        "headline_score": headline[2] if headline else None,
        "size_bytes": size,
        "created": meta.get("created"),
    }


def list_checkpoints(task: str | None = None, backbone: str | None = None) -> list[dict[str, Any]]:
    """The library's entries, oldest first: name, task, backbone, dataset, epochs, steps, best probe, size, created, path."""
    root = library_root()
    if not root.is_dir():
        blocker = next((p for p in (root, *root.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:  # a file where a folder should be: not an empty library
            raise UserError(f"checkpoint library {root}: {blocker} is not a folder (SSL_TOOLKIT_HOME)")
        return []
    rows = [_summary(p) for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    _refuse_unknown_filters(rows, task, backbone)
    if task:
        rows = [r for r in rows if r["task"] == task]
    if backbone:
        rows = [r for r in rows if r["backbone"] == backbone]
    return sorted(rows, key=lambda r: (r["created"] or "", r["name"]))


def _refuse_unknown_filters(rows: list[dict[str, Any]], task: str | None, backbone: str | None) -> None:
    """A filter that names no pretext task (or timm model) and no entry of the library: a typo, not an empty list."""
    if task and not any(r["task"] == task for r in rows):
        from ssl_toolkit.pretext import TASKS

        names = TASKS.names()
        if task not in names:
            choices = sorted(set(names) | {str(r["task"]) for r in rows if r.get("task")})
            raise UserError(f"unknown task '{task}'{did_you_mean(task, choices)}; tasks: {', '.join(names)}")
    if backbone and not any(r["backbone"] == backbone for r in rows):
        import timm

        if not timm.is_model(backbone):
            held = sorted({str(r["backbone"]) for r in rows if r.get("backbone")})
            raise UserError(f"'{backbone}' is not a timm model name{did_you_mean(backbone, held + timm.list_models())}")


def _existing_entry(name: str) -> Path:
    folder = entry_dir(name)
    if not folder.is_dir():
        names = [p.name for p in library_root().glob("*") if p.is_dir() and NAME_RE.fullmatch(p.name)]
        raise UserError(f"no checkpoint named '{name}' in the library{did_you_mean(name, names)}; see `ssl checkpoints list`")
    return folder


def entry_meta(name: str) -> dict[str, Any]:
    """The full metadata of library entry ``name``."""
    return read_meta(_existing_entry(name) / META)


def verify_entry(name: str) -> bool:
    """Whether entry ``name``'s weights file still has the SHA-256 recorded in its metadata."""
    folder = _existing_entry(name)
    meta = read_meta(folder / META)
    weights = folder / WEIGHTS
    return weights.is_file() and sha256_bytes(weights.read_bytes()) == meta.get("weights_sha256")


def load_backbone_any(target: str | Path) -> tuple[nn.Module, dict[str, Any], Path | None]:
    """Load ``target``; returns (model in eval mode, metadata, folder that holds its metadata or ``None``).

    ``target`` is an existing path (run folder, backbone folder, weights file) or else the
    name of a library entry.
    """
    from ssl_toolkit.checkpoints import given_path, load_backbone_files

    p = given_path(target)
    name = str(target)
    if p.exists():
        try:
            model, meta = load_backbone_files(p)
        except UserError as e:
            lib = library_root() / name
            if NAME_RE.fullmatch(name) and lib.is_dir():  # a path is read before a library name
                raise UserError(
                    f"{e} (a library checkpoint is also named {name}; a path comes first: give {lib} to use the checkpoint)"
                ) from None
            raise
        return model, meta, p if p.is_dir() else None
    if NAME_RE.fullmatch(name) and (library_root() / name).is_dir():
        lib = library_root() / name
        stored = read_meta(lib / META) if (lib / META).is_file() else None
        lacks = (
            f"no {META}"
            if stored is None
            else f"no {WEIGHTS}"
            if not (lib / WEIGHTS).is_file()
            else f"its {META} records no weights_sha256"
            if not stored.get("weights_sha256")
            else None
        )
        if lacks:
            raise UserError(f"checkpoint {name} is corrupt ({lacks}: {lib})")
        model, meta = load_backbone_files(lib, name=name)
        return model, meta, lib
    names = [r["name"] for r in list_checkpoints() if NAME_RE.fullmatch(r["name"])]
    raise UserError(f"no run folder, backbone file or library checkpoint named {str(target)!r}{did_you_mean(name, names)}")


def init_backbone_from(
    backbone: nn.Module, spec: Any, target: str | Path, loaded: tuple[nn.Module, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Copy the weights of ``target`` into ``backbone`` (built from ``spec``); architectures must match.

    Args:
        loaded: ``target``'s model and metadata when the caller has loaded them already.

    Returns:
        What to record about the source: target, library name, task, epochs and weights hash.
    """
    from ssl_toolkit.backbones import BackboneSpec
    from ssl_toolkit.checkpoints import check_same_arch

    model, meta = loaded if loaded is not None else load_backbone_any(target)[:2]
    check_same_arch(spec, BackboneSpec.from_dict(meta["backbone"]), f"--init-from {target}")
    backbone.load_state_dict(model.state_dict())
    path = Path(target).expanduser()
    return {
        "target": str(path.resolve()) if path.exists() else str(target),  # a file or folder wherever the run is read; a name as given
        "name": meta.get("name") or meta.get("library_name"),
        "task": meta.get("task"),
        "epochs": meta.get("epochs"),
        "weights_sha256": meta.get("weights_sha256"),
    }
