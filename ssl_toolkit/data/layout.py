"""Image-folder layouts: which files, which classes, which split, before any decoding.

Layouts understood:

* ``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val/``): labelled, given splits;
* ``root/train/*`` and ``root/test/*`` with images directly inside: unlabelled, given splits;
* ``root/<class>/*``: labelled, seeded stratified train/test split;
* ``root/*`` (images directly inside): unlabelled, seeded random split.

Listing uses ``os.scandir`` (one ``stat`` per entry, no image is opened). Entries with an
image suffix that are not regular files (fifos, sockets, directories named ``*.png``,
dangling symlinks, symlink loops) are listed as unusable with the reason, like files that
fail to decode later.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ssl_toolkit.data.images import IMAGE_EXTENSIONS, has_image_suffix
from ssl_toolkit.errors import UserError
from ssl_toolkit.sampling import stratified_split

TEST_DIRS = ("test", "val")


@dataclass
class Listing:
    """The image files directly inside one folder, and the entries that look like images but are not files."""

    files: list[Path] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    subdirs: list[Path] = field(default_factory=list)


def _entry_kind(entry: os.DirEntry) -> tuple[str, os.stat_result | None]:
    """``("file"|"dir"|reason, stat)`` of a directory entry, following symlinks."""
    try:
        st = entry.stat(follow_symlinks=True)
    except FileNotFoundError:
        return "dangling symlink", None
    except OSError as e:  # ELOOP and friends
        return (e.strerror or type(e).__name__).lower(), None
    if stat.S_ISREG(st.st_mode):
        return "file", st
    if stat.S_ISDIR(st.st_mode):
        return "dir", st
    if stat.S_ISFIFO(st.st_mode):
        return "a fifo, not a regular file", st
    if stat.S_ISSOCK(st.st_mode):
        return "a socket, not a regular file", st
    return "not a regular file", st


def list_folder(folder: Path) -> Listing:
    """One folder's image files (sorted by name), unusable image-named entries and sub-folders."""
    out = Listing()
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise UserError(f"cannot list {folder}: {e.strerror or e}") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        kind, st = _entry_kind(entry)
        if kind == "dir":
            if has_image_suffix(entry.name):
                out.bad.append((entry.path, "a directory, not an image file"))
            out.subdirs.append(Path(entry.path))
        elif not has_image_suffix(entry.name):
            continue
        elif kind == "file" and st is not None:
            out.files.append(Path(entry.path))
            out.sizes.append(int(st.st_size))
            out.mtimes.append(int(st.st_mtime_ns))
        else:
            out.bad.append((entry.path, kind))
    return out


@dataclass
class FolderLayout:
    """The files of an image folder before any decoding.

    Attributes:
        paths: Every image file, train files first.
        labels: Class index per file, or ``None`` for unlabelled folders.
        classes: Class names, or ``None``.
        n_train: When the folder has its own train/test split: how many of ``paths`` are train;
            ``None`` when the toolkit splits it (seeded, after dropping unreadable files).
        sizes: Bytes per file.
        mtimes: Modification time (ns) per file.
        bad: ``(path, reason)`` of image-named entries that are not regular files.
    """

    paths: list[Path]
    labels: list[int] | None
    classes: list[str] | None
    n_train: int | None
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)


def scan_split(folder: Path) -> FolderLayout:
    """Files of one split folder: labelled by class sub-folders that hold images, else unlabelled."""
    top = list_folder(folder)
    subs = [(d, list_folder(d)) for d in top.subdirs if not has_image_suffix(d.name)]
    subs = [(d, lst) for d, lst in subs if lst.files or lst.bad]
    if any(lst.files for _, lst in subs):
        subs = [(d, lst) for d, lst in subs if lst.files]
        out = FolderLayout([], [], [d.name for d, _ in subs], None, bad=list(top.bad))
        for i, (_, lst) in enumerate(subs):
            out.paths += lst.files
            out.sizes += lst.sizes
            out.mtimes += lst.mtimes
            out.labels += [i] * len(lst.files)  # type: ignore[operator]
            out.bad += lst.bad
        return out
    bad = top.bad + [b for _, lst in subs for b in lst.bad]
    return FolderLayout(top.files, None, None, None, top.sizes, top.mtimes, bad)


def folder_layout(root: Path) -> FolderLayout:
    """Find the splits, classes and image files of ``root`` (layouts in the module docstring)."""
    if not root.is_dir():
        raise UserError(f"data path is not a folder: {root}")
    split_dirs = {d.name.lower(): d for d in list_folder(root).subdirs}
    test_dir = next((split_dirs[n] for n in TEST_DIRS if n in split_dirs), None)
    if "train" in split_dirs and test_dir is not None:
        tr, te = scan_split(split_dirs["train"]), scan_split(test_dir)
        if (tr.labels is None) != (te.labels is None):
            raise UserError(f"{root}: train/ and {test_dir.name}/ must both have class folders or both have none")
        classes = sorted(set(tr.classes or []) | set(te.classes or [])) if tr.classes else None
        labels = None
        if classes:  # map both splits onto the union of class names
            labels = [classes.index((tr.classes or [])[i]) for i in tr.labels or []]
            labels += [classes.index((te.classes or [])[i]) for i in te.labels or []]
        layout = FolderLayout(
            tr.paths + te.paths, labels, classes, len(tr.paths), tr.sizes + te.sizes, tr.mtimes + te.mtimes, tr.bad + te.bad
        )
    else:
        layout = scan_split(root)
    if not layout.paths:
        raise UserError(f"no images in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return layout


def assign_split(n_train: int | None, kept: np.ndarray, labels: np.ndarray | None, test_fraction: float, seed: int) -> np.ndarray:
    """Split of the readable files: ``(len(kept),)`` int8, 0 = train, 1 = test.

    ``kept`` are the readable files' indices into :attr:`FolderLayout.paths`. A folder with its
    own split keeps it; otherwise labelled files get a seeded stratified split and unlabelled
    ones a seeded random split, drawn over the readable files only.
    """
    n = len(kept)
    split = np.zeros(n, np.int8)
    if n_train is not None:
        split[np.asarray(kept) >= n_train] = 1
    elif labels is not None:
        _, te = stratified_split(labels, test_fraction, seed)
        split[te] = 1
    else:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        split[perm[: int(round(n * test_fraction))].numpy()] = 1
    return split
